"""Image decoders for the image reader: images/s from encoded bytes to ``[C, H, W]`` uint8 arrays.

Usage: python bench/image_decode.py [--repeat 3] [--scale 1.0] [--pillow-simd DIR]

What ``records.ImageRecordReader`` and ``data.FileBatchLoader`` will do to each file, timed per
candidate library: decode JPEG or PNG bytes, convert to 3 channels (RGB) or 1 (luma), resize with
an antialiasing filter (Pillow's BILINEAR, OpenCV's INTER_AREA) and lay out as ``[C, H, W]``.
The images are photo-like (smooth gradients, soft blobs, fine noise) at 256x256 and 640x480,
encoded by Pillow (JPEG quality 90, PNG at its default level).

Candidates (rows):

- ``pillow``: ``Image.open`` -> ``convert`` -> ``resize(BILINEAR)`` -> numpy;
- ``pillow-draft`` (JPEG): the same after ``Image.draft``, which lets libjpeg decode at 1/2,
  1/4 or 1/8 scale when the target is that much smaller (what ``Image.thumbnail`` does);
- ``pillow-simd``, ``pillow-simd-draft``: the same code on Pillow-SIMD, when ``--pillow-simd DIR``
  names a folder it was installed into (``pip install --target DIR pillow-simd``; it replaces
  ``PIL``, so it runs in a child process with ``DIR`` first on ``PYTHONPATH``);
- ``opencv``: ``cv2.imdecode`` (RGB or grayscale) -> ``cv2.resize(INTER_AREA)``;
- ``simplejpeg`` (JPEG): libjpeg-turbo's full-size decode -> ``cv2.resize(INTER_AREA)``;
- ``simplejpeg-scaled`` (JPEG): the same with ``min_height``/``min_width`` (DCT-domain scaling,
  as ``pillow-draft``).

Each is timed on one thread (a plain loop) and on two (``ThreadPoolExecutor(2).map`` over the
same images): a 2-thread speed near twice the 1-thread one means the library releases the GIL
while it decodes and resizes. OpenCV's own thread pool is set to one thread, so "1 thread" means
one core for every library. A time is the best of ``--repeat`` runs; ``x pillow`` is the speed
over Pillow's single-threaded speed on the same case. ``mad`` is the mean absolute difference
(0..255) of the row's first output from Pillow's, a check that the rows do the same work (DCT
scaling and different filters differ by a few levels). A table of which formats (JPEG, PNG, BMP,
GIF's first frame) each library decodes comes first.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import versions  # noqa: E402

Decoder = Callable[[bytes, int, int, int], np.ndarray]
"""``decode(data, height, width, channels)`` -> ``[channels, height, width]`` uint8."""


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like RGB image: gradients, soft blobs and fine noise, as ``[H, W, 3]`` uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [x / width * 160 + 40, y / height * 120 + 60, (x + y) / (width + height) * 90 + 80], -1
    )
    coarse = rng.uniform(-60, 60, (height // 32 + 2, width // 32 + 2, 3)).astype(np.float32)
    blobs = coarse[(y // 32).astype(int), (x // 32).astype(int)]
    for _ in range(2):  # smooth the blocks into blobs with two passes of a 17-pixel box blur
        blobs = _box(_box(blobs, 0), 1)
    noise = rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    return np.clip(base + blobs + noise, 0, 255).astype(np.uint8)


def _box(a: np.ndarray, axis: int, r: int = 8) -> np.ndarray:
    c = np.cumsum(np.pad(a, [(r + 1, r) if i == axis else (0, 0) for i in range(3)], "edge"), axis)
    n = a.shape[axis]
    return (c.take(range(2 * r + 1, n + 2 * r + 1), axis) - c.take(range(n), axis)) / (2 * r + 1)


def encode(rgb: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def pillow(draft: bool) -> Decoder:
    from PIL import Image

    def decode(data: bytes, height: int, width: int, channels: int) -> np.ndarray:
        mode = "RGB" if channels == 3 else "L"
        img = Image.open(io.BytesIO(data))
        if draft and img.format == "JPEG":
            img.draft(mode, (width, height))
        img = img.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
        a = np.asarray(img)
        return a.transpose(2, 0, 1).copy() if channels == 3 else a[None].copy()

    return decode


def opencv() -> Decoder:
    import cv2

    cv2.setNumThreads(1)

    def decode(data: bytes, height: int, width: int, channels: int) -> np.ndarray:
        flag = cv2.IMREAD_COLOR_RGB if channels == 3 else cv2.IMREAD_GRAYSCALE
        a = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        a = cv2.resize(a, (width, height), interpolation=cv2.INTER_AREA)
        return a.transpose(2, 0, 1).copy() if channels == 3 else a[None].copy()

    return decode


def simplejpeg(scaled: bool) -> Decoder:
    import cv2
    import simplejpeg as sj

    cv2.setNumThreads(1)

    def decode(data: bytes, height: int, width: int, channels: int) -> np.ndarray:
        size = {"min_height": height, "min_width": width} if scaled else {}
        a = sj.decode_jpeg(data, colorspace="RGB" if channels == 3 else "GRAY", **size)
        a = cv2.resize(a, (width, height), interpolation=cv2.INTER_AREA)
        return a.transpose(2, 0, 1).copy() if channels == 3 else a.reshape(1, height, width)

    return decode


def candidates(names: list[str]) -> dict[str, tuple[Decoder, set[str]]]:
    """The named decoders that import here, with the formats each is timed on."""
    makers: dict[str, tuple[Callable[[], Decoder], set[str]]] = {
        "pillow": (lambda: pillow(False), {"JPEG", "PNG"}),
        "pillow-draft": (lambda: pillow(True), {"JPEG"}),
        "opencv": (opencv, {"JPEG", "PNG"}),
        "simplejpeg": (lambda: simplejpeg(False), {"JPEG"}),
        "simplejpeg-scaled": (lambda: simplejpeg(True), {"JPEG"}),
    }
    found = {}
    for name in names:
        try:
            found[name] = (makers[name][0](), makers[name][1])
        except ImportError as exc:
            print(f"# {name}: not installed ({exc})", file=sys.stderr)
    return found


def formats_table(decoders: dict[str, tuple[Decoder, set[str]]]) -> dict[str, str]:
    """Which of JPEG, PNG, BMP and GIF (its first frame) each decoder reads correctly."""
    from PIL import Image

    first = photo(48, 64, 1)
    second = 255 - first
    files = {fmt: encode(first, fmt) for fmt in ("JPEG", "PNG", "BMP")}
    out = io.BytesIO()
    frames = [Image.fromarray(a).quantize(256) for a in (first, second)]
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    files["GIF"] = out.getvalue()
    rows = {}
    for name, (decode, _) in decoders.items():
        cells = []
        for fmt, data in files.items():
            try:
                got = decode(data, 48, 64, 3).transpose(1, 2, 0).astype(np.int16)
                mad = float(np.abs(got - first).mean())
                cells.append(f"{fmt} {'ok' if mad < 12 else f'WRONG (mad {mad:.0f})'}")
            except Exception as exc:  # noqa: BLE001 (any failure means "does not read it")
                cells.append(f"{fmt} no ({type(exc).__name__})")
        rows[name] = ", ".join(cells)
    return rows


def cases(scale: float) -> list[tuple[str, int, int, int, int, int, list[bytes]]]:
    """(format, src height, src width, target side, channels, count, distinct files)."""
    images = {(h, w): [photo(h, w, seed) for seed in range(4)] for h, w in ((256, 256), (480, 640))}
    out = []
    for fmt in ("JPEG", "PNG"):
        for (h, w), rgbs in images.items():
            files = [encode(a, fmt) for a in rgbs]
            count = max(8, int((160 if h == 256 else 48) * scale))
            for side in (32, 224):
                out.append((fmt, h, w, side, 3, count, files))
                if h == 480:
                    out.append((fmt, h, w, side, 1, count, files))
    return out


def speed(decode: Decoder, files: list[bytes], side: int, channels: int, threads: int,
          repeat: int) -> float:
    """Images per second over ``files`` (cycled), on ``threads`` threads, best of ``repeat``."""
    def one(data: bytes) -> np.ndarray:
        return decode(data, side, side, channels)

    best = float("inf")
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            if pool is None:
                for data in files:
                    one(data)
            else:
                for _ in pool.map(one, files):
                    pass
            best = min(best, time.perf_counter() - start)
    finally:
        if pool is not None:
            pool.shutdown()
    return len(files) / best


def installed_sizes(*packages: str) -> str:
    """The size on disk of each installed package: the sizes in its RECORD, summed (read by
    hand: this folder's csv.py hides the csv module that ``Distribution.files`` needs)."""
    from importlib.metadata import PackageNotFoundError, distribution

    sizes = []
    for name in packages:
        try:
            record = distribution(name).read_text("RECORD") or ""
        except PackageNotFoundError:
            continue
        total = sum(int(size) for *_, size in (line.rsplit(",", 2) for line in
                                               record.splitlines()) if size.isdigit())
        sizes.append(f"{name} {total / 2**20:.1f} MiB")
    return "installed: " + ", ".join(sizes)


def measure(names: list[str], repeat: int, scale: float, simd: bool = False) -> dict[str, Any]:
    """Every row as JSON-able data: versions, the formats table, images/s per case."""
    decoders = candidates(names)
    if simd:  # rows named pillow-simd and pillow-simd-draft
        decoders = {name.replace("pillow", "pillow-simd", 1): d for name, d in decoders.items()}
    packages = ("numpy", "pillow", "pillow-simd", "opencv-python-headless", "simplejpeg")
    result: dict[str, Any] = {
        "versions": versions(*packages) + "\n" + installed_sizes(*packages),
        "formats": formats_table(decoders),
        "rows": [],
    }
    if simd:
        from PIL import Image

        result["versions"] += f" (child: PIL {Image.__version__} from {Image.__file__})"
    reference = pillow(False)
    for fmt, h, w, side, channels, count, files in cases(scale):
        work = [files[i % len(files)] for i in range(count)]
        expected = reference(files[0], side, side, channels).astype(np.int16)
        for name, (decode, fmts) in decoders.items():
            if fmt not in fmts:
                continue
            mad = float(np.abs(decode(files[0], side, side, channels) - expected).mean())
            for threads in (1, 2):
                ips = speed(decode, work, side, channels, threads, repeat)
                result["rows"].append({
                    "case": f"{fmt} {w}x{h} -> {side}x{side} c{channels}",
                    "bytes": sum(map(len, files)) // len(files),
                    "lib": name, "threads": threads, "ips": ips, "mad": mad,
                })
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the image counts")
    parser.add_argument("--pillow-simd", metavar="DIR", help="a --target folder of pillow-simd")
    parser.add_argument("--json-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json_child:  # the Pillow-SIMD run, in a child process with DIR on PYTHONPATH
        print(json.dumps(measure(["pillow", "pillow-draft"], args.repeat, args.scale, simd=True)))
        return
    names = ["pillow", "pillow-draft", "opencv", "simplejpeg", "simplejpeg-scaled"]
    result = measure(names, args.repeat, args.scale)
    print(result["versions"])
    if args.pillow_simd:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [args.pillow_simd, *filter(None, [os.environ.get("PYTHONPATH")])]))
        child = subprocess.run(
            [sys.executable, __file__, "--json-child", "--repeat", str(args.repeat),
             "--scale", str(args.scale)], env=env, capture_output=True, text=True, check=True)
        simd = json.loads(child.stdout)
        print(simd["versions"])
        result["formats"].update(simd["formats"])
        result["rows"] += simd["rows"]
    print(f"{os.cpu_count()} CPUs; images/s (x pillow = over Pillow on 1 thread, same case)")
    print("\nformats read (3 channels):")
    for name, row in result["formats"].items():
        print(f"  {name:<22} {row}")
    base = {r["case"]: r["ips"] for r in result["rows"] if r["lib"] == "pillow" and
            r["threads"] == 1}
    order = ["pillow", "pillow-draft", "pillow-simd", "pillow-simd-draft", "opencv",
             "simplejpeg", "simplejpeg-scaled"]
    for case in base:
        rows = [r for r in result["rows"] if r["case"] == case]
        print(f"\n{case} (files of {rows[0]['bytes'] / 1024:.0f} KiB)")
        print(f"  {'library':<20}{'1 thread':>10}{'x pillow':>10}{'2 threads':>11}"
              f"{'x pillow':>10}{'2T/1T':>7}{'mad':>6}")
        by_lib: dict[str, dict[int, dict[str, Any]]] = {}
        for r in rows:
            by_lib.setdefault(r["lib"], {})[r["threads"]] = r
        for lib in sorted(by_lib, key=lambda n: order.index(n) if n in order else 99):
            one, two = by_lib[lib][1], by_lib[lib][2]
            print(f"  {lib:<20}{one['ips']:>10.0f}{one['ips'] / base[case]:>9.2f}x"
                  f"{two['ips']:>11.0f}{two['ips'] / base[case]:>9.2f}x"
                  f"{two['ips'] / one['ips']:>7.2f}{one['mad']:>6.1f}")


if __name__ == "__main__":
    main()
