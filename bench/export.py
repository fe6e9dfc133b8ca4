"""Export and read-back throughput of minibatch files, and listing 10,000 files on S3.

Usage: python bench/export.py [--examples 400000] [--batch 128] [--features 256] [--s3-files 10000]

1. Export on local Spark (local[N], N = cores): an RDD of DataSets (features float32 [n, F],
   one-hot labels) written by batch_and_export to a local directory; examples/s, against the same
   RDD written by hand as .npy pairs (np.save per minibatch in mapPartitions).
2. Read-back on one machine: FileDataSetIterator (prefetch 2, CRC-verified) over the exported
   files, against np.load over the .npy pairs; examples/s and MB/s, best of three.
3. Listing on a local S3-protocol server (moto on 127.0.0.1): finding --s3-files minibatch files
   by listing the prefix against reading the manifest (skipped without moto/s3fs).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from _common import best, local_spark, versions
from sparkbatch.data import DataSet, FileDataSetIterator


def _make_partition(features: int, classes: int, per_partition: int, chunk: int) -> Callable:
    def make(index: int, _: Iterable[int]) -> Iterator[DataSet]:
        rng = np.random.default_rng(index)
        for start in range(0, per_partition, chunk):
            n = min(chunk, per_partition - start)
            x = rng.standard_normal((n, features), dtype=np.float32)
            y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
            yield DataSet(x, y)

    return make


class _SaveNpy:
    """What a user writes by hand: re-batch, then np.save features and labels per minibatch."""

    def __init__(self, directory: str, batch: int) -> None:
        self.directory, self.batch = directory, batch

    def __call__(self, index: int, items: Iterable[DataSet]) -> Iterator[int]:
        merged = DataSet.merge(list(items))
        os.makedirs(self.directory, exist_ok=True)
        for k, part in enumerate(merged.split(self.batch)):
            stem = os.path.join(self.directory, f"part-{index:05d}-{k:06d}")
            np.save(stem + "-x.npy", part.features)
            np.save(stem + "-y.npy", part.labels)
            yield part.num_examples


def spark_export(args: argparse.Namespace, workdir: str) -> tuple[str, str]:
    from sparkbatch.spark import batch_and_export

    cores = os.cpu_count() or 2
    spark = local_spark("sparkbatch-bench-export")
    sc = spark.sparkContext
    partitions = 2 * cores
    make = _make_partition(args.features, 10, args.examples // partitions, 1000)
    rdd = sc.parallelize(range(partitions), partitions).mapPartitionsWithIndex(make).cache()
    rdd.count()  # generate once; both exports read the cached DataSets
    ours_dir, npy_dir = os.path.join(workdir, "ours"), os.path.join(workdir, "npy")
    ours = best(lambda: batch_and_export(rdd, ours_dir, args.batch, overwrite=True), 2)
    npy = best(
        lambda: (
            shutil.rmtree(npy_dir, ignore_errors=True),
            rdd.mapPartitionsWithIndex(_SaveNpy(npy_dir, args.batch)).sum(),
        ),
        2,
    )
    spark.stop()
    total = (args.examples // partitions) * partitions
    print(
        f"\n1. Export on local[{cores}]: {total:,} examples, batch {args.batch}, "
        f"{args.features} features"
    )
    print("| method | examples/s | batch_and_export speed-up |")
    print("|---|---:|---:|")
    print(f"| batch_and_export (+ manifest) | {total / ours:,.0f} | 1.00× |")
    print(f"| mapPartitions + np.save per minibatch | {total / npy:,.0f} | {npy / ours:.2f}× |")
    return ours_dir, npy_dir


def read_back(ours_dir: str, npy_dir: str, examples: int) -> None:
    mb = sum(os.path.getsize(p) for p in glob.glob(os.path.join(ours_dir, "*.safetensors"))) / 1e6

    def ours(prefetch: int) -> Callable[[], int]:
        return lambda: sum(
            ds.num_examples for ds in FileDataSetIterator(ours_dir, prefetch=prefetch)
        )

    def npy() -> int:
        n = 0
        for x in sorted(glob.glob(os.path.join(npy_dir, "*-x.npy"))):
            features, labels = np.load(x), np.load(x[:-6] + "-y.npy")
            n += min(len(features), len(labels))
        return n

    rows = [
        ("FileDataSetIterator, prefetch 2 (CRC-verified)", best(ours(2))),
        ("FileDataSetIterator, prefetch 0", best(ours(0))),
        ("np.load of .npy pairs", best(npy)),
    ]
    print(f"\n2. Read-back on one machine: {examples:,} examples, {mb:.0f} MB, page cache warm")
    print("| reader | examples/s | MB/s | FileDataSetIterator speed-up |")
    print("|---|---:|---:|---:|")
    for name, seconds in rows:
        print(
            f"| {name} | {examples / seconds:,.0f} | {mb / seconds:,.0f} "
            f"| {seconds / rows[0][1]:.2f}× |"
        )


def s3_listing(files: int) -> None:
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        print("\n3. skipped: pip install 'sparkbatch[s3]' 'moto[server]'")
        return
    import logging

    from sparkbatch.data.manifest import minibatch_files, write_manifest
    from sparkbatch.storage import list_files

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket="bench")
        for i in range(files):  # tiny objects: listing cost depends on the count, not the size
            client.put_object(Bucket="bench", Key=f"train/part-{i:09d}.safetensors", Body=b"x")
        options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
        entries = [{"path": f"part-{i:09d}.safetensors", "num_examples": 1} for i in range(files)]
        write_manifest("s3://bench/train", entries, storage_options=options)
        listed = best(
            lambda: list_files("s3://bench/train", suffix=".safetensors", storage_options=options),
            3,
        )
        manifest = best(lambda: minibatch_files("s3://bench/train", storage_options=options), 3)
        assert len(minibatch_files("s3://bench/train", storage_options=options)) == files
    finally:
        server.stop()
    print(f"\n3. Finding {files:,} minibatch files on a local S3 server (moto, 127.0.0.1)")
    print("| method | seconds | manifest speed-up |")
    print("|---|---:|---:|")
    print(f"| read _manifest.json | {manifest:.3f} | 1.00× |")
    print(
        f"| list the prefix (ListObjectsV2, 1,000 keys a page) | {listed:.3f} "
        f"| {listed / manifest:.1f}× |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=400_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--s3-files", type=int, default=10_000)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    print("versions:", versions("sparkbatch", "numpy", "pyspark", "s3fs", "moto"))
    workdir = tempfile.mkdtemp(prefix="sparkbatch-bench-export-", dir=args.dir)
    try:
        ours_dir, npy_dir = spark_export(args, workdir)
        exported = sum(ds.num_examples for ds in FileDataSetIterator(ours_dir, prefetch=0))
        read_back(ours_dir, npy_dir, exported)
        s3_listing(args.s3_files)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
