"""ImageRecordReader, ImageScaler and FileBatchLoader on real image files written by Pillow."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

from sparkbatch import FormatError
from sparkbatch.data import (
    DataSet,
    FileBatchLoader,
    FileDataSetIterator,
    ImageScaler,
    MinMaxScale,
    MultiDataSet,
    Source,
)
from sparkbatch.records import (
    IMAGE_EXTENSIONS,
    ImageRecordReader,
    ParentPathLabelGenerator,
    PatternPathLabelGenerator,
    RecordReader,
)
from sparkbatch.spark import create_file_batches_local
from sparkbatch.storage import FileBatch

Image = pytest.importorskip("PIL.Image")

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def encode(image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def solid(colour, size=(12, 10), mode="RGB") -> object:
    return Image.new(mode, size, colour)


def gradient(height=24, width=32) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)


def write(root, name: str, data: bytes) -> str:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def class_dirs(tmp_path):
    """Six small images in class directories, one per format (two JPEGs)."""
    files = {
        "cat/a.png": encode(solid(RED), "PNG"),
        "cat/b.jpg": encode(solid(RED), "JPEG", quality=95),
        "cat/c.bmp": encode(solid(RED), "BMP"),
        "dog/d.gif": encode(solid(BLUE).quantize(4), "GIF"),
        "dog/e.jpeg": encode(solid(BLUE), "JPEG", quality=95),
        "bird/f.png": encode(solid(GREEN), "PNG"),
        "bird/notes.txt": b"not an image",
    }
    for name, data in files.items():
        write(tmp_path / "images", name, data)
    return tmp_path / "images"


# -- decoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF"])
def test_formats_colour_and_channel_order(fmt):
    image = solid(RED).quantize(4) if fmt == "GIF" else solid(RED)
    data = encode(image, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    out = ImageRecordReader(5, 7, 3).decode(data, "red." + fmt.lower())
    assert out.shape == (3, 5, 7) and out.dtype == np.uint8
    np.testing.assert_allclose(out[:, 2, 3], RED, atol=2)  # channel 0 is red: RGB, not BGR
    grey = ImageRecordReader(5, 7, 1).decode(data)
    assert grey.shape == (1, 5, 7)
    assert abs(int(grey[0, 2, 3]) - 76) <= 2  # luma of pure red: 255 * 299 / 1000


def test_resize_matches_pillow_bilinear_and_keeps_exact_sizes():
    pixels = gradient().astype(np.uint8)
    data = encode(Image.fromarray(pixels), "PNG")
    same = ImageRecordReader(24, 32, 3).decode(data)
    np.testing.assert_array_equal(same, pixels.transpose(2, 0, 1))  # no resampling at size
    small = ImageRecordReader(6, 8, 3).decode(data)
    expected = np.asarray(Image.fromarray(pixels).resize((8, 6), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(small, expected.transpose(2, 0, 1))


def test_jpeg_draft_is_close_to_the_full_decode():
    data = encode(Image.fromarray(gradient(256, 256).astype(np.uint8)), "JPEG", quality=90)
    fast = ImageRecordReader(32, 32, 3).decode(data).astype(int)
    full = ImageRecordReader(32, 32, 3, fast_jpeg=False).decode(data).astype(int)
    assert 0 < np.abs(fast - full).mean() < 3


def pillow_reference(data: bytes, height: int, width: int, channels: int, draft: bool):
    """What Image.open, draft, convert and resize give: the reader's JPEG path must match it."""
    mode = "RGB" if channels == 3 else "L"
    image = Image.open(io.BytesIO(data))
    if draft:
        image.draft(mode, (width, height))
    image = image.convert(mode)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image)
    return pixels.transpose(2, 0, 1) if channels == 3 else pixels[None]


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
@pytest.mark.parametrize("kind", ["420", "444", "progressive", "grey"])
def test_plain_jpegs_decode_as_pillow_opens_them(kind, decoder, monkeypatch):
    from sparkbatch.records import images
    from sparkbatch.records.images import _jpeg_frame

    if decoder == "simplejpeg":
        pytest.importorskip("simplejpeg")
        assert images._simplejpeg() is not None
    else:  # the path where simplejpeg is not installed
        monkeypatch.setattr(images, "_simplejpeg", lambda: None)

    rgb = Image.fromarray(gradient(100, 120).astype(np.uint8))
    image = rgb.convert("L") if kind == "grey" else rgb
    options = {"444": {"subsampling": 0}, "progressive": {"progressive": True}}.get(kind, {})
    data = encode(image, "JPEG", quality=85, **options)
    assert _jpeg_frame(data) == (120, 100, 1 if kind == "grey" else 3)  # the one-call path
    for height, width in [(100, 120), (48, 60), (12, 14), (30, 70), (130, 90)]:  # and enlarged
        for channels in (1, 3):
            for draft in (True, False):
                got = ImageRecordReader(height, width, channels, fast_jpeg=draft).decode(data)
                expected = pillow_reference(data, height, width, channels, draft)
                np.testing.assert_array_equal(got, expected, err_msg=f"{height, width, draft}")
    cmyk = encode(Image.new("CMYK", (8, 8)), "JPEG")
    assert _jpeg_frame(cmyk) is None  # Adobe marker, 4 components: Image.open's path


def test_plain_jpegs_fall_back_where_pillow_changed_its_decoder_arguments(monkeypatch):
    from sparkbatch.records import images

    monkeypatch.setattr(images, "_simplejpeg", lambda: None)  # Pillow's one-call path
    data = encode(Image.fromarray(gradient(64, 64).astype(np.uint8)), "JPEG")
    expected = ImageRecordReader(16, 16, 3).decode(data)

    def changed(mode, size, data, decoder_name="raw", *args):  # a Pillow with other arguments
        if decoder_name == "jpeg":
            raise TypeError("function takes at most 3 arguments (5 given)")
        return frombytes(mode, size, data, decoder_name, *args)

    frombytes = Image.frombytes
    monkeypatch.setattr(Image, "frombytes", changed)
    np.testing.assert_array_equal(ImageRecordReader(16, 16, 3).decode(data), expected)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_applied(orientation):
    from PIL import ImageOps

    from sparkbatch.records.images import _jpeg_frame

    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :16] = RED  # left half red, right half blue, as stored
    pixels[:, 16:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())
    assert _jpeg_frame(data) is None  # an EXIF marker: Image.open's path
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    width, height = upright.size
    got = ImageRecordReader(height // 2, width // 2, 3, fast_jpeg=False).decode(data)
    expected = upright.resize((width // 2, height // 2), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(got, np.asarray(expected).transpose(2, 0, 1))
    drafted = ImageRecordReader(height // 2, width // 2, 3).decode(data)  # half scale
    corners = {1: (RED, BLUE), 3: (BLUE, RED), 6: (RED, BLUE), 8: (BLUE, RED)}[orientation]
    np.testing.assert_allclose(drafted[:, 1, 1], corners[0], atol=6)  # top left
    np.testing.assert_allclose(drafted[:, -2, -2], corners[1], atol=6)  # bottom right
    assert drafted.shape[1:] == ((16, 8) if orientation in (6, 8) else (8, 16))


def jpeg_segments(data: bytes) -> list[bytes]:
    """A JPEG's marker segments from SOI to the scan (the last item: the scan and the rest)."""
    i, segments = 2, [data[:2]]
    while data[i + 1] != 0xDA:
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        segments.append(data[i:end])
        i = end
    return segments + [data[i:]]


def test_exif_after_the_frame_header_is_applied_and_mpo_is_drafted():
    from sparkbatch.records.images import _jpeg_frame

    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :16] = RED
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())
    parts = jpeg_segments(data)
    app1 = next(p for p in parts if p[1] == 0xE1)
    parts.remove(app1)
    sof = next(i for i, p in enumerate(parts) if p[1] == 0xC0)
    moved = b"".join(parts[: sof + 1] + [app1] + parts[sof + 1 :])  # EXIF after SOF0: legal
    assert _jpeg_frame(moved) is None  # Image.open's path, which turns it
    reader = ImageRecordReader(32, 16, 3)
    np.testing.assert_array_equal(reader.decode(moved), reader.decode(data))
    dht_first = b"".join([parts[0]] + [p for p in parts[1:-1] if p[1] == 0xC4]
                         + [p for p in parts[1:-1] if p[1] != 0xC4] + parts[-1:])
    assert _jpeg_frame(dht_first) == (32, 16, 3)  # tables before the frame: still plain
    assert _jpeg_frame(b"\xff\xd8\xff\x01" + data[2:]) is None  # a marker without a length
    out = io.BytesIO()  # a multi-picture JPEG with EXIF (phones): drafted as a JPEG is
    rgb = Image.fromarray(gradient(128, 160).astype(np.uint8))
    exif[0x0112] = 1
    rgb.save(out, "MPO", save_all=True, append_images=[rgb.rotate(90)], exif=exif.tobytes())
    assert Image.open(io.BytesIO(out.getvalue())).format == "MPO"
    got = ImageRecordReader(32, 40, 3).decode(out.getvalue())
    np.testing.assert_array_equal(got, pillow_reference(out.getvalue(), 32, 40, 3, True))


def test_gif_first_frame():
    frames = [solid(RED).quantize(4), solid(BLUE).quantize(4)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(ImageRecordReader(4, 4, 3).decode(out.getvalue())[:, 0, 0], RED)


def test_alpha_palette_bit_and_sixteen_bit_conversions():
    rgba = encode(Image.new("RGBA", (4, 4), (10, 20, 30, 0)), "PNG")
    np.testing.assert_array_equal(ImageRecordReader(4, 4, 3).decode(rgba)[:, 0, 0], [10, 20, 30])
    palette = solid(GREEN).quantize(4)
    palette.info["transparency"] = 0  # a palette PNG with transparency: no warning, alpha dropped
    got = ImageRecordReader(4, 4, 3).decode(encode(palette, "PNG"))
    np.testing.assert_array_equal(got[:, 0, 0], GREEN)
    la = encode(Image.new("LA", (4, 4), (200, 0)), "PNG")
    assert ImageRecordReader(4, 4, 1).decode(la)[0, 0, 0] == 200
    bits = encode(Image.new("1", (4, 4), 1), "PNG")
    np.testing.assert_array_equal(ImageRecordReader(4, 4, 3).decode(bits)[:, 0, 0], [255] * 3)
    wide = Image.fromarray(np.array([[0, 256, 40000, 65535]], np.uint16))
    assert wide.mode.startswith("I;16")
    got = ImageRecordReader(1, 4, 1).decode(encode(wide, "PNG"))
    np.testing.assert_array_equal(got[0, 0], [0, 1, 156, 255])  # the high byte, not clipped
    cmyk = encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG", quality=95)
    np.testing.assert_allclose(ImageRecordReader(4, 4, 3).decode(cmyk)[:, 0, 0], RED, atol=3)


def test_bad_bytes_are_format_errors_naming_the_file():
    reader = ImageRecordReader(4, 4, 3)
    with pytest.raises(FormatError, match=r"notes\.txt: not an image .*JPEG, PNG, BMP or GIF"):
        reader.decode(b"hello, world", "s3://b/notes.txt")
    tiff = encode(solid(RED), "TIFF")
    with pytest.raises(FormatError, match="x.tif: not an image"):
        reader.decode(tiff, "x.tif")
    jpeg = encode(Image.fromarray(gradient(64, 64).astype(np.uint8)), "JPEG")
    with pytest.raises(FormatError, match="cut.jpg: a truncated or corrupt image"):
        reader.decode(jpeg[: len(jpeg) // 2], "cut.jpg")
    png = encode(solid(RED), "PNG")
    with pytest.raises(FormatError, match="cut.png: a truncated or corrupt image"):
        reader.decode(png[:40], "cut.png")


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="channels must be 1"):
        ImageRecordReader(4, 4, 4)
    with pytest.raises(ValueError, match="height must be an int >= 1"):
        ImageRecordReader(0, 4, 3)
    with pytest.raises(TypeError, match="label_generator must have"):
        ImageRecordReader(4, 4, 3, "cat")
    with pytest.raises(ValueError, match="distinct"):
        ImageRecordReader(4, 4, 3, labels=["a", "b", "a"])


# -- labels and the record reader protocol --------------------------------------------------------


def test_labels_inferred_sorted_and_records(class_dirs):
    reader = ImageRecordReader(4, 4, 3, ParentPathLabelGenerator()).initialize(str(class_dirs))
    assert isinstance(reader, RecordReader)
    assert reader.labels == ["bird", "cat", "dog"]
    assert all(s.rsplit(".", 1)[1] in IMAGE_EXTENSIONS for s in reader.sources)  # notes.txt out
    records = list(reader)
    assert [label for _, label in records] == [0, 1, 1, 1, 2, 2]
    np.testing.assert_allclose(records[0][0][:, 0, 0], GREEN, atol=2)
    np.testing.assert_allclose(records[-1][0][:, 0, 0], BLUE, atol=3)
    assert reader.current_source.endswith("dog/e.jpeg")
    copy = pickle.loads(pickle.dumps(reader))
    assert copy == reader and copy.labels == reader.labels
    assert copy.sources == []  # the listed files stay behind
    with pytest.raises(RuntimeError, match="call initialize"):
        copy.has_next()
    copy.initialize(str(class_dirs))
    assert [label for _, label in copy] == [0, 1, 1, 1, 2, 2]
    reader.reset()
    assert reader.has_next() and reader.next()[1] == 0


def test_labels_set_are_kept_and_unknown_or_missing_labels_fail(class_dirs):
    reader = ImageRecordReader(4, 4, 3, ParentPathLabelGenerator(), labels=["dog", "cat"])
    reader.initialize(str(class_dirs / "cat"))
    assert reader.labels == ["dog", "cat"] and next(reader)[1] == 1
    reader.set_labels(["cat", "dog"])
    with pytest.raises(ValueError, match=r"bird/f\.png: unknown label 'bird'; expected one of"):
        list(reader.initialize(str(class_dirs)))
    path = next(p for p in reader.sources if p.endswith("a.png"))
    assert reader.read(path)[1] == 0
    with pytest.raises(ValueError, match=r"^flat\.png: ParentPathLabelGenerator: 'flat\.png' has"):
        reader.read_batch([encode(solid(RED), "PNG")], ["flat.png"])
    unset = ImageRecordReader(4, 4, 3, ParentPathLabelGenerator())
    with pytest.raises(ValueError, match="no list of labels; pass labels="):
        unset.read_batch([encode(solid(RED), "PNG")], ["x/cat/0.png"])


def test_pattern_labels_and_no_generator():
    reader = ImageRecordReader(4, 4, 3, PatternPathLabelGenerator("_", 0), labels=["cat", "dog"])
    data = [encode(solid(RED), "PNG"), encode(solid(BLUE), "BMP")]
    images, labels = reader.read_batch(data, ["s3://b/dog_1.png", "s3://b/cat_7.bmp"])
    assert images.shape == (2, 3, 4, 4) and labels.tolist() == [1, 0]
    assert labels.dtype == np.int64
    plain = ImageRecordReader(4, 4, 3)
    assert plain.read_batch(data, ["a.png", "b.bmp"])[1] is None
    assert len(plain.read(data[0])) == 1  # [image] without a generator
    image, label = reader.read(data[1], "x/dog_3.bmp")
    assert label == 1 and image[2, 0, 0] == 255
    with pytest.raises(ValueError, match="needs uri="):
        reader.read(data[1])


class MaskGenerator:
    """Segmentation-style labels: a mask per file, from the digit in its name."""

    def label_for_path(self, path: str) -> np.ndarray:
        return np.full((2, 2), int(path[-5]), np.uint8)

    def infer_label_classes(self) -> bool:
        return False


def test_array_labels_are_stacked():
    reader = ImageRecordReader(4, 4, 3, MaskGenerator())
    data = [encode(solid(RED), "PNG")] * 2
    _, labels = reader.read_batch(data, ["a3.png", "a7.png"])
    assert labels.shape == (2, 2, 2) and labels[:, 0, 0].tolist() == [3, 7]
    image, label = reader.parse(data[0], "z5.png")[0]
    assert label.tolist() == [[5, 5], [5, 5]]


# -- the scaler -----------------------------------------------------------------------------------


def test_image_scaler_values_revert_and_pickling():
    pixels = np.array([[0, 51, 128, 255]], np.uint8)
    np.testing.assert_array_equal(ImageScaler().transform(pixels), pixels / np.float32(255))
    np.testing.assert_allclose(ImageScaler(-1, 1).transform(pixels), [[-1, -0.6, 0.003922, 1]],
                               atol=1e-6)
    assert ImageScaler(max_bits=16).transform(np.array([[65535]], np.uint16))[0, 0] == 1.0
    assert ImageScaler().transform(pixels.astype(np.float64)).dtype == np.float64
    scaler = ImageScaler(-0.5, 2)
    np.testing.assert_allclose(scaler.revert(scaler.transform(pixels)), pixels, atol=1e-4)
    assert pickle.loads(pickle.dumps(scaler)) == scaler and scaler != ImageScaler()
    ds = scaler(DataSet(pixels.astype(np.float32).reshape(1, 1, 2, 2), np.ones((1, 1), np.float32)))
    assert ds.features.dtype == np.float32 and ds.labels.tolist() == [[1.0]]
    multi = scaler(MultiDataSet([np.full((1, 2), 255, np.float32)], [np.ones((1, 1), np.float32)]))
    assert multi.features[0].tolist() == [[2.0, 2.0]]
    with pytest.raises(ValueError, match="min < max"):
        ImageScaler(1, 1)


# -- the loader -----------------------------------------------------------------------------------


def archives(class_dirs, tmp_path, batch_size=4):
    return create_file_batches_local(
        str(class_dirs), str(tmp_path / "batches"), batch_size, extensions=IMAGE_EXTENSIONS, seed=3,
        progress=False,
    )


class InvertingScaler(ImageScaler):
    """An ImageScaler with more to do than scaling: the loader must call it, not fuse it."""

    def __call__(self, ds):
        scaled = super().__call__(ds)
        return DataSet(1 - scaled.features, scaled.labels)


def test_loader_over_archives_made_by_create_file_batches_local(class_dirs, tmp_path):
    urls = archives(class_dirs, tmp_path)
    reader = ImageRecordReader(6, 6, 3, ParentPathLabelGenerator(), labels=["bird", "cat", "dog"])
    loader = FileBatchLoader(reader, 4, 1, 3, preprocessor=ImageScaler())
    loaded = [loader.load(Source(url)) for url in urls]
    assert [ds.num_examples for ds in loaded] == [4, 2]
    ds = DataSet.merge(loaded)
    assert ds.features.shape == (6, 3, 6, 6) and ds.features.dtype == np.float32
    assert ds.labels.dtype == np.float32 and ds.labels.sum(axis=1).tolist() == [1.0] * 6
    colours = {0: GREEN, 1: RED, 2: BLUE}  # each example's colour is its class's
    for features, label in zip(ds.features, ds.labels.argmax(1), strict=True):
        np.testing.assert_allclose(features[:, 3, 3] * 255, colours[int(label)], atol=3)
    plain = FileBatchLoader(reader, 4, 1, 3).load(Source(urls[0]))
    fused = loaded[0]
    np.testing.assert_array_equal(ImageScaler()(plain).features, fused.features)  # bit for bit
    shifted = ImageScaler(-1, 1)
    np.testing.assert_array_equal(
        FileBatchLoader(reader, 4, 1, 3, preprocessor=shifted).load(Source(urls[0])).features,
        shifted(plain).features,
    )
    inverted = FileBatchLoader(reader, 4, 1, 3, preprocessor=InvertingScaler())  # own __call__
    np.testing.assert_array_equal(inverted.load(Source(urls[0])).features, 1 - fused.features)
    copy = pickle.loads(pickle.dumps(loader))
    assert copy == loader and repr(copy) == repr(loader)
    np.testing.assert_array_equal(copy.load(Source(urls[1])).features, loaded[1].features)
    iterated = list(FileDataSetIterator(str(tmp_path / "batches"), loader=loader))
    assert [d.num_examples for d in iterated] == [4, 2]
    np.testing.assert_array_equal(iterated[1].labels, loaded[1].labels)


def test_loader_other_preprocessors_features_only_and_array_labels(class_dirs, tmp_path):
    urls = archives(class_dirs, tmp_path, batch_size=6)
    reader = ImageRecordReader(4, 4, 1, ParentPathLabelGenerator(), labels=["bird", "cat", "dog"])
    scale = MinMaxScale().fit(DataSet(np.array([[0.0], [255.0]], np.float32).reshape(2, 1, 1, 1)))
    ds = FileBatchLoader(reader, 6, 1, 3, preprocessor=scale).load(Source(urls[0]))
    assert ds.features.shape == (6, 1, 4, 4) and 0 <= ds.features.min() <= ds.features.max() <= 1
    assert FileBatchLoader(reader, 6, None).load(Source(urls[0])).labels is None
    unlabelled = ImageRecordReader(4, 4, 1, ParentPathLabelGenerator())  # no labels to index
    features = FileBatchLoader(unlabelled, 6, None).load(Source(urls[0]))  # none are made
    assert features.labels is None and features.features.shape == (6, 1, 4, 4)
    masks = ImageRecordReader(4, 4, 1, PatternPathLabelGenerator("_", 0))
    data = [encode(solid(RED), "PNG"), encode(solid(BLUE), "PNG")]
    FileBatch(data, ["m/x_1.png", "m/x_2.png"]).write_zip(str(tmp_path / "masks.zip"))
    with pytest.raises(ValueError, match="no list of labels"):
        FileBatchLoader(masks, 2, 1, 2).load(Source(str(tmp_path / "masks.zip")))
    arrays = FileBatchLoader(ImageRecordReader(4, 4, 1, MaskGenerator()), 2)
    labels = arrays.load(Source(str(tmp_path / "masks.zip"))).labels
    assert labels.dtype == np.float32 and labels[:, 0, 0].tolist() == [1.0, 2.0]


def test_loader_errors_name_the_archive_and_entry(tmp_path):
    reader = ImageRecordReader(4, 4, 3, ParentPathLabelGenerator(), labels=["cat", "dog"])
    good = encode(solid(RED), "PNG")
    path = str(tmp_path / "bad.zip")
    broken = b"\xff\xd8\xff\xe0 not a jpeg"
    FileBatch([good, broken], ["i/cat/0.png", "i/dog/1.jpg"]).write_zip(path)
    with pytest.raises(FormatError, match=r"bad\.zip, entry file_1\.jpg \(i/dog/1\.jpg\): "):
        FileBatchLoader(reader, 2, 1, 2).load(Source(path))
    FileBatch([good], ["i/cow/0.png"]).write_zip(str(tmp_path / "cow.zip"))
    with pytest.raises(ValueError, match=r"cow\.zip, entry file_0\.png \(i/cow/0\.png\): unknown"):
        FileBatchLoader(reader, 2, 1, 2).load(Source(str(tmp_path / "cow.zip")))
    FileBatch([good] * 3, ["i/cat/0.png"] * 3).write_zip(str(tmp_path / "three.zip"))
    more = FileBatchLoader(reader, 2, 1, 2).load(Source(str(tmp_path / "three.zip")))
    assert more.num_examples == 3  # every file, where DL4J would drop the third
    with pytest.raises(ValueError, match="no num_classes"):
        FileBatchLoader(reader, 3).load(Source(str(tmp_path / "three.zip")))
    with pytest.raises(ValueError, match="num_classes=1 but the reader has 2 labels"):
        FileBatchLoader(reader, 2, 1, 1)
    with pytest.raises(ValueError, match="label_index must be 1"):
        FileBatchLoader(reader, 2, 0, 2)
    with pytest.raises(TypeError, match="read_batch"):
        FileBatchLoader(object(), 2)
    (tmp_path / "text.zip").write_bytes(b"plain text")
    with pytest.raises(FormatError, match="text.zip: not a zip archive"):
        FileBatchLoader(reader, 2, 1, 2).load(Source(str(tmp_path / "text.zip")))
    loader = FileBatchLoader(reader, 2, 1, 2)
    reader.set_labels(["ant", "bee", "cat", "dog"])  # after the loader checked num_classes
    with pytest.raises(ValueError, match=r"three\.zip, entry file_0\.png \(i/cat/0\.png\): "
                       r"label index 2 is outside num_classes=2"):
        loader.load(Source(str(tmp_path / "three.zip")))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_read_batch_in_a_forked_child_after_the_parent_used_its_pool(monkeypatch):
    import os
    import signal
    import warnings

    from sparkbatch.records import images

    monkeypatch.setattr(images, "_BYTES_PER_THREAD", 1)  # tiny images on the pool too
    reader = ImageRecordReader(4, 4, 3, threads=2)
    data = [encode(solid(RED), "PNG")] * 4
    assert reader.read_batch(data, ["a.png"] * 4)[0].shape == (4, 3, 4, 4)  # the pool exists
    read, write_end = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns of fork() with threads running
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: the parent's pool threads do not exist here
        ok = False
        try:
            signal.alarm(20)  # a pool waiting for threads that do not exist: killed, not hung
            ok = reader.read_batch(data, ["a.png"] * 4)[0][:, 0, 0, 0].tolist() == [255] * 4
        finally:
            os.write(write_end, b"1" if ok else b"0")
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1" and status == 0


def test_read_batch_threads_by_size_and_the_first_bad_file_named(monkeypatch):
    from sparkbatch.records import images

    good, bad = encode(solid(RED), "PNG"), b"\x89PNG broken"
    data, uris = [good, good, bad, good, bad], [f"{i}.png" for i in range(5)]
    used: list[int] = []
    pool = images._pool
    monkeypatch.setattr(images, "_pool", lambda threads: used.append(threads) or pool(threads))
    reader = ImageRecordReader(4, 4, 3, threads=2)
    with pytest.raises(FormatError, match="^2.png: "):
        reader.read_batch(data, uris)
    assert used == []  # a few hundred bytes: decoded on the calling thread
    monkeypatch.setattr(images, "_BYTES_PER_THREAD", 1)
    with pytest.raises(FormatError, match="^2.png: "):  # the first in order, whichever thread
        reader.read_batch(data, uris)
    assert set(used) == {2}  # the pool, for each of its tasks



def test_decompression_bombs_are_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for fmt in ("JPEG", "PNG"):
        data = encode(solid(RED, (20, 20)), fmt)  # 400 pixels, over twice the limit
        with pytest.raises(FormatError, match="bomb.x: refused as a decompression bomb"):
            ImageRecordReader(4, 4, 3).decode(data, "bomb.x")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # over the limit, not twice: a warning
    with pytest.warns(Image.DecompressionBombWarning):
        assert ImageRecordReader(4, 4, 3).decode(encode(solid(RED, (20, 20)), "JPEG")).shape[0] == 3
