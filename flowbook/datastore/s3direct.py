"""S3's requests sent directly: GET, PUT, HEAD, DELETE, multipart uploads and
listings over kept-alive ``http.client`` connections, signed here with AWS
Signature Version 4.

A task on an S3 datastore sends two or three small requests (its start and done
records, perhaps a small blob). Through s3fs each task process paid for an event
loop, an aiobotocore client and a first request through botocore's machinery:
about 25 ms of CPU per task, five times what a trivial task costs on a local
datastore, and a run's processes imported s3fs and aiobotocore (about 0.5 s).
Here a request is a few HMACs and one round trip; the payload is signed
(``x-amz-content-sha256``), so S3 itself checks that the bytes arrived whole.

Large objects go the same way: ranged GETs and multipart uploads, several parts
at once in threads, each part sent from the value's own memory.

:meth:`DirectS3.from_environment` gives one only where its settings are exactly
what botocore would use: credentials from the environment or botocore's own chain,
the region, an endpoint URL from the environment. Anything it does not read
(proxies, FIPS or dual-stack endpoints, a profile with an endpoint or S3 settings,
fsspec configuration for s3) leaves every request to s3fs, as does
``FLOWBOOK_S3_DIRECT=0`` (``s3storage.DirectS3Storage`` uses it; ``storage.FsspecStorage``
is the datastore otherwise).
"""

from __future__ import annotations

import errno
import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: Set to 0 to send every S3 request through s3fs.
DIRECT_ENV = "FLOWBOOK_S3_DIRECT"
#: Attempts per request: connection errors, 429, 500, 502, 503 (SlowDown), 504, and
#: S3's 400 RequestTimeout and BadDigest are tried again after a pause of up to
#: RETRY_BASE_SECONDS, 2x, 4x, 8x (random within that), as botocore's legacy mode.
ATTEMPTS = 5
RETRY_STATUS = (429, 500, 502, 503, 504)
RETRY_CODES = ("RequestTimeout", "BadDigest", "ConditionalRequestConflict")
RETRY_BASE_SECONDS = 1.0
#: Seconds to connect; then to send each SEND_CHUNK of a body, or to get a reply.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
SEND_CHUNK = 128 << 10
MAX_PARTS = 10_000
#: Unreserved characters of SigV4's URI encoding (besides letters and digits).
_SAFE = "-_.~"
#: Environment variables whose presence means settings this module does not read.
_UNSUPPORTED_ENV = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT",
    "AWS_S3_DISABLE_MULTIREGION_ACCESS_POINTS",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
)
#: Settings of an AWS config profile that this module does not read.
_UNSUPPORTED_PROFILE_KEYS = (
    "endpoint_url",
    "s3",
    "services",
    "ca_bundle",
    "use_fips_endpoint",
    "use_dualstack_endpoint",
    "ignore_configured_endpoint_urls",
    "request_checksum_calculation",
)
#: Partitions whose S3 lives under another domain or needs more than SigV4 (ISO
#: regions): their buckets are left to s3fs; China's domain is known here.
_OTHER_PARTITIONS = ("us-iso", "eu-iso")
_FALSE = ("0", "false", "no", "off")


class PreconditionFailed(OSError):
    """A conditional request's condition did not hold (412, or 409 for two
    conditional writes of one key racing)."""


def uri_encode(text: str, keep_slash: bool = True) -> str:
    """SigV4's URI encoding: every byte but letters, digits and ``-_.~`` (and ``/``)
    as ``%XX``, upper case."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char.isascii() and (char.isalnum() or char in _SAFE or (keep_slash and char == "/")):
            out.append(char)
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def canonical_query(parameters: dict[str, str]) -> str:
    """A query string as SigV4 signs it (and as it is sent): names sorted, both
    sides URI-encoded, ``uploads`` as ``uploads=``."""
    return "&".join(
        f"{uri_encode(name, False)}={uri_encode(value, False)}"
        for name, value in sorted(parameters.items())
    )


def _sha256_hex(data: bytes | bytearray | memoryview) -> str:
    from .hashing import sha256

    hasher = sha256(memoryview(data).nbytes)
    hasher.update(data)
    return hasher.hexdigest()


def _hmac(key: bytes, message: str) -> bytes:
    import hmac

    return hmac.new(key, message.encode("utf-8"), "sha256").digest()


class Credentials:
    """An access key: fixed (from the environment), or read from a botocore
    credentials object at each use, which refreshes it when it is about to expire."""

    def __init__(self, access_key: str, secret_key: str, token: str | None, source: Any = None):
        self.access_key, self.secret_key, self.token = access_key, secret_key, token
        self._source = source

    def current(self) -> tuple[str, str, str | None]:
        if self._source is not None:
            frozen = self._source.get_frozen_credentials()
            return frozen.access_key, frozen.secret_key, frozen.token
        return self.access_key, self.secret_key, self.token


def sign(
    method: str,
    host: str,
    path: str,
    headers: dict[str, str],
    payload_sha256: str,
    access_key: str,
    secret_key: str,
    region: str,
    amz_date: str,
    token: str | None = None,
    query: str = "",
) -> dict[str, str]:
    """``headers`` plus the SigV4 headers of an S3 request:
    ``host``, ``x-amz-date``, ``x-amz-content-sha256``, the session token if any, and
    ``Authorization``. ``path`` is already URI-encoded, ``query`` canonical (see
    ``canonical_query``); every header is signed (as botocore does: ``Range`` and
    the conditions too)."""
    signed_headers = {name.lower(): value.strip() for name, value in headers.items()}
    signed_headers["host"] = host
    signed_headers["x-amz-date"] = amz_date
    signed_headers["x-amz-content-sha256"] = payload_sha256
    if token:
        signed_headers["x-amz-security-token"] = token
    names = sorted(signed_headers)
    canonical = "\n".join(
        [
            method,
            path,
            query,
            "".join(f"{name}:{signed_headers[name]}\n" for name in names),
            ";".join(names),
            payload_sha256,
        ]
    )
    day = amz_date[:8]
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{_sha256_hex(canonical.encode())}"
    key = _signing_key(secret_key, day, region)
    import hmac

    signature = hmac.new(key, to_sign.encode("utf-8"), "sha256").hexdigest()
    signed_headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return signed_headers


_SIGNING_KEYS: dict[tuple[str, str, str], bytes] = {}


def _signing_key(secret_key: str, day: str, region: str) -> bytes:
    """The day's signing key (derived with four HMACs; kept per process)."""
    cached = _SIGNING_KEYS.get((secret_key, day, region))
    if cached is None:
        key = _hmac(f"AWS4{secret_key}".encode(), day)
        for part in (region, "s3", "aws4_request"):
            key = _hmac(key, part)
        if len(_SIGNING_KEYS) > 16:
            _SIGNING_KEYS.clear()
        cached = _SIGNING_KEYS[(secret_key, day, region)] = key
    return cached


class Response:
    """What a request got back: status, headers (lower-case names), body when read."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.status, self.headers, self.body = status, headers, body


class DirectS3:
    """Signed one-object requests to one S3 endpoint, for any bucket there."""

    #: Called with a request's S3 operation name ("PutObject", ...) before each time
    #: it is sent: how tests count requests.
    observers: list[Callable[[str], None]] = []

    def __init__(
        self, credentials: Credentials, region: str, endpoint: str | None, verify: Any = True
    ) -> None:
        self.credentials = credentials
        self.region = region
        #: a custom endpoint ("http://127.0.0.1:9000"), addressed path-style; None for AWS
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.verify = verify
        self._bucket_regions: dict[str, str] = {}
        self._connections: dict[tuple, Any] = {}
        self._ssl_context: Any = None

    # ------------------------------------------------------------ settings
    @classmethod
    def from_environment(cls) -> DirectS3 | None:
        """One for this process's AWS settings, or None when they include anything
        this module does not read (then s3fs sends every request)."""
        environ = os.environ
        if environ.get(DIRECT_ENV, "").strip().lower() in _FALSE:
            return None
        if any(environ.get(name) for name in _UNSUPPORTED_ENV):
            return None
        if any(name.startswith("FSSPEC_S3") for name in environ) or _fsspec_configures_s3():
            return None
        endpoint = environ.get("FLOWBOOK_S3_ENDPOINT_URL")
        if not endpoint and environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != (
            "true"
        ):
            endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
        if endpoint and not endpoint.startswith(("http://", "https://")):
            return None
        profile = _profile_config()
        if profile is None or any(name in profile for name in _UNSUPPORTED_PROFILE_KEYS):
            return None
        # botocore's order: AWS_DEFAULT_REGION, then the profile (not AWS_REGION)
        region = environ.get("AWS_DEFAULT_REGION") or profile.get("region")
        access_key = environ.get("AWS_ACCESS_KEY_ID")
        secret_key = environ.get("AWS_SECRET_ACCESS_KEY")
        if access_key and secret_key:
            token = environ.get("AWS_SECURITY_TOKEN") or environ.get("AWS_SESSION_TOKEN")
            credentials = Credentials(access_key, secret_key, token)
        else:
            found = _botocore_settings()
            if found is None:
                return None
            credentials, config_region = found
            region = region or config_region
        region = region or "us-east-1"
        if not endpoint and region.startswith(_OTHER_PARTITIONS):
            return None
        verify: Any = environ.get("AWS_CA_BUNDLE") or True
        return cls(credentials, region, endpoint, verify)

    @staticmethod
    def serves(bucket: str) -> bool:
        """Whether requests for ``bucket`` can be sent here (not a directory bucket,
        which needs S3 Express sessions, nor an access point ARN or alias)."""
        return (
            bool(bucket)
            and not bucket.endswith(("--x-s3", "-s3alias", "--op-s3"))
            and (":" not in bucket)
        )

    def prepare(self) -> None:
        """Before this process forks tasks: read the credentials (a refreshable
        source fetches them now, not in every task) and build the SSL context."""
        _, secret_key, _ = self.credentials.current()
        _signing_key(secret_key, time.strftime("%Y%m%d", time.gmtime()), self.region)
        if self._url_base("bucket")[0] == "https":
            self._context()

    # ------------------------------------------------------------ requests
    def head(self, bucket: str, key: str) -> bool:
        """Whether the object exists (one HEAD)."""
        response = self._request("HEAD", bucket, key, "HeadObject", missing_ok=True)
        return response.status != 404

    def get(self, bucket: str, key: str) -> bytes:
        """The whole object (one GET)."""
        return self._request("GET", bucket, key, "GetObject").body

    def read(self, bucket: str, key: str, part_size: int, parts_at_once: int) -> bytearray:
        """The whole object in one buffer: a GET of its first ``part_size`` bytes,
        which also tells its size, then the rest in ranges, ``parts_at_once`` at a
        time in threads of their own, each only from the object first read
        (``If-Match`` its ETag)."""
        buffer = bytearray()

        def first_view(total: int, length: int) -> memoryview:
            nonlocal buffer
            buffer = bytearray(total)
            return memoryview(buffer)[:length]

        headers = {"range": f"bytes=0-{part_size - 1}"}
        response = self._request(
            "GET", bucket, key, "GetObject", headers=headers, into=first_view, range_ok=True
        )
        if response.status == 416:  # an empty object has no byte 0
            return bytearray()
        filled = int(response.headers["x-flowbook-filled"])
        if filled < len(buffer):
            self._read_rest(
                bucket,
                key,
                memoryview(buffer),
                filled,
                part_size,
                parts_at_once,
                response.headers.get("etag"),
            )
        return buffer

    def _read_rest(
        self,
        bucket: str,
        key: str,
        view: memoryview,
        start: int,
        part_size: int,
        parts_at_once: int,
        etag: str | None,
    ) -> None:
        def fetch(first: int) -> None:
            part = view[first : first + part_size]
            headers = {"range": f"bytes={first}-{first + len(part) - 1}"}
            if etag:
                headers["if-match"] = etag
            self._request("GET", bucket, key, "GetObject", headers=headers, into=part)

        self._each_in_threads(fetch, list(range(start, len(view), part_size)), parts_at_once)

    def _each_in_threads(self, work: Callable[[Any], None], items: list, threads: int) -> None:
        """``work(item)`` for every item, ``threads`` at a time in threads of their own
        (each with its own connection, closed when it ends); the first error is
        raised here once they have stopped (no new item is started after one)."""
        import threading

        pending = items[::-1]
        errors: list[BaseException] = []

        def worker() -> None:
            while not errors:
                try:
                    item = pending.pop()
                except IndexError:
                    break
                try:
                    work(item)
                except BaseException as exc:  # handed to the caller below
                    errors.append(exc)
            self._drop_thread_connections()

        started = [
            threading.Thread(target=worker, name="flowbook-s3", daemon=True)
            for _ in range(min(threads, len(items)))
        ]
        for thread in started:
            thread.start()
        for thread in started:
            thread.join()
        if errors:
            raise errors[0]

    def put(
        self, bucket: str, key: str, data: bytes | bytearray | memoryview, if_none_match: bool
    ) -> bool:
        """PUT the object; with ``if_none_match`` only if the key is free: False when
        it is taken (S3 answers 412, or 409 while another such PUT is under way)."""
        headers = {"if-none-match": "*"} if if_none_match else {}
        try:
            self._request("PUT", bucket, key, "PutObject", headers=headers, body=data)
        except PreconditionFailed:
            if if_none_match:
                return False
            raise
        return True

    def upload(
        self, bucket: str, key: str, views: list[memoryview], part_size: int, parts_at_once: int
    ) -> None:
        """A multipart upload of the concatenation of ``views``, ``parts_at_once``
        parts at a time in threads of their own. A part that lies within one view is
        sent from it without a copy. The object appears whole when the upload
        completes, or not at all (the upload is aborted on any failure)."""
        size = sum(view.nbytes for view in views)
        part_size = max(part_size, -(-size // MAX_PARTS))  # S3 takes 10,000 parts at most
        created = self._request(
            "POST",
            bucket,
            key,
            "CreateMultipartUpload",
            headers={"x-amz-checksum-algorithm": "CRC32"},  # S3 checks each part's
            query={"uploads": ""},
        )
        upload_id = _element(created.body.decode("utf-8", "replace"), "UploadId")
        if not upload_id:
            raise OSError(f"s3://{bucket}/{key}: S3 started no multipart upload")
        etags: dict[int, tuple[str, str]] = {}

        def send(part: tuple[int, int]) -> None:
            number, first = part
            body = slice_of(views, first, min(first + part_size, size))
            crc = _crc32(body)
            sent = self._request(
                "PUT",
                bucket,
                key,
                "UploadPart",
                headers={"x-amz-checksum-crc32": crc},
                body=body,
                query={"partNumber": str(number), "uploadId": upload_id},
            )
            etags[number] = (sent.headers.get("etag", ""), crc)

        try:
            parts_list = list(enumerate(range(0, size, part_size), start=1))
            self._each_in_threads(send, parts_list, parts_at_once)
            parts = "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{etags[n][0]}</ETag>"
                f"<ChecksumCRC32>{etags[n][1]}</ChecksumCRC32></Part>"
                for n in sorted(etags)
            )
            document = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>"
            self._request(
                "POST",
                bucket,
                key,
                "CompleteMultipartUpload",
                body=document.encode(),
                query={"uploadId": upload_id},
            )
        except BaseException:
            try:
                self._request(
                    "DELETE",
                    bucket,
                    key,
                    "AbortMultipartUpload",
                    query={"uploadId": upload_id},
                    missing_ok=True,
                )
            except Exception:  # the upload is left for the bucket's lifecycle rules
                pass
            raise

    def list(self, bucket: str, prefix: str, page_size: int = 1000) -> list[str]:
        """The names directly under ``prefix`` (a "directory" ending in ``/``):
        objects and common prefixes, from ListObjectsV2 pages of ``page_size``
        (S3 sends names URL-encoded, as botocore asks too, and they are decoded)."""
        from urllib.parse import unquote_plus
        from xml.etree import ElementTree

        names: list[str] = []
        query = {
            "list-type": "2",
            "prefix": prefix,
            "delimiter": "/",
            "encoding-type": "url",
            "max-keys": str(page_size),
        }
        while True:
            page = self._request("GET", bucket, "", "ListObjectsV2", query=query)
            try:
                root = ElementTree.fromstring(page.body)
            except ElementTree.ParseError as exc:
                raise OSError(f"s3://{bucket}/{prefix}: an unreadable listing ({exc})") from None
            fields = {_tag(child): child for child in root}
            for child in root:
                part = {_tag(field): field.text or "" for field in child}
                full = part.get("Key") if _tag(child) == "Contents" else None
                if _tag(child) == "CommonPrefixes":
                    full = part.get("Prefix")
                name = unquote_plus(full or "")[len(prefix) :].rstrip("/")
                if name:
                    names.append(name)
            truncated = fields.get("IsTruncated")
            token = fields.get("NextContinuationToken")
            if truncated is None or truncated.text != "true" or token is None:
                return names
            query["continuation-token"] = token.text or ""

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object (S3 answers alike whether it was there or not)."""
        self._request("DELETE", bucket, key, "DeleteObject", missing_ok=True)

    def _request(
        self,
        method: str,
        bucket: str,
        key: str,
        operation: str,
        headers: dict[str, str] | None = None,
        body: bytes | bytearray | memoryview = b"",
        into: Any = None,
        missing_ok: bool = False,
        range_ok: bool = False,
        query: dict[str, str] | None = None,
    ) -> Response:
        payload_sha256 = _sha256_hex(body)
        query_string = canonical_query(query) if query else ""
        where = f"s3://{bucket}/{key}"
        attempt = 0
        while True:
            attempt += 1
            for observer in self.observers:
                observer(operation)
            scheme, host, path = self._url_base(bucket)
            path += uri_encode(key)
            access_key, secret_key, token = self.credentials.current()
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            region = self._bucket_regions.get(bucket, self.region)
            signed = sign(
                method,
                host,
                path,
                headers or {},
                payload_sha256,
                access_key,
                secret_key,
                region,
                amz_date,
                token,
                query_string,
            )
            if body or method in ("PUT", "POST"):
                signed["content-length"] = str(memoryview(body).nbytes)
            target = f"{path}?{query_string}" if query_string else path
            try:
                response = self._send(scheme, host, method, target, signed, body, into)
            except (OSError, _http_errors()) as exc:
                self._drop_connection(scheme, host)
                if attempt >= ATTEMPTS or isinstance(exc, _FatalSendError):
                    raise OSError(f"{where}: {exc or type(exc).__name__}") from None
                _pause(attempt)
                continue
            status = response.status
            if (
                status == 200
                and operation == "CompleteMultipartUpload"
                and _completion_failed(response.body)
            ):
                # S3 failed it after its 200 went out: the error is in the body, and
                # the completion can be sent again (botocore takes it for a 500)
                status = response.status = 500
            if status < 300 or (range_ok and status == 416) or (missing_ok and status == 404):
                return response
            code, message = _error_of(response)
            moved = response.headers.get("x-amz-bucket-region") or _element(
                response.body.decode("utf-8", "replace"), "Region"
            )
            if (
                self.endpoint is None
                and moved
                and moved != region
                and status in (301, 307, 400)
                and attempt < ATTEMPTS
            ):
                self._bucket_regions[bucket] = moved  # the bucket lives in another region
                continue
            if (status in RETRY_STATUS or code in RETRY_CODES) and attempt < ATTEMPTS:
                _pause(attempt)
                continue
            text = f"{where}: {code or status}" + (f": {message}" if message else "")
            if status == 404:
                raise FileNotFoundError(errno.ENOENT, text)
            if status == 403 and code in ("", "AccessDenied", "AllAccessDisabled"):
                raise PermissionError(errno.EACCES, text)  # (not a bad signature or clock)
            if status == 412:
                raise PreconditionFailed(text)
            raise OSError(text + f" (HTTP {status})")

    def _url_base(self, bucket: str) -> tuple[str, str, str]:
        """(scheme, host, path prefix) of ``bucket``'s objects: path-style on a
        custom endpoint; virtual-hosted on AWS when the name allows it."""
        if self.endpoint is not None:
            scheme, _, rest = self.endpoint.partition("://")
            host, _, prefix = rest.partition("/")
            default_port = ":443" if scheme == "https" else ":80"
            if host.endswith(default_port):  # (botocore neither signs nor sends it)
                host = host[: -len(default_port)]
            prefix = f"/{prefix}" if prefix else ""
            return scheme, host, f"{prefix}/{uri_encode(bucket)}/"
        region = self._bucket_regions.get(bucket, self.region)
        domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
        if _dns_compatible(bucket):
            return "https", f"{bucket}.s3.{region}.{domain}", "/"
        return "https", f"s3.{region}.{domain}", f"/{uri_encode(bucket)}/"

    # ------------------------------------------------------------ connections
    def _connection(self, scheme: str, host: str) -> Any:
        """This thread's kept-alive connection to ``host`` (a forked process or another
        thread never shares one: the key holds the process and thread ids)."""
        import threading

        key = (os.getpid(), threading.get_ident(), scheme, host)
        connection = self._connections.get(key)
        if connection is None:
            import http.client

            if scheme == "https":
                connection = http.client.HTTPSConnection(
                    host, timeout=CONNECT_TIMEOUT, context=self._context()
                )
            else:
                connection = http.client.HTTPConnection(host, timeout=CONNECT_TIMEOUT)
            self._connections[key] = connection
        return connection

    def _drop_connection(self, scheme: str, host: str) -> None:
        import threading

        connection = self._connections.pop((os.getpid(), threading.get_ident(), scheme, host), None)
        if connection is not None:
            connection.close()

    def _drop_thread_connections(self) -> None:
        """Close this thread's connections (a thread that is about to end)."""
        import threading

        ident = (os.getpid(), threading.get_ident())
        for key in [key for key in list(self._connections) if key[:2] == ident]:
            self._connections.pop(key).close()

    def _context(self) -> Any:
        if self._ssl_context is None:
            import ssl

            if self.verify is False:
                context = ssl._create_unverified_context()
            else:
                context = ssl.create_default_context(cafile=_ca_bundle(self.verify))
            self._ssl_context = context
        return self._ssl_context

    def _send(
        self,
        scheme: str,
        host: str,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | bytearray | memoryview,
        into: Any,
    ) -> Response:
        connection = self._connection(scheme, host)
        if connection.sock is None:
            connection.connect()  # within CONNECT_TIMEOUT; then READ_TIMEOUT per send
        connection.sock.settimeout(READ_TIMEOUT)
        if memoryview(body).nbytes > SEND_CHUNK:
            body = _chunks(body)
        connection.request(method, path, body=body if body else None, headers=headers)
        reply = connection.getresponse()
        names = {name.lower(): value for name, value in reply.getheaders()}
        if method == "HEAD":
            reply.read()
            return Response(reply.status, names)
        if reply.status < 300 and into is not None:
            length = int(names.get("content-length", "-1"))
            view = into(_total_size(names), length) if callable(into) else into
            if length != len(view):
                reply.close()
                raise _FatalSendError(f"the body is {length} bytes, not {len(view)}")
            filled = 0
            while filled < length:
                count = reply.readinto(view[filled:])
                if not count:
                    raise ConnectionError(f"the body broke off after {filled} bytes")
                filled += count
            names["x-flowbook-filled"] = str(filled)
            return Response(reply.status, names)
        return Response(reply.status, names, reply.read())


class _FatalSendError(OSError):
    """A response that was whole but not what was asked for: not tried again."""


def _http_errors() -> type[BaseException]:
    import http.client

    return http.client.HTTPException


def _chunks(body: bytes | bytearray | memoryview) -> Any:
    """The body in SEND_CHUNK pieces: each must go out within READ_TIMEOUT (a body
    sent whole would have to go out within it all at once: 16 MB on a slow link)."""
    view = memoryview(body).cast("B")
    return (view[start : start + SEND_CHUNK] for start in range(0, len(view), SEND_CHUNK))


def _total_size(headers: dict[str, str]) -> int:
    """The object's size, from a ranged GET's ``content-range`` (or its length)."""
    total = headers.get("content-range", "").rpartition("/")[2]
    if total.isdigit():
        return int(total)
    return int(headers.get("content-length", "0"))


def _tag(element: Any) -> str:
    """An XML element's name without its namespace."""
    return element.tag.rpartition("}")[2]


def _element(text: str, name: str) -> str:
    """The text of the first ``<name>`` element of an XML document (S3's are flat)."""
    start = text.find(f"<{name}>")
    end = text.find(f"</{name}>", start)
    return text[start + len(name) + 2 : end] if 0 <= start < end else ""


def _error_of(response: Response) -> tuple[str, str]:
    """S3's error code and message from an error response's XML body."""
    text = response.body.decode("utf-8", "replace")
    return _element(text, "Code"), _element(text, "Message")


def _crc32(data: bytes | memoryview) -> str:
    """S3's CRC32 checksum of ``data``: base64 of its 4 bytes, big-endian."""
    import binascii
    import zlib

    return binascii.b2a_base64(zlib.crc32(data).to_bytes(4, "big"), newline=False).decode()


def slice_of(views: list[memoryview], start: int, end: int) -> memoryview | bytes:
    """Bytes ``start:end`` of the concatenation of ``views``: a view of one of them
    when the range lies within it, else a copy of the pieces joined."""
    pieces, position = [], 0
    for view in views:
        low, high = max(start, position), min(end, position + view.nbytes)
        if low < high:
            pieces.append(view[low - position : high - position])
        position += view.nbytes
        if position >= end:
            break
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _pause(attempt: int) -> None:
    """Wait before trying again, as botocore's legacy retries: a random part of
    RETRY_BASE_SECONDS, doubling with each attempt."""
    import random

    time.sleep(random.random() * RETRY_BASE_SECONDS * 2 ** (attempt - 1))


def _dns_compatible(bucket: str) -> bool:
    """Whether a bucket can be addressed by host name (botocore's rule: 3 to 63
    lower-case letters, digits and hyphens, starting and ending with a letter or
    digit; no dots, which the wildcard certificate cannot cover)."""
    allowed = "abcdefghijklmnopqrstuvwxyz0123456789-"
    return (
        3 <= len(bucket) <= 63
        and all(char in allowed for char in bucket)
        and bucket[0] != "-"
        and bucket[-1] != "-"
    )


def _completion_failed(body: bytes) -> bool:
    """Whether a 200 answer to CompleteMultipartUpload is in fact an error: S3 may
    send whitespace to keep a long completion alive, then an error document."""
    return b"<CompleteMultipartUploadResult" not in body


def _ca_bundle(verify: Any) -> str | None:
    """The certificates botocore would trust: ``AWS_CA_BUNDLE``'s file, else
    certifi's bundle (botocore's own copy of it when certifi is not installed),
    else the system's."""
    if isinstance(verify, str):
        return verify
    try:
        from certifi import where
    except ImportError:
        try:
            import botocore.httpsession as botocore_http
        except ImportError:
            return None
        return botocore_http.DEFAULT_CA_BUNDLE
    return where()


def _fsspec_configures_s3() -> bool:
    """Whether fsspec's configuration files set options for s3 (read only when its
    configuration directory holds any file: importing fsspec costs ~80 ms)."""
    directory = os.environ.get("FSSPEC_CONFIG_DIR") or os.path.join(
        os.path.expanduser("~"), ".config", "fsspec"
    )
    try:
        if not os.listdir(directory):
            return False
    except OSError:
        return False
    try:
        from fsspec.config import conf
    except ImportError:
        return False
    return bool(conf.get("s3") or conf.get("s3a"))


def _profile_config() -> dict[str, str] | None:
    """The settings of the AWS config file's profile (``AWS_PROFILE``, else
    ``default``): read here with ``configparser`` (botocore takes ~120 ms to import),
    to see whether it sets what this module does not read. {} without a file or
    profile; None when the file cannot be read as botocore would."""
    path = os.path.expanduser(os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config")
    if not os.path.exists(path):
        return {}
    import configparser  # (imports re: only when there is a file to read)

    # botocore's order: AWS_DEFAULT_PROFILE, then AWS_PROFILE
    name = os.environ.get("AWS_DEFAULT_PROFILE") or os.environ.get("AWS_PROFILE") or "default"
    parser = configparser.RawConfigParser()
    try:
        if not parser.read(path):
            return {}
    except (configparser.Error, UnicodeDecodeError):
        return None
    sections = ["profile default", "default"] if name == "default" else [f"profile {name}"]
    for section in sections:
        if parser.has_section(section):
            return dict(parser.items(section))
    # a named profile that is not there: botocore refuses it (ProfileNotFound), and
    # s3fs will say so
    return {} if name == "default" else None


def _botocore_settings() -> tuple[Credentials, str | None] | None:
    """Credentials from botocore's own chain (shared files, SSO, instance or
    container roles...) and the profile's region; None when there are none (s3fs
    then decides, e.g. anonymous access)."""
    try:
        import botocore.session
    except ImportError:
        return None
    try:
        session = botocore.session.get_session()
        source = session.get_credentials()
        if source is None:
            return None
        frozen = source.get_frozen_credentials()
        region = session.get_config_variable("region")
    except Exception:  # a broken profile: s3fs reports it the way botocore words it
        return None
    refreshable = hasattr(source, "refresh_needed")
    credentials = Credentials(
        frozen.access_key, frozen.secret_key, frozen.token, source if refreshable else None
    )
    return credentials, region
