"""Images to training-ready DataSets: FileBatch archives with FileBatchLoader vs per-file Pillow.

Usage: python bench/images.py [--repeat 5] [--scale 1.0] [--batch-size 32]

Two data sets of photo-like JPEGs (quality 90) in 10 class directories, as the seed's image how-to
has them: ``tiny`` (64x64 sources read at 64x64, as TinyImageNet) and ``large`` (256x256 sources
resized to 64x64). Each is packed once with ``spark.create_file_batches_local`` (timed, reported),
then one epoch, every image to float32 ``[n, 3, 64, 64]`` features in ``[0, 1]`` with one-hot
labels in minibatches of ``--batch-size``, is timed for

- ``sparkbatch``: ``data.FileBatchLoader(records.ImageRecordReader(64, 64, 3,
  ParentPathLabelGenerator(), labels), batch_size, 1, 10, preprocessor=ImageScaler())`` on each
  archive (its default threads: the cores this process may use, at most 8), and the same with
  ``threads=1``;
- ``per-file Pillow``: the loop a user writes over the directory, in the same minibatches: for each
  file ``Image.open(path).convert("RGB").resize((64, 64), BILINEAR)`` (the reader's filter, so both
  do the same work), ``np.asarray``, then ``np.stack``, the transpose to NCHW, ``/ 255`` to float32
  and one-hot labels from the parent directories; one thread, as written; and the same loop
  with ``img.draft("RGB", (64, 64))`` first (libjpeg's DCT scaling, which the reader uses too:
  the loop an expert writes);
- ``torch DataLoader``: the same per-file work as a ``torch.utils.data.Dataset`` under a
  ``DataLoader(batch_size, num_workers=<cores>, persistent_workers=True)``, the usual way to
  spread it over processes (only where torch is installed; torchvision's ``ImageFolder`` is the
  same loop and is timed instead where torchvision is installed).

All rows in one process, one after another in each repetition (file order identical); a time is
the best repetition, ``x per-file`` the median over repetitions of (per-file time / row time)
from the same repetition, which holds up on a shared machine. Then the bytes on disk: the JPEG
directory, the archives, and the decoded data as uint8 and as float32 arrays.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import versions  # noqa: E402
from image_decode import photo  # noqa: E402
from sparkbatch.data import FileBatchLoader, ImageScaler, Source  # noqa: E402
from sparkbatch.records import ImageRecordReader, ParentPathLabelGenerator  # noqa: E402
from sparkbatch.spark import create_file_batches_local  # noqa: E402
from sparkbatch.storage import FileBatch  # noqa: E402

CLASSES = [f"class{i:02d}" for i in range(10)]
SIDE = 64


def write_images(root: str, count: int, source_side: int) -> int:
    """``count`` distinct JPEGs under ``root/<class>/``; returns their total bytes."""
    from PIL import Image

    total = 0
    for i in range(count):
        rgb = photo(source_side, source_side, i)
        out = io.BytesIO()
        Image.fromarray(rgb).save(out, "JPEG", quality=90)
        path = os.path.join(root, CLASSES[i % len(CLASSES)], f"img{i:06d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(out.getvalue())
        total += len(out.getvalue())
    return total


def per_file_epoch(groups: list[list[str]], draft: bool = False) -> int:
    """The per-file Pillow loop, minibatch by minibatch (``draft``: with ``Image.draft``);
    returns the examples made."""
    from PIL import Image

    index = {name: i for i, name in enumerate(CLASSES)}
    done = 0
    for paths in groups:
        arrays = []
        for path in paths:
            with Image.open(path) as img:
                if draft:
                    img.draft("RGB", (SIDE, SIDE))
                arrays.append(np.asarray(
                    img.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR)))
        features = np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
        labels = np.zeros((len(paths), len(CLASSES)), np.float32)
        labels[np.arange(len(paths)), [index[os.path.basename(os.path.dirname(p))]
                                       for p in paths]] = 1
        done += min(len(features), len(labels))
    return done


def loader_epoch(loader: FileBatchLoader, urls: list[str]) -> int:
    done = 0
    for url in urls:
        ds = loader.load(Source(url))
        done += ds.num_examples
    return done


class PillowFiles:
    """A torch Dataset of the per-file work (module level, so DataLoader workers pickle it)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.index = {name: i for i, name in enumerate(CLASSES)}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from PIL import Image

        path = self.paths[i]
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR))
        x = rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        return x, self.index[os.path.basename(os.path.dirname(path))]


def torch_epoch_maker(paths: list[str], batch_size: int) -> tuple[str, Callable[[], int]] | None:
    """The DataLoader row: torchvision's ImageFolder where installed, else PillowFiles."""
    try:
        import torch
    except ImportError:
        return None
    workers = max(1, len(os.sched_getaffinity(0)))
    try:
        from torchvision import datasets, transforms

        root = os.path.dirname(os.path.dirname(paths[0]))
        dataset: Any = datasets.ImageFolder(root, transforms.Compose([
            transforms.Resize((SIDE, SIDE), transforms.InterpolationMode.BILINEAR),
            transforms.ToTensor()]))
        name = f"torchvision ImageFolder, DataLoader({workers} workers)"
    except ImportError:
        dataset = PillowFiles(paths)
        name = f"torch DataLoader({workers} workers), per-file Pillow"
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, persistent_workers=True)

    def epoch() -> int:
        done = 0
        for x, y in loader:
            torch.nn.functional.one_hot(torch.as_tensor(y), len(CLASSES)).float()
            done += int(x.shape[0])
        return done

    epoch()  # start the workers
    return name, epoch


def run_case(name: str, count: int, source_side: int, batch_size: int, repeat: int) -> None:
    root = tempfile.mkdtemp(prefix=f"bench-images-{name}-")
    try:
        src = os.path.join(root, "images")
        jpeg_bytes = write_images(src, count, source_side)
        start = time.perf_counter()
        urls = create_file_batches_local(src, os.path.join(root, "batches"), batch_size, seed=0,
                                         progress=False)
        pack = time.perf_counter() - start
        archive_bytes = sum(os.path.getsize(u) for u in urls)
        groups = [[u.removeprefix("file://") for u in FileBatch.read_zip(url).original_uris]
                  for url in urls]
        paths = [p for g in groups for p in g]
        reader = ImageRecordReader(SIDE, SIDE, 3, ParentPathLabelGenerator(), CLASSES)
        rows: dict[str, Callable[[], int]] = {
            "per-file Pillow (1 thread)": lambda: per_file_epoch(groups),
            "per-file Pillow with draft (1 thread)": lambda: per_file_epoch(groups, draft=True),
            "sparkbatch FileBatchLoader": lambda: loader_epoch(
                FileBatchLoader(reader, batch_size, 1, len(CLASSES), preprocessor=ImageScaler()),
                urls),
        }
        single = ImageRecordReader(SIDE, SIDE, 3, ParentPathLabelGenerator(), CLASSES, threads=1)
        rows["sparkbatch FileBatchLoader, threads=1"] = lambda: loader_epoch(
            FileBatchLoader(single, batch_size, 1, len(CLASSES), preprocessor=ImageScaler()), urls)
        made = torch_epoch_maker(paths, batch_size)
        if made is not None:
            rows[made[0]] = made[1]
        for fn in rows.values():  # warm: page cache, imports, pools
            assert fn() == count
        times: dict[str, list[float]] = {k: [] for k in rows}
        for _ in range(repeat):
            for key, fn in rows.items():
                t = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t)
        base = times["per-file Pillow (1 thread)"]
        print(f"\n{name}: {count} JPEGs {source_side}x{source_side} -> float32 [n, 3, {SIDE}, "
              f"{SIDE}] in [0, 1] + one-hot, minibatches of {batch_size}; packing into "
              f"{len(urls)} archives took {pack:.2f} s")
        print(f"  {'pipeline':<52}{'images/s':>10}{'x per-file':>12}")
        for key, ts in times.items():
            ratio = statistics.median(b / t for b, t in zip(base, ts, strict=True))
            print(f"  {key:<52}{count / min(ts):>10.0f}{ratio:>11.2f}x")
        raw = count * 3 * SIDE * SIDE
        print(f"  bytes: JPEG directory {jpeg_bytes / 2**20:.2f} MiB, FileBatch archives "
              f"{archive_bytes / 2**20:.2f} MiB, uint8 [n, 3, {SIDE}, {SIDE}] {raw / 2**20:.2f} "
              f"MiB, float32 {4 * raw / 2**20:.2f} MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the image counts")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    print(versions("sparkbatch", "numpy", "pillow", "simplejpeg", "torch", "torchvision"))
    print(f"{len(os.sched_getaffinity(0))} cores for this process")
    run_case("tiny", max(64, int(2048 * args.scale)), 64, args.batch_size, args.repeat)
    run_case("large", max(64, int(1024 * args.scale)), 256, args.batch_size, args.repeat)


if __name__ == "__main__":
    main()
