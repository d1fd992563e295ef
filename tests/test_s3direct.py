"""S3 requests sent without s3fs (flowbook/datastore/s3direct.py): signatures as
botocore makes them, faults on a real connection to moto (through a proxy on
127.0.0.1 that breaks it on purpose), the settings that leave S3 to s3fs, and a run
on S3 that never imports s3fs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
from conftest import MOTO_BUCKET

from flowbook.datastore import s3direct, storage

# ---------------------------------------------------------------------- signing


@pytest.mark.parametrize(
    "method, key, headers, token",
    [
        ("PUT", "flows/F/1/start/1/0.start.json", {"if-none-match": "*"}, None),
        ("GET", "blobs/ab/ab cd+é=~_.-!*'()&$,;:@?#[]", {"range": "bytes=0-99"}, "session/tok="),
        ("HEAD", "a//b/./c/../d", {}, None),
        ("DELETE", "tmp/probe-00", {"x-amz-meta-note": "  spaced  "}, "t"),
        ("PUT", "blobs/ff/big", {"x-amz-checksum-crc32": "ntZhLw=="}, None),
    ],
)
def test_signatures_are_the_ones_botocore_makes(method, key, headers, token):
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    body = b"payload bytes" if method == "PUT" else b""
    payload = s3direct._sha256_hex(body)
    path = "/bucket-1/" + s3direct.uri_encode(key)
    # a part of a multipart upload: a query string (whose order is not the canonical one)
    query = {"uploadId": "a/b+c==", "partNumber": "7"} if key == "blobs/ff/big" else {}
    ours = s3direct.sign(
        method, "127.0.0.1:9000", path, headers, payload, "AKID", "SECRET/+", "eu-west-3",
        "20261201T061200Z", token, s3direct.canonical_query(query),
    )  # fmt: skip
    url = f"http://127.0.0.1:9000{path}"
    if query:
        url += "?" + "&".join(f"{n}={s3direct.uri_encode(v, False)}" for n, v in query.items())
    theirs = AWSRequest(method=method, url=url, data=body)
    for name, value in ours.items():
        if name != "authorization":
            theirs.headers[name] = value
    theirs.context["timestamp"] = "20261201T061200Z"
    signer = S3SigV4Auth(Credentials("AKID", "SECRET/+", token), "s3", "eu-west-3")
    canonical = signer.canonical_request(theirs)
    signature = signer.signature(signer.string_to_sign(theirs, canonical), theirs)
    assert ours["authorization"].endswith(f"Signature={signature}")
    assert (
        f"SignedHeaders={signer.signed_headers(signer.headers_to_sign(theirs))}"
        in (ours["authorization"])
    )


def test_keys_are_encoded_as_sigv4_says():
    assert s3direct.uri_encode("a b/c+d=é~") == "a%20b/c%2Bd%3D%C3%A9~"
    assert s3direct.uri_encode("a/b", keep_slash=False) == "a%2Fb"


# ---------------------------------------------------------------------- settings


@pytest.fixture
def aws_env(moto_s3, monkeypatch, tmp_path):
    """moto's settings and nothing else of the machine's AWS settings."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "FSSPEC_", "FLOWBOOK_S3")) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("FSSPEC_CONFIG_DIR", str(tmp_path / "no-fsspec"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for key, value in moto_s3.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(s3direct, "RETRY_BASE_SECONDS", 0.01)
    return moto_s3


def test_environment_settings_are_read(aws_env, monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_REGION", "us-west-2")  # botocore does not read it
    direct = s3direct.DirectS3.from_environment()
    assert direct is not None
    assert direct.credentials.current() == ("testing", "testing", "tok")
    assert direct.region == "eu-central-1"
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "older")  # botocore's first choice
    assert s3direct.DirectS3.from_environment().credentials.current()[2] == "older"
    assert direct.endpoint == aws_env["AWS_ENDPOINT_URL"]
    assert direct._url_base("b") == ("http", aws_env["AWS_ENDPOINT_URL"][7:], "/b/")
    monkeypatch.setenv("FLOWBOOK_S3_ENDPOINT_URL", "https://minio.example:443")
    assert s3direct.DirectS3.from_environment()._url_base("b")[1] == "minio.example"
    monkeypatch.setenv("FLOWBOOK_S3_ENDPOINT_URL", "https://minio.example:9000/base")
    assert s3direct.DirectS3.from_environment()._url_base("b") == (
        "https",
        "minio.example:9000",
        "/base/b/",
    )


def test_aws_buckets_are_addressed_by_host_unless_their_name_forbids_it(aws_env, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    direct = s3direct.DirectS3.from_environment()
    assert direct._url_base("my-bucket") == ("https", "my-bucket.s3.us-east-1.amazonaws.com", "/")
    host = "s3.us-east-1.amazonaws.com"
    for name in ("my.bucket", "my_bucket", "-bucket", "ab", "b" * 64, "Bucket"):
        assert direct._url_base(name) == ("https", host, f"/{name}/"), name
    monkeypatch.setenv("AWS_DEFAULT_REGION", "cn-north-1")
    china = s3direct.DirectS3.from_environment()
    assert china._url_base("b-1")[1] == "b-1.s3.cn-north-1.amazonaws.com.cn"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-iso-east-1")  # another partition
    assert s3direct.DirectS3.from_environment() is None
    for bucket in ("fast--usw2-az1--x-s3", "arn:aws:s3:us-east-1:1:accesspoint/ap"):
        assert not s3direct.DirectS3.serves(bucket)


@pytest.mark.parametrize(
    "name, value",
    [
        ("FLOWBOOK_S3_DIRECT", "0"),
        ("HTTPS_PROXY", "http://proxy:3128"),
        ("AWS_USE_FIPS_ENDPOINT", "true"),
        ("FSSPEC_S3_ANON", "true"),
        ("AWS_ENDPOINT_URL", "localhost:9000"),  # not a URL botocore would take either
        ("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"),
    ],
)
def test_settings_it_does_not_read_leave_every_request_to_s3fs(aws_env, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert s3direct.DirectS3.from_environment() is None
    if name.startswith("FSSPEC_"):
        return  # (fsspec would keep the setting for the rest of this process)
    store = storage.open_storage(f"s3://{MOTO_BUCKET}/settings")
    assert store.direct is None
    if name != "AWS_ENDPOINT_URL":
        store.write_bytes("x", b"through s3fs")  # and it still works
        assert store.read_bytes("x") == b"through s3fs"


def test_a_profile_with_s3_settings_or_no_credentials_leaves_s3_to_s3fs(aws_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert s3direct.DirectS3.from_environment() is None  # anonymous: s3fs decides
    config = os.environ["AWS_CONFIG_FILE"]
    with open(config, "w") as handle:
        handle.write("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
        handle.write("s3 =\n    addressing_style = virtual\n")
    assert s3direct.DirectS3.from_environment() is None
    # keys in the environment, but the chosen profile sends S3 elsewhere
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with open(config, "w") as handle:
        handle.write("[profile other]\nendpoint_url = http://elsewhere:9000\n")
    assert s3direct.DirectS3.from_environment() is not None  # (the default profile)
    monkeypatch.setenv("AWS_PROFILE", "other")
    assert s3direct.DirectS3.from_environment() is None
    with open(config, "w") as handle:
        handle.write("[profile other]\nregion = sa-east-1\n[profile first]\nregion = eu-north-1\n")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert s3direct.DirectS3.from_environment().region == "sa-east-1"
    monkeypatch.setenv("AWS_DEFAULT_PROFILE", "first")  # botocore reads it before AWS_PROFILE
    assert s3direct.DirectS3.from_environment().region == "eu-north-1"
    monkeypatch.setenv("AWS_DEFAULT_PROFILE", "missing")  # botocore: ProfileNotFound
    assert s3direct.DirectS3.from_environment() is None


def test_credentials_from_botocore_s_chain(aws_env, monkeypatch, tmp_path):
    """No key in the environment: the shared credentials file, read by botocore."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with open(os.environ["AWS_SHARED_CREDENTIALS_FILE"], "w") as handle:
        handle.write("[default]\naws_access_key_id = fromfile\naws_secret_access_key = s\n")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    direct = s3direct.DirectS3.from_environment()
    assert direct is not None and direct.credentials.current()[0] == "fromfile"
    assert direct.region == "ap-south-1"
    store = storage.open_storage(f"s3://{MOTO_BUCKET}/chain-{uuid.uuid4().hex[:8]}")
    store.write_bytes("r.json", b"{}")  # moto takes any key; the request is well formed
    assert store.read_bytes("r.json") == b"{}"


# ---------------------------------------------------------------------- faults


class FaultyProxy:
    """A TCP proxy on 127.0.0.1 in front of moto. Each new connection takes the next
    fault from ``faults``: ``"503"`` answers its first request with S3's SlowDown
    and closes (``("reply", status, code)`` with that status and error code);
    ``("cut", n)`` passes the first ``n`` bytes of the reply and breaks the
    connection; ``("slow", n)`` passes the request at ``n`` bytes a second; no
    fault left: passes everything. With ``tls`` (an SSL context
    holding a certificate), it speaks HTTPS to its clients."""

    def __init__(self, upstream: str, faults: list, tls: Any = None) -> None:
        host, port = upstream.split("//", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.faults = list(faults)
        self.connections = 0
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            fault = self.faults.pop(0) if self.faults else None
            threading.Thread(target=self._serve, args=(client, fault), daemon=True).start()

    def _serve(self, client: socket.socket, fault: Any) -> None:
        if self.tls is not None:
            try:
                client = self.tls.wrap_socket(client, server_side=True)
            except OSError:  # a client that does not trust the certificate
                client.close()
                return
        if fault == "503":
            fault = ("reply", 503, "SlowDown")
        if fault and fault[0] == "reply":
            head = b""
            while b"\r\n\r\n" not in head:
                head += client.recv(65536)
            body = f"<Error><Code>{fault[2]}</Code><Message>as asked</Message></Error>".encode()
            client.sendall(
                f"HTTP/1.1 {fault[1]} Fault\r\nConnection: close\r\n".encode()
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            client.close()
            return
        upstream = socket.create_connection(self.upstream)
        rate = fault[1] if fault and fault[0] == "slow" else None
        limit = fault[1] if fault and fault[0] == "cut" else None
        threading.Thread(
            target=self._pump, args=(client, upstream, None, rate), daemon=True
        ).start()
        self._pump(upstream, client, limit)

    @staticmethod
    def _pump(
        source: socket.socket, sink: socket.socket, limit: int | None, rate: int | None = None
    ) -> None:
        passed = 0
        try:
            while True:
                data = source.recv(16384 if rate else 65536)
                if rate:
                    time.sleep(len(data) / rate)
                if not data:
                    break
                if limit is not None and passed + len(data) >= limit:
                    sink.sendall(data[: limit - passed])
                    break
                sink.sendall(data)
                passed += len(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def through_proxy(aws_env, monkeypatch):
    """A function: a storage reaching moto through a FaultyProxy with these faults."""
    proxies: list[FaultyProxy] = []
    prefix = f"faults-{uuid.uuid4().hex[:8]}"

    def make(faults: list) -> tuple[Any, FaultyProxy]:
        proxy = FaultyProxy(aws_env["AWS_ENDPOINT_URL"], faults)
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        store = storage.open_storage(f"s3://{MOTO_BUCKET}/{prefix}")
        assert store.direct is not None and store.direct.endpoint == proxy.url
        return store, proxy

    yield make
    for proxy in proxies:
        proxy.close()


def test_a_body_that_breaks_off_is_asked_for_again(through_proxy, monkeypatch):
    data = os.urandom(2 * 2**20 + 11)
    store, _ = through_proxy([])
    store.write_bytes("blobs/aa/big", data)
    sent: list[str] = []
    monkeypatch.setattr(s3direct.DirectS3, "observers", [sent.append])
    store, proxy = through_proxy([("cut", 300_000)])
    assert store.read_buffer("blobs/aa/big") == data
    assert sent == ["GetObject", "GetObject"] and proxy.connections == 2
    store, proxy = through_proxy([("cut", 1000)])
    assert store.read_bytes("blobs/aa/big") == data


def test_slow_down_is_waited_out_and_a_dead_server_named(through_proxy, monkeypatch):
    store, proxy = through_proxy(["503", "503"])
    store.write_bytes("r.json", b"{}")  # third time lucky
    assert proxy.connections == 3
    store, proxy = through_proxy(["503"] * s3direct.ATTEMPTS)
    with pytest.raises(storage.DatastoreWriteError, match=r"r2\.json.*SlowDown.*HTTP 503"):
        store.write_bytes("r2.json", b"{}")
    monkeypatch.setattr(s3direct, "ATTEMPTS", 2)
    store, proxy = through_proxy([])
    proxy.close()  # nothing listens any more
    with pytest.raises(OSError, match=f"s3://{MOTO_BUCKET}/faults-.*/r3.json"):
        store.read_bytes("r3.json")


def test_a_failed_multipart_upload_is_aborted_and_leaves_nothing(through_proxy, monkeypatch):
    import boto3

    monkeypatch.setattr(storage, "MULTIPART_FROM", 6 * 2**20)
    monkeypatch.setattr(storage, "UPLOAD_PART_SIZE", 5 * 2**20)
    monkeypatch.setattr(storage, "UPLOAD_PARTS", 1)
    monkeypatch.setattr(s3direct, "ATTEMPTS", 1)
    # the first connection starts and aborts the upload; the parts' thread's breaks
    store, proxy = through_proxy([None, ("cut", 1)])
    with pytest.raises(storage.DatastoreWriteError, match="blobs/ff/broken"):
        store.write_chunks("blobs/ff/broken", [os.urandom(12 * 2**20)])
    monkeypatch.setattr(s3direct, "ATTEMPTS", 5)
    assert not store.exists("blobs/ff/broken")  # never half an object
    bucket, key = store._s3_key("blobs/ff/broken")
    uploads = boto3.client("s3").list_multipart_uploads(Bucket=bucket, Prefix=key)
    assert not uploads.get("Uploads")  # aborted, not left behind
    store.write_chunks("blobs/ff/whole", [b"a" * (7 * 2**20), memoryview(b"b" * (2**20))])
    assert store.read_buffer("blobs/ff/whole") == b"a" * (7 * 2**20) + b"b" * 2**20


def self_signed_certificate(directory: Any) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = str(directory / "cert.pem"), str(directory / "key.pem")
    with open(cert_path, "wb") as handle:
        handle.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def test_https_endpoints_are_verified_against_aws_ca_bundle(aws_env, monkeypatch, tmp_path):
    import ssl

    cert, key = self_signed_certificate(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    proxy = FaultyProxy(aws_env["AWS_ENDPOINT_URL"], [], tls=server_context)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setattr(s3direct, "ATTEMPTS", 1)
        prefix = f"s3://{MOTO_BUCKET}/tls-{uuid.uuid4().hex[:8]}"
        untrusted = storage.open_storage(prefix)  # certifi's bundle: not this certificate
        assert untrusted.direct is not None
        with pytest.raises(OSError, match=r"tls-.*/r\.json: .*CERTIFICATE_VERIFY_FAILED"):
            untrusted.read_bytes("r.json")
        monkeypatch.setenv("AWS_CA_BUNDLE", cert)
        trusted = storage.open_storage(prefix)
        trusted.write_bytes("r.json", b"{}")
        assert trusted.read_bytes("r.json") == b"{}"
        assert trusted.direct._url_base(MOTO_BUCKET)[0] == "https"
    finally:
        proxy.close()


def test_a_slow_link_sends_a_body_longer_than_its_timeout(through_proxy, monkeypatch):
    """The timeout is per piece sent (as urllib3's), not for the whole body: 40 MB
    at 8 MB/s take 5 s, with 3 s to connect and 3 s for each piece or the reply
    (what the kernel's buffers still hold at the end drains well within that)."""
    monkeypatch.setattr(s3direct, "CONNECT_TIMEOUT", 3.0)
    monkeypatch.setattr(s3direct, "READ_TIMEOUT", 3.0)
    monkeypatch.setattr(s3direct, "ATTEMPTS", 1)
    monkeypatch.setattr(storage, "MULTIPART_FROM", 64 * 2**20)  # one PUT
    store, _ = through_proxy([("slow", 8_000_000)])
    data = os.urandom(40_000_000)
    started = time.monotonic()
    store.write_bytes("slow.bin", data)
    assert time.monotonic() - started > 4  # it was slow, and it went through
    assert store.read_bytes("slow.bin") == data


def test_s3_s_errors_become_the_right_exceptions(through_proxy):
    store, _ = through_proxy([("reply", 403, "SignatureDoesNotMatch")])
    with pytest.raises(OSError, match="SignatureDoesNotMatch") as raised:
        store.read_bytes("a")
    assert not isinstance(raised.value, PermissionError)  # not "read-only"
    store, _ = through_proxy([("reply", 403, "AccessDenied")])
    with pytest.raises(PermissionError, match="AccessDenied"):
        store.read_bytes("a")
    store, proxy = through_proxy([("reply", 400, "RequestTimeout")])
    store.write_bytes("b", b"x")  # tried again, as botocore does
    assert proxy.connections == 2


def test_a_huge_upload_uses_larger_parts_than_asked_for(through_proxy, monkeypatch):
    """S3 takes 10,000 parts at most: the part size grows to fit the object."""
    monkeypatch.setattr(s3direct, "MAX_PARTS", 2)
    store, _ = through_proxy([])
    sent: list[str] = []
    monkeypatch.setattr(s3direct.DirectS3, "observers", [sent.append])
    data = os.urandom(11 * 2**20)
    bucket, key = store._s3_key("blobs/ee/huge")
    store.direct.upload(bucket, key, [memoryview(data)], 5 * 2**20, 4)
    assert sent.count("UploadPart") == 2
    assert store.read_bytes("blobs/ee/huge") == data


def test_a_long_listing_comes_in_pages(aws_env, monkeypatch):
    store = storage.open_storage(f"s3://{MOTO_BUCKET}/pages-{uuid.uuid4().hex[:8]}")
    for index in range(5):
        store.write_bytes(f"d/{index}.json", b"{}")
        store.write_bytes(f"d/dir{index}/x", b"{}")
    sent: list[str] = []
    monkeypatch.setattr(s3direct.DirectS3, "observers", [sent.append])
    bucket, key = store._s3_key("d")
    listed = store.direct.list(bucket, key + "/", page_size=3)
    assert sorted(listed) == sorted([f"{i}.json" for i in range(5)] + [f"dir{i}" for i in range(5)])
    assert sent == ["ListObjectsV2"] * 4  # 10 names, 3 a page
    assert storage.open_storage("s3://no-such-bucket-listed/x").list("y") == []


def test_a_completion_that_failed_after_its_200_is_not_taken_for_success():
    failed = b"<?xml version='1.0'?>" + b" " * 2000 + b"<Error><Code>InternalError</Code></Error>"
    assert s3direct._completion_failed(failed)
    done = b"<?xml version='1.0'?>\n   <CompleteMultipartUploadResult><ETag>x</ETag>"
    assert not s3direct._completion_failed(done + b"</CompleteMultipartUploadResult>")


def test_errors_name_the_object_and_keep_s3_s_words(aws_env):
    store = storage.open_storage(f"s3://{MOTO_BUCKET}/errors-{uuid.uuid4().hex[:8]}")
    with pytest.raises(FileNotFoundError, match="NoSuchKey"):
        store.read_bytes("missing.json")
    assert store.exists("missing.json") is False
    gone = storage.open_storage("s3://no-such-bucket-at-all/x")
    with pytest.raises(FileNotFoundError, match="no-such-bucket-at-all.*NoSuchBucket"):
        gone.read_bytes("a")
    with pytest.raises(storage.DatastoreError, match="no-such-bucket-at-all"):
        gone.check_writable()


def test_a_forked_process_opens_its_own_connection(aws_env):
    store = storage.open_storage(f"s3://{MOTO_BUCKET}/fork-{uuid.uuid4().hex[:8]}")
    store.write_bytes("parent-1", b"1")  # the parent's connection is open now
    parent_connections = dict(store.direct._connections)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            store.write_bytes("child", b"2")
            mine = [k for k in store.direct._connections if k[0] == os.getpid()]
            os.write(write, str(len(mine)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 100) == b"1" and status == 0
    os.close(read)
    store.write_bytes("parent-2", b"3")  # its connection was not disturbed
    assert store.direct._connections == parent_connections
    assert [store.read_bytes(name) for name in ("parent-1", "child", "parent-2")] == [
        b"1",
        b"2",
        b"3",
    ]


# ---------------------------------------------------------------------- a run


def test_a_run_on_s3_never_imports_s3fs(aws_env, tmp_path):
    """Scheduler, task server and tasks reach S3 without s3fs, aiobotocore or
    botocore (about half a second of imports per process that would)."""
    flow = tmp_path / "imports.py"
    flow.write_text(
        "import sys\n"
        "from flowbook import FlowSpec, step\n\n"
        "HEAVY = ('s3fs', 'aiobotocore', 'botocore', 'fsspec')\n\n"
        "class ImportsFlow(FlowSpec):\n"
        "    @step\n"
        "    def start(self):\n"
        "        self.items = [1, 2]\n"
        "        self.next(self.each, foreach='items')\n\n"
        "    @step\n"
        "    def each(self):\n"
        "        self.seen = [m for m in HEAVY if m in sys.modules]\n"
        "        self.next(self.join)\n\n"
        "    @step\n"
        "    def join(self, inputs):\n"
        "        self.seen = sorted({m for i in inputs for m in i.seen})\n"
        "        self.next(self.end)\n\n"
        "    @step\n"
        "    def end(self):\n"
        "        print('heavy imports:', self.seen)\n\n"
        "if __name__ == '__main__':\n"
        "    ImportsFlow()\n"
    )
    env = dict(os.environ, FLOWBOOK_DATASTORE=f"s3://{MOTO_BUCKET}/imports-{uuid.uuid4().hex[:8]}")
    run = subprocess.run(
        [sys.executable, str(flow), "run"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "heavy imports: []" in run.stdout
    env["FLOWBOOK_S3_DIRECT"] = "0"
    run = subprocess.run(
        [sys.executable, str(flow), "run"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "heavy imports: ['aiobotocore', 'botocore', 'fsspec', 's3fs']" in run.stdout
