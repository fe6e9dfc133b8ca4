"""Images to ``[channels, height, width]`` uint8 arrays with labels (DataVec's image reader).

:class:`ImageRecordReader` decodes JPEG, PNG, BMP and GIF files with Pillow (``pip install
sparkbatch[images]``), converts them to 1 or 3 channels, resizes them to one size and lays them
out channels first (NCHW), and gives each the label its path's label generator names. It reads
one file at a time as a :class:`~sparkbatch.records.RecordReader` (a record is ``[image,
label]``), or a whole minibatch of files at once (:meth:`ImageRecordReader.read_batch`, on a
pool of threads into one array), which is what :class:`sparkbatch.data.FileBatchLoader` calls
on each FileBatch archive.

NOTE [image decoding]: the rules every image goes through, in order.

1. Format: the file's bytes, not its name, decide: JPEG, PNG, BMP or GIF (its first frame);
   anything else (another image format, a text file, a truncated or corrupt image) is a
   :class:`~sparkbatch.errors.FormatError` naming the file. Images of more than twice Pillow's
   ``Image.MAX_IMAGE_PIXELS`` (decompression bombs) are refused the same way; those between the
   limit and twice it are read, with Pillow's ``DecompressionBombWarning`` (Pillow's rule).
2. Orientation: an EXIF orientation tag (set by cameras and phones) is applied, so the image
   is upright as viewers show it, as OpenCV's ``imdecode`` does by default (DataVec decodes
   with it).
3. JPEG draft (``fast_jpeg=True``): libjpeg decodes a JPEG at 1/2, 1/4 or 1/8 of its size
   (scaling in the DCT domain, ``Image.draft``) when the target is at least that much smaller;
   the result differs from a full decode followed by the resize by about one level in 255 on
   average (a mean absolute difference of 0.3 to 1.0 for photo-like 256x256 to 512x512 JPEGs
   resized to 32..224 pixels; 1.0 at half size), and decoding is 1.8 to 2.3 times faster
   there. With 1 channel libjpeg also gives a colour JPEG's own luma (its Y) at any size,
   which differs from converting the decoded RGB by a few levels at a few pixels.
   ``fast_jpeg=False`` decodes every pixel.
4. Channels: 3 channels are RGB, 1 channel is luma (ITU-R 601-2: ``L = R*299/1000 +
   G*587/1000 + B*114/1000``), both with Pillow's conversions: palette images (GIF, palette
   PNG) are looked up; an alpha channel (RGBA, LA, palette transparency) is dropped, not
   composited (a transparent pixel gets the colour stored under it); CMYK goes to RGB by
   Pillow's formula without the file's ICC profile; 1-bit images are 0 or 255; 16-bit grey
   (16-bit PNG) keeps its high byte (``v >> 8``: 65535 -> 255) where Pillow's own conversion
   would clip every value over 255.
5. Size: resized to ``(height, width)`` with Pillow's BILINEAR filter, which widens with the
   reduction (an antialiased, area-weighted average when shrinking, so no aliasing) and
   interpolates when enlarging; the aspect ratio is not kept (DataVec's ``ImageRecordReader``
   stretches too). An image of the target size is not resampled.
6. Layout: ``[channels, height, width]`` uint8, 0..255, channel 0 red. DataVec decodes with
   OpenCV and gives BGR; sparkbatch gives RGB, the order of Pillow, PyTorch/torchvision and the
   published pretrained models. A model trained on DataVec's BGR arrays reads sparkbatch's
   arrays after ``x[:, ::-1]`` (channels reversed), and the other way round.

NOTE [plain JPEGs]: opening a JPEG with ``Image.open`` parses its header in Python, which for
a 64x64 photograph costs as much as decoding it, under the GIL. A plain JPEG (8-bit, baseline
or progressive Huffman, 1 or 3 components, no Adobe or EXIF marker) is therefore decoded by one
call to Pillow's JPEG decoder (``Image.frombytes(mode, size, data, "jpeg", ...)``) with the
arguments ``Image.open`` and ``Image.draft`` would give it, after a scan of its markers for
the frame's size; the pixels are the same (the tests compare them). Every other JPEG, and any
JPEG this fails on, goes through ``Image.open``, which also names the problem of a bad one.
Where simplejpeg is installed (the ``images`` extra installs it), a plain JPEG is decoded by it
instead: the same libjpeg-turbo with the same settings (accurate DCT, fancy upsampling, the
same DCT scale), straight into a numpy array without Pillow's per-image objects and copies, with
the GIL released; the pixels are again Pillow's (the tests compare both paths), and anything it
refuses goes the ways above.

NOTE [image labels]: with a label generator, a record's label is the index of the generated
class name in :attr:`ImageRecordReader.labels`. That list is set by ``labels=``, by
:meth:`~ImageRecordReader.set_labels`, or inferred by :meth:`~ImageRecordReader.initialize`:
the generated names of all its files, sorted (Python's ``str`` order, which is Java's for
ASCII names), as DataVec does. Labels given by the caller are kept by a later ``initialize``
(DataVec re-infers them); only inferred ones are inferred again. A name not in the list, or a
class name with no list at all, is a ``ValueError`` naming the file. A generator that returns
a numpy array (a segmentation mask, a regression target) gives that array as the label, and no
list is needed. Without a generator a record is ``[image]`` and there are no labels.
"""

from __future__ import annotations

import functools
import io
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from sparkbatch.errors import FormatError
from sparkbatch.records.labels import LabelGenerator
from sparkbatch.records.reader import FileRecordReader, PathOrPaths, Record
from sparkbatch.storage import is_directory, list_files, read_bytes
from sparkbatch.storage.file_batch import entry_name

__all__ = ["IMAGE_EXTENSIONS", "ImageRecordReader"]

#: The extensions a directory's image files are listed by (any case); DataVec's
#: ``NativeImageLoader.ALLOWED_FORMATS`` for the formats sparkbatch reads.
IMAGE_EXTENSIONS = ("bmp", "gif", "jpeg", "jpg", "png")
_FORMATS = ("JPEG", "PNG", "BMP", "GIF")
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG", "PNG"), (b"BM", "BMP"), (b"GIF8", "GIF"))
_ORIENTATION = 0x0112  # the EXIF tag
# EXIF orientation -> the Image.transpose method that shows the image upright (ImageOps's)
_TURNS: dict[int, Any] = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}
_PLAIN_FRAMES = (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive Huffman frames
# segments with a length a plain JPEG may hold before its scan: DHT, DAC, DQT, DRI, COM and the
# APPn but Adobe's APP14 (APP1 is looked into for EXIF)
_SKIPPED_SEGMENTS = frozenset({0xC4, 0xCC, 0xDB, 0xDD, 0xFE, *range(0xE0, 0xF0)} - {0xEE})
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_MAX_THREADS = 8
#: Encoded bytes a decoding thread of read_batch gets at least: handing a pool a few small
#: JPEGs (32 of 64x64, 1.6 KiB each) costs more than decoding them on the calling thread.
_BYTES_PER_THREAD = 64 << 10
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pillow() -> Any:
    """Pillow's ``Image`` module, imported on first use (an optional dependency)."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(
            "ImageRecordReader decodes images with Pillow, which is not installed: "
            "pip install sparkbatch[images]"
        ) from e
    return Image


@functools.cache
def _simplejpeg() -> Any:
    """The simplejpeg module where installed, else None (NOTE [plain JPEGs])."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def _pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``threads`` threads (made once; never pickled with a reader)."""
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = ThreadPoolExecutor(threads, "sparkbatch-images")
        return pool


def _jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """``(width, height, components)`` of a plain JPEG (NOTE [plain JPEGs]), or None.

    The markers are read up to the start of the scan, as ``Image.open`` reads them: an EXIF
    segment after the frame header turns the image as one before it does. Anything this does
    not know to be plain (a marker without a length, a second frame header, bytes between
    segments) is None: ``Image.open``'s path decides.
    """
    i, n, frame = 2, len(data), None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # the start of the scan: the header is complete
            return frame
        if marker in _PLAIN_FRAMES:
            if frame is not None or i + 10 > n or data[i + 4] != 8:
                return None
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            layers = data[i + 9]
            if layers not in (1, 3) or not width or not height:
                return None
            frame = (width, height, layers)
        elif marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
            return None  # an orientation, maybe: Image.open's path reads it
        elif marker not in _SKIPPED_SEGMENTS:
            return None  # Adobe (colour transform), other frames, markers without a length
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def _forget_pools() -> None:
    """In a forked child: the parent's pools have no threads here; make new ones on demand."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX: Spark's Python workers are forked
    os.register_at_fork(after_in_child=_forget_pools)


def _default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MAX_THREADS))


def _named_file(error: BaseException, names: list[str]) -> str:
    """The one of ``names`` that ``error``'s message starts with (the last file otherwise)."""
    message = str(error)
    return next((name for name in names if message.startswith(name + ":")), names[-1])


def _check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"ImageRecordReader: {name} must be an int >= 1, got {value!r}")
    return int(value)


class ImageRecordReader(FileRecordReader):
    """Decodes images to ``[channels, height, width]`` uint8 arrays with labels from their paths.

    DataVec's ``ImageRecordReader(height, width, channels, labelGenerator)``. Decoding,
    conversion, resizing and the channel order follow NOTE [image decoding] (RGB, where DataVec
    gives BGR); labels follow NOTE [image labels]. As a record reader it iterates files or
    directories (a directory's files with the extensions of :data:`IMAGE_EXTENSIONS`), one
    record ``[image, label]`` per file; :meth:`read_batch` decodes a whole minibatch into one
    array on a pool of threads (Pillow releases the GIL while it decodes and resizes). It
    pickles (settings and labels only), so it travels to Spark executors inside a
    :class:`~sparkbatch.data.FileBatchLoader`.

    Parameters
    ----------
    height, width : int
        The size every image is resized to.
    channels : {1, 3}
        1 for grey (luma), 3 for RGB.
    label_generator : LabelGenerator, optional
        Gives each file's label from its path (:class:`~sparkbatch.records.
        ParentPathLabelGenerator`, :class:`~sparkbatch.records.PatternPathLabelGenerator` or
        your own); None: records without labels.
    labels : sequence of str, optional
        The class names, in the order of their indices (DataVec's ``setLabels``); inferred by
        :meth:`initialize` when not given.
    fast_jpeg : bool, default True
        Let libjpeg decode JPEGs at a reduced scale when the target is much smaller (NOTE
        [image decoding], step 3).
    threads : int, optional
        Threads of :meth:`read_batch` at most; default the cores this process may use, at most
        8. A batch gets one thread per 64 KiB of encoded images (so 32 small JPEGs decode on the
        calling thread). Where Spark runs one task per core and every task decodes,
        ``threads=1`` avoids oversubscribing the cores.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from sparkbatch.records import ParentPathLabelGenerator
    >>> root = tempfile.mkdtemp()
    >>> for name, colour in [("cat/0.png", "red"), ("dog/1.jpg", "blue"), ("cat/2.gif", "red")]:
    ...     os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
    ...     Image.new("RGB", (40, 30), colour).save(os.path.join(root, name))
    >>> reader = ImageRecordReader(16, 16, 3, ParentPathLabelGenerator()).initialize(root)
    >>> reader.labels
    ['cat', 'dog']
    >>> image, label = next(reader)
    >>> image.shape, image.dtype, image[:, 0, 0].tolist(), label
    ((3, 16, 16), dtype('uint8'), [255, 0, 0], 0)
    >>> [label for _, label in reader]
    [0, 1]
    >>> import shutil; shutil.rmtree(root)
    """

    def __init__(
        self,
        height: int,
        width: int,
        channels: int,
        label_generator: LabelGenerator | None = None,
        labels: Sequence[str] | None = None,
        *,
        fast_jpeg: bool = True,
        threads: int | None = None,
    ) -> None:
        self.height = _check_size("height", height)
        self.width = _check_size("width", width)
        if isinstance(channels, bool) or channels not in (1, 3):
            raise ValueError(
                f"ImageRecordReader: channels must be 1 (grey) or 3 (RGB), got {channels!r}"
            )
        self.channels = int(channels)
        if label_generator is not None and not isinstance(label_generator, LabelGenerator):
            raise TypeError(
                "ImageRecordReader: label_generator must have label_for_path(path) and "
                f"infer_label_classes() (records.LabelGenerator), got "
                f"{type(label_generator).__name__}"
            )
        self.label_generator = label_generator
        self.fast_jpeg = bool(fast_jpeg)
        if threads is not None:
            threads = _check_size("threads", threads)
        self.threads = threads
        self._labels: list[str] | None = None
        self._index: dict[str, int] = {}
        self._labels_inferred = False
        if labels is not None:
            self.set_labels(labels)

    # -- labels ---------------------------------------------------------------------------------

    @property
    def labels(self) -> list[str] | None:
        """The class names, a label being its index here; None until set or inferred."""
        return None if self._labels is None else list(self._labels)

    def set_labels(self, labels: Sequence[str]) -> None:
        """Set the class names, in the order of their indices (DataVec's ``setLabels``); a later
        :meth:`initialize` keeps them."""
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
            raise TypeError(
                f"labels must be a sequence of class names (str), got {type(labels).__name__}"
            )
        names = list(labels)
        for i, name in enumerate(names):
            if not isinstance(name, str):
                raise TypeError(f"labels[{i}] must be a str, got {type(name).__name__}")
        index = {name: i for i, name in enumerate(names)}
        if len(index) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"labels must be distinct; {twice} appear more than once")
        self._labels, self._index, self._labels_inferred = names, index, False

    def initialize(
        self, path_or_paths: PathOrPaths, storage_options: dict[str, Any] | None = None
    ) -> ImageRecordReader:
        """Set the files to read (files, or directories whose image files are listed
        recursively, sorted) and go back to the start; infer the labels unless they were set
        (NOTE [image labels]).

        Returns
        -------
        ImageRecordReader
            This reader.
        """
        single = isinstance(path_or_paths, (str, os.PathLike))
        paths = [path_or_paths] if single else list(path_or_paths)  # type: ignore[arg-type]
        sources: list[str] = []
        options = dict(storage_options) if storage_options else {}
        for path in paths:
            text = os.fspath(path)
            if is_directory(text, storage_options=options):
                found = list_files(text, storage_options=options)
                sources.extend(u for u in found if u.rsplit(".", 1)[-1].lower() in
                               IMAGE_EXTENSIONS and "." in u.rsplit("/", 1)[-1])
            else:
                sources.append(text)
        super().initialize(sources, storage_options)
        generator = self.label_generator
        if generator is not None and generator.infer_label_classes() and (
            self._labels is None or self._labels_inferred
        ):
            names = set()
            for source in self._sources:
                label = generator.label_for_path(source)
                if isinstance(label, str):
                    names.add(label)
            if names:
                self.set_labels(sorted(names))
                self._labels_inferred = True
        return self

    def label(self, uri: str) -> int | np.ndarray | None:
        """The label of the file at ``uri``: its class index, the generator's array, or None
        without a generator (NOTE [image labels])."""
        if self.label_generator is None:
            return None
        label = self.label_generator.label_for_path(uri)
        if isinstance(label, np.ndarray):
            return label
        if not isinstance(label, str):
            raise TypeError(
                f"{uri}: {self.label_generator!r} returned {type(label).__name__}; a label "
                "generator returns a class name (str) or a numpy array"
            )
        if self._labels is None:
            raise ValueError(
                f"{uri}: its label is {label!r} but the reader has no list of labels; pass "
                "labels= (or call set_labels) with the class names, or initialize(paths) to "
                "infer them"
            )
        index = self._index.get(label)
        if index is None:
            shown = self._labels if len(self._labels) <= 20 else self._labels[:20] + ["..."]
            raise ValueError(
                f"{uri}: unknown label {label!r}; expected one of the {len(self._labels)} "
                f"labels {shown}"
            )
        return index

    # -- decoding -------------------------------------------------------------------------------

    def decode(self, data: bytes, uri: str = "the image bytes") -> np.ndarray:
        """One image's bytes as a ``[channels, height, width]`` uint8 array (NOTE [image
        decoding]); ``uri`` names it in errors."""
        out = np.empty((self.channels, self.height, self.width), np.uint8)
        self._decode_into(data, uri, out)
        return out

    def _decode_into(self, data: bytes, where: str, out: np.ndarray) -> None:
        """Decode ``data`` into ``out`` ``[c, h, w]``; a FormatError names ``where``."""
        image_module = _pillow()
        try:
            image = self._plain_jpeg(data, image_module)
            if isinstance(image, np.ndarray):  # decoded at the target size and mode
                pixels = image
            else:
                pixels = self._pillow_pixels(data, image, image_module)
        except image_module.UnidentifiedImageError:
            signature = next((f for m, f in _SIGNATURES if bytes(data[:4]).startswith(m)), None)
            if signature is not None:
                raise FormatError(
                    f"{where}: a truncated or corrupt image (a {signature} header Pillow cannot "
                    "read)"
                ) from None
            raise FormatError(
                f"{where}: not an image sparkbatch reads (expected JPEG, PNG, BMP or GIF; the "
                f"bytes start with {bytes(data[:8])!r})"
            ) from None
        except image_module.DecompressionBombError as e:
            raise FormatError(f"{where}: refused as a decompression bomb ({e})") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as e:
            raise FormatError(
                f"{where}: a truncated or corrupt image ({type(e).__name__}: {e})"
            ) from None
        if self.channels == 3:
            out[...] = pixels.transpose(2, 0, 1)
        else:
            out[0] = pixels

    def _pillow_pixels(self, data: bytes, image: Any, image_module: Any) -> np.ndarray:
        """``data`` decoded by Pillow (``image``: the one-call JPEG path's image, or None to
        open it), converted and resized: ``[h, w, 3]`` or ``[h, w]`` uint8."""
        if image is None:
            image = image_module.open(io.BytesIO(data), formats=_FORMATS)
            orientation = image.getexif().get(_ORIENTATION, 1) if "exif" in image.info else 1
            if self.fast_jpeg and image.format in ("JPEG", "MPO"):  # MPO: its first JPEG
                turned = orientation in (5, 6, 7, 8)  # a quarter turn: draft for the sides
                size = (self.height, self.width) if turned else (self.width, self.height)
                image.draft("RGB" if self.channels == 3 else "L", size)
            image.seek(0)  # a GIF's first frame
            if orientation in _TURNS:
                image = image.transpose(_TURNS[orientation])
        image = self._convert(image, image_module)
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), image_module.Resampling.BILINEAR)
        return np.asarray(image)

    def _plain_jpeg(self, data: bytes, image_module: Any) -> Any:
        """A plain 8-bit grey or colour JPEG decoded in one call: by simplejpeg where installed
        (an array, when it has the target size and mode; else an image), else by Pillow's JPEG
        decoder (an image); None for anything else (NOTE [plain JPEGs])."""
        if not data.startswith(b"\xff\xd8\xff"):
            return None
        frame = _jpeg_frame(data)
        if frame is None:
            return None
        width, height, layers = frame
        limit = image_module.MAX_IMAGE_PIXELS  # None where the user turned the check off
        if limit is not None and width * height > limit:  # Pillow's own path warns or refuses
            return None
        mode = "L" if layers == 1 else "RGB"
        scale = 1
        if self.fast_jpeg:  # as Image.draft: libjpeg's luma for grey, DCT scaling
            if self.channels == 1:
                mode = "L"
            reduction = min(width // self.width, height // self.height)
            scale = next((s for s in (8, 4, 2) if reduction >= s), 1)  # 1 when enlarging
        size = ((width + scale - 1) // scale, (height + scale - 1) // scale)
        decoder = _simplejpeg()
        if decoder is not None:
            pixels = self._simplejpeg_pixels(decoder, data, mode, size)
            if pixels is not None:
                target = "RGB" if self.channels == 3 else "L"
                if size == (self.width, self.height) and mode == target:
                    return pixels
                return image_module.fromarray(pixels, mode)
        try:  # the decoder's arguments (rawmode, jpegmode, scale, draft) are Pillow's own, not
            # its public API: a Pillow that changed them gives TypeError, and Image.open's path
            return image_module.frombytes(mode, size, data, "jpeg", mode, "", scale, 0)
        except (ValueError, OSError, TypeError):  # truncated or corrupt: Pillow's path names it
            return None

    @staticmethod
    def _simplejpeg_pixels(
        decoder: Any, data: bytes, mode: str, size: tuple[int, int]
    ) -> np.ndarray | None:
        """``data`` decoded by simplejpeg at ``size`` (its DCT scale) in ``mode``: ``[h, w, 3]``
        or ``[h, w]`` uint8; None where it refuses the bytes or picks another scale."""
        try:
            pixels = decoder.decode_jpeg(
                data,
                colorspace="GRAY" if mode == "L" else "RGB",
                fastdct=False,
                fastupsample=False,
                min_height=size[1],
                min_width=size[0],
            )
        except (ValueError, OSError, TypeError):  # corrupt, truncated: Pillow's path names it
            return None
        if pixels.shape[:2] != (size[1], size[0]):  # a finer factor than 1/2, 1/4, 1/8
            return None
        return pixels[:, :, 0] if mode == "L" else pixels

    def _convert(self, image: Any, image_module: Any) -> Any:
        """``image`` in mode "RGB" or "L" (NOTE [image decoding], step 4)."""
        target = "RGB" if self.channels == 3 else "L"
        if image.mode == target:
            return image
        if image.mode in _SIXTEEN_BIT:  # keep the high byte (Pillow's convert clips)
            wide = np.asarray(image).astype(np.int64)
            grey = image_module.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L")
            return grey if target == "L" else grey.convert("RGB")
        # the alpha channel is dropped; palette transparency too (Pillow warns converting a
        # palette image with transparency bytes straight to RGB)
        image.info.pop("transparency", None)
        if image.mode in ("LA", "La", "PA"):
            image = image.convert("L" if image.mode != "PA" else "RGBA")
        return image.convert(target)

    def read(
        self, data_or_path: bytes | str | os.PathLike[str], uri: str | None = None
    ) -> Record:
        """One image's record, ``[image, label]`` (``[image]`` without a label generator), from
        its bytes or its path or URL (read with :func:`sparkbatch.storage.read_bytes`, with
        this reader's storage options); ``uri`` is the path the label comes from (default the
        path given)."""
        if isinstance(data_or_path, (bytes, bytearray, memoryview)):
            data, where = bytes(data_or_path), uri
        else:
            where = os.fspath(data_or_path)
            data = read_bytes(where, storage_options=self._storage_options)
            where = uri or where
        if where is None and self.label_generator is not None:
            raise ValueError("read(bytes) of a reader with a label generator needs uri=")
        return self.parse(data, where or "the image bytes")[0]

    def parse(self, data: bytes, source: str) -> list[Record]:
        """The one record of an image file: ``[image, label]`` (``[image]`` without a label
        generator)."""
        image = self.decode(data, source)
        label = self.label(source)
        return [[image] if self.label_generator is None else [image, label]]

    def read_batch(
        self, files: Sequence[bytes], uris: Sequence[str], archive: str | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A minibatch of image files decoded into one ``[n, channels, height, width]`` uint8
        array, on :attr:`threads` threads, and their labels.

        Parameters
        ----------
        files : sequence of bytes
            The encoded images.
        uris : sequence of str
            Their paths or URLs (for the label generator and errors), one per file.
        archive : str, optional
            The FileBatch archive the files came from: errors then name it and the entry.

        Returns
        -------
        images : ndarray
            uint8 ``[n, channels, height, width]``.
        labels : ndarray or None
            int64 class indices ``[n]``, or the generator's arrays stacked ``[n, ...]`` (at
            least 2-D: a scalar array gives ``[n, 1]``), or None without a label generator.

        Raises
        ------
        FormatError
            A file is not an image sparkbatch reads, or is truncated or corrupt (the first such
            file in order is named).
        ValueError
            A label is not in :attr:`labels`, or there is no list (NOTE [image labels]).
        """
        if len(files) != len(uris):
            raise ValueError(f"read_batch needs one URI per file: got {len(files)} and {len(uris)}")
        n = len(files)
        names = [self._where(i, uri, archive) for i, uri in enumerate(uris)]
        labels = self._batch_labels(uris, names)
        images = np.empty((n, self.channels, self.height, self.width), np.uint8)
        by_size = sum(len(f) for f in files) // _BYTES_PER_THREAD
        threads = min(self.threads or _default_threads(), n, max(1, by_size))
        if threads <= 1:
            for i in range(n):
                self._decode_into(files[i], names[i], images[i])
        else:  # one task per thread, files interleaved (a task per file costs more)

            def part(first: int) -> None:
                for i in range(first, n, threads):
                    self._decode_into(files[i], names[i], images[i])

            tasks = [_pool(threads).submit(part, k) for k in range(threads)]
            errors = [t.exception() for t in tasks]  # waits for every task
            failed = [e for e in errors if e is not None]
            if failed:  # the error of the first file in order that failed
                first = min(failed, key=lambda e: names.index(_named_file(e, names)))
                raise first
        return images, labels

    @staticmethod
    def _where(index: int, uri: str, archive: str | None) -> str:
        return uri if archive is None else f"{archive}, entry {entry_name(index, uri)} ({uri})"

    def _batch_labels(self, uris: Sequence[str], names: list[str]) -> np.ndarray | None:
        if self.label_generator is None:
            return None
        found: list[int | np.ndarray] = []
        for uri, name in zip(uris, names, strict=True):
            try:
                found.append(self.label(uri))  # type: ignore[arg-type]
            except (ValueError, TypeError) as e:  # named as the decoding errors are
                message = str(e)
                if message.startswith(uri + ":"):
                    if name == uri:
                        raise
                    message = name + message[len(uri) :]
                else:
                    message = f"{name}: {message}"
                raise type(e)(message) from e
        if not found:
            return np.zeros(0, np.int64)
        arrays = [isinstance(label, np.ndarray) for label in found]
        if all(arrays):
            shapes = {label.shape for label in found}  # type: ignore[union-attr]
            if len(shapes) != 1:
                first = next(i for i, a in enumerate(found) if a.shape != found[0].shape)  # type: ignore[union-attr]
                raise ValueError(
                    f"{names[first]}: its label array has shape {found[first].shape}, the first "  # type: ignore[union-attr]
                    f"file's {found[0].shape}; label arrays of one minibatch must be one shape"  # type: ignore[union-attr]
                )
            return np.stack([np.atleast_1d(a) for a in found])  # [n, ...]: at least 2-D
        if any(arrays):
            first = arrays.index(not arrays[0])
            raise ValueError(
                f"{names[first]}: the label generator gave class names for some files and "
                "arrays for others; it must give one kind"
            )
        return np.asarray(found, np.int64)

    # -- the rest ------------------------------------------------------------------------------

    def _config(self) -> tuple[Any, ...]:
        return (
            self.height, self.width, self.channels, self.label_generator, self._labels,
            self.fast_jpeg, self.threads,
        )

    def __getstate__(self) -> dict[str, Any]:
        """Settings and labels only: the files :meth:`initialize` listed stay behind (the reader
        travels to every Spark task inside a loader, and may have listed a million images);
        an unpickled reader is initialized again to iterate files."""
        state = self.__dict__.copy()
        for name in ("_sources", "_initialized", "_file_index", "_records", "_lines"):
            state.pop(name, None)
        for name in ("_position", "_resume", "current_source", "current_line"):
            state.pop(name, None)
        return state

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, ImageRecordReader)
        return bool(self._config() == other._config())

    def __hash__(self) -> int:
        return hash((type(self), self.height, self.width, self.channels))

    def __repr__(self) -> str:
        parts = [f"height={self.height}", f"width={self.width}", f"channels={self.channels}"]
        if self.label_generator is not None:
            parts.append(f"label_generator={self.label_generator!r}")
        if self._labels is not None:
            shown = self._labels if len(self._labels) <= 10 else self._labels[:10] + ["..."]
            parts.append(f"labels={shown!r}")
        if not self.fast_jpeg:
            parts.append("fast_jpeg=False")
        if self.threads is not None:
            parts.append(f"threads={self.threads}")
        return f"ImageRecordReader({', '.join(parts)})"
