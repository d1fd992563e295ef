#!/usr/bin/env python3
"""A large NumPy artifact on S3: flowbook's datastore against plain s3fs and boto3.

    python benchmarks/s3_artifact.py                 # 500 MB, 3 repetitions
    python benchmarks/s3_artifact.py --mb 100 --reps 1

Starts moto's S3 server on 127.0.0.1 and, in this one process and run, stores and
loads the same array through flowbook's datastore (``store_artifact``: pickle with
out-of-band buffers, SHA-256 tree hash, multipart upload from the array's memory;
``load_artifact``: ranged GETs at once into one buffer, the hash checked, unpickled)
and copies the same bytes with plain s3fs (``pipe_file``/``cat_file``) and boto3
(``upload_fileobj``/``download_fileobj``, its transfer manager, defaults). The
operations alternate within each repetition; each writes a new key (each flowbook
store goes to a fresh datastore: a blob already stored is not sent again), and each
repetition removes what it wrote, so that moto (which keeps every object in its own
memory and temporary files) grows for no one. Medians; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from s3bench import Moto, load_average, machine_lines, print_repetitions

BUCKET = "bench"


def measure(mb: int, reps: int) -> dict[str, list[float]]:
    import boto3
    import numpy as np
    import s3fs

    from flowbook.datastore import Datastore

    array = np.random.default_rng(0).integers(0, 255, size=mb * 2**20, dtype=np.uint8)
    data = array.tobytes()
    fs = s3fs.S3FileSystem(use_listings_cache=False)
    s3 = boto3.client("s3")
    results: dict[str, list[float]] = {}

    def time_it(label: str, action) -> object:
        started = time.perf_counter()
        value = action()
        results.setdefault(label, []).append(time.perf_counter() - started)
        return value

    for rep in range(reps):
        # every operation writes a new key (as storing a new artifact does), and each
        # repetition removes what it wrote: moto keeps objects in its own memory and
        # temporary files, and must not grow for one side only
        prefix = f"rep-{uuid.uuid4().hex}"
        datastore = Datastore(f"s3://{BUCKET}/{prefix}/flowbook")
        store = datastore.store_artifact
        entry = time_it("flowbook store", lambda store=store: store(array, "a"))
        load = datastore.load_artifact
        loaded = time_it("flowbook load", lambda load=load, e=entry: load(e, "a", "bench"))
        if rep == 0:
            assert np.array_equal(loaded, array)
        del loaded
        time_it("s3fs pipe_file", lambda p=prefix: fs.pipe_file(f"{BUCKET}/{p}/s3fs", data))
        time_it("s3fs cat_file", lambda p=prefix: fs.cat_file(f"{BUCKET}/{p}/s3fs"))
        time_it(
            "boto3 upload_fileobj",
            lambda p=prefix: s3.upload_fileobj(io.BytesIO(data), BUCKET, f"{p}/boto3"),
        )
        time_it(
            "boto3 download_fileobj",
            lambda p=prefix: s3.download_fileobj(BUCKET, f"{p}/boto3", io.BytesIO()),
        )
        fs.rm(f"{BUCKET}/{prefix}", recursive=True)
        print(
            f"  rep {rep + 1}: "
            + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in results.items())
            + f" (load {load_average()})",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fb-s3-artifact-") as tmp:
        moto = Moto(Path(tmp) / "moto.log", BUCKET)
        try:
            os.environ.update(moto.env)
            load_before = load_average()
            started = time.time()
            results = measure(options.mb, options.reps)
        finally:
            moto.stop()
    median = {label: statistics.median(samples) for label, samples in results.items()}
    size = options.mb * 2**20 / 1e6
    print(f"\n### A {options.mb} MB NumPy artifact on S3 (moto on 127.0.0.1)\n")
    print(
        f"Written by `python benchmarks/s3_artifact.py --mb {options.mb} --reps "
        f"{options.reps}` on {time.strftime('%Y-%m-%d %H:%M')} "
        f"({(time.time() - started) / 60:.0f} min), one process, one moto server; "
        f"medians of {options.reps}. Load average (1/5/15 min) {load_before} before, "
        f"{load_average()} after.\n"
    )
    print("| Operation | median | throughput | flowbook / this |")
    print("|---|---:|---:|---:|")
    for label, seconds in median.items():
        ours = median["flowbook store" if "pipe" in label or "upload" in label else "flowbook load"]
        ratio = "" if label.startswith("flowbook") else f"{ours / seconds:.2f}x"
        print(f"| {label} | {seconds:.2f} s | {size / seconds:.0f} MB/s | {ratio} |")
    print_repetitions(results)
    print()
    print("\n".join(machine_lines()))


if __name__ == "__main__":
    main()
