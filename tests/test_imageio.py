"""Image and label-map decoding: real codecs, clear FrameErrors on anything broken."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from bev_service.errors import FrameError
from bev_service.imageio import (
    PNG_MAGIC,
    ImageHeader,
    decode_image,
    decode_labels,
    encode_png,
    probe_image,
    probe_labels,
    read_image,
    read_labels,
    write_png,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(23, 37, 3), dtype=np.uint8)  # odd sizes
LABELS = RNG.integers(0, 8, size=(23, 37), dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    return encode_png(array)


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return buf.tobytes()


def _pil_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _ihdr(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))


def _header_only_png(width: int, height: int) -> bytes:
    """A few dozen bytes of PNG whose header declares width x height RGB pixels."""
    return PNG_MAGIC + _ihdr(width, height) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


OTHER_FORMATS = {"GIF": "GIF", "WEBP": "WebP", "TIFF": "TIFF", "BMP": "BMP"}  # Pillow's name -> the one in errors
_WHOLE = _png(RGB)
GARBAGE = {
    "random-bytes": RNG.bytes(500),
    "text": b"GIF? no: plain text, not an image at all\n" * 3,
    "png-signature-only": PNG_MAGIC,
    "truncated-png-header": _WHOLE[:20],
    "ihdr-bad-checksum": _WHOLE[:29] + b"\0\0\0\0" + _WHOLE[33:],
    "ihdr-zero-width": PNG_MAGIC + _ihdr(0, 23) + _WHOLE[33:],
    "ihdr-bad-bit-depth": PNG_MAGIC + _ihdr(37, 23, depth=3) + _WHOLE[33:],
    "ihdr-too-short": PNG_MAGIC + _chunk(b"IHDR", b"\0\0\0\x25\0\0") + _WHOLE[33:],
    "no-ihdr": PNG_MAGIC + _chunk(b"IEND", b""),
    "jpeg-marker-then-noise": b"\xff\xd8\xff" + RNG.bytes(300),
    "jpeg-start-and-end-only": b"\xff\xd8\xff\xd9",
}


class TestDecodeImage:
    def test_png_round_trip_is_exact_and_rgb(self) -> None:
        decoded = decode_image(_png(RGB))
        assert decoded.dtype == np.uint8 and decoded.shape == RGB.shape
        np.testing.assert_array_equal(decoded, RGB)

    def test_channel_order_is_rgb(self) -> None:
        red = np.zeros((4, 5, 3), dtype=np.uint8)
        red[..., 0] = 255
        np.testing.assert_array_equal(decode_image(_pil_bytes(Image.fromarray(red), "PNG"))[0, 0], [255, 0, 0])
        from_jpeg = decode_image(_jpeg(red))[0, 0]
        assert from_jpeg[0] > 240 and from_jpeg[2] < 15

    def test_jpeg_decodes_close_to_the_original(self) -> None:
        smooth = np.repeat(np.linspace(0, 255, 37, dtype=np.uint8)[None, :, None], 23, axis=0).repeat(3, axis=2)
        decoded = decode_image(_jpeg(smooth))
        assert decoded.shape == smooth.shape and np.abs(decoded.astype(int) - smooth).mean() < 3

    @pytest.mark.parametrize("fmt", ["png", "jpeg"])
    @pytest.mark.parametrize("keep", [0.5, 0.9, -2])
    def test_truncated_bytes(self, fmt: str, keep: float) -> None:
        data = _png(RGB) if fmt == "png" else _jpeg(RGB)
        cut = data[: int(len(data) * keep)] if keep > 0 else data[: int(keep)]
        with pytest.raises(FrameError, match="cam: cannot decode image"):
            decode_image(cut, name="cam")

    def test_empty_and_garbage_bytes(self) -> None:
        with pytest.raises(FrameError, match="cam: empty image"):
            decode_image(b"", name="cam")
        with pytest.raises(
            FrameError, match=r"cam: cannot decode image: expected PNG or JPEG, got 19 bytes starting 47 49 46 3f"
        ):
            decode_image(b"GIF? no: plain text", name="cam")

    def test_exif_orientation_is_not_applied(self) -> None:
        """The pixels as the sensor wrote them, at the header's size: calibrations describe those."""
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
        data = _pil_bytes(Image.fromarray(RGB), "JPEG", exif=exif.tobytes())
        assert decode_image(data).shape == RGB.shape


class TestFormats:
    """Only PNG and JPEG camera images, only PNG label maps; anything else is named in the refusal."""

    @pytest.mark.parametrize("fmt", OTHER_FORMATS)
    def test_other_image_formats_are_refused_by_name(self, fmt: str) -> None:
        data = _pil_bytes(Image.fromarray(RGB), fmt)
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == fmt and image.size == (37, 23)  # a real file that Pillow would decode
        with pytest.raises(FrameError, match=rf"^front: a {OTHER_FORMATS[fmt]} image; send PNG or JPEG$"):
            decode_image(data, name="front")
        with pytest.raises(FrameError, match=rf"^front: a {OTHER_FORMATS[fmt]} image; send PNG or JPEG$"):
            probe_image(data, name="front")

    @pytest.mark.parametrize("fmt", OTHER_FORMATS)
    def test_other_label_formats_are_refused_by_name(self, fmt: str) -> None:
        data = _pil_bytes(Image.fromarray(LABELS, mode="L"), fmt)
        with pytest.raises(FrameError, match=rf"^front: a {OTHER_FORMATS[fmt]} label map; send PNG$"):
            decode_labels(data, name="front")

    @pytest.mark.parametrize("case", GARBAGE)
    @pytest.mark.parametrize("decode", [decode_image, decode_labels], ids=["image", "labels"])
    def test_garbage_is_a_frame_error_in_words(self, case: str, decode: Callable[..., np.ndarray]) -> None:
        """Only FrameErrors (pytest.raises lets any other type through, failing the test), and no
        Python object repr in the text."""
        data = GARBAGE[case]
        with pytest.raises(FrameError) as caught:
            decode(data, name="front")
        message = str(caught.value)
        assert message.startswith("front: "), message
        assert "<_io" not in message and " at 0x" not in message and "object at" not in message, message
        assert "JPEG" in message or "PNG" in message, message

    def test_unknown_bytes_are_described(self) -> None:
        with pytest.raises(FrameError, match=r"expected PNG, got 500 bytes starting [0-9a-f]{2}( [0-9a-f]{2}){7}$"):
            decode_labels(GARBAGE["random-bytes"], name="front")


class TestHeader:
    """Size and format come from the header, before any pixel is decoded."""

    def test_probe_reads_only_the_header(self) -> None:
        big = _pil_bytes(Image.new("L", (4096, 4096)), "PNG", compress_level=1)  # ~70 KB for 16 M pixels
        tracemalloc.start()
        began = time.perf_counter()
        header = probe_image(big, name="front")
        elapsed = time.perf_counter() - began
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert header == ImageHeader(format="PNG", size_hw=(4096, 4096), mode="L")
        assert elapsed < 0.05 and peak < 1 << 20, (elapsed, peak)

    def test_probe_gives_format_size_and_mode(self) -> None:
        assert probe_image(_jpeg(RGB)) == ImageHeader(format="JPEG", size_hw=(23, 37), mode="RGB")
        assert probe_labels(_png(LABELS)) == ImageHeader(format="PNG", size_hw=(23, 37), mode="L")

    @pytest.mark.parametrize("side", [5000, 20000, 65535])
    def test_a_header_over_the_pixel_limit_is_refused_with_its_size(self, side: int) -> None:
        """Also beyond Pillow's own decompression-bomb limit (about 179 M pixels), which does not apply."""
        with pytest.raises(FrameError, match=rf"front: {side}x{side} image has more than the 16777216 pixels allowed"):
            decode_image(_header_only_png(side, side), name="front")
        with pytest.raises(FrameError, match=rf"front: {side}x{side} image has more than the 1000 pixels allowed"):
            probe_image(_header_only_png(side, side), name="front", max_pixels=1000)

    def test_pixels_must_match_the_header(self) -> None:
        wrong = ImageHeader(format="PNG", size_hw=(2, 3), mode="RGB")
        with pytest.raises(FrameError, match="front: cannot decode image: the PNG header says 3x2, its pixels are 37x23"):
            decode_image(_png(RGB), name="front", header=wrong)
        with pytest.raises(FrameError, match="front: cannot decode label map: the PNG header says 3x2, its pixels are 37x23"):
            decode_labels(_png(LABELS), name="front", header=replace(wrong, mode="L"))


class TestDecodeLabels:
    def test_grey_png_round_trip(self) -> None:
        before = LABELS.copy()
        decoded = decode_labels(_png(LABELS))
        assert decoded.dtype == np.uint8 and decoded.shape == LABELS.shape
        np.testing.assert_array_equal(decoded, LABELS)
        np.testing.assert_array_equal(LABELS, before)

    def test_palette_png_gives_its_indices_not_its_colours(self) -> None:
        image = Image.fromarray(LABELS, mode="L").convert("P")
        image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [17] * (256 * 3 - 9))
        data = _pil_bytes(image, "PNG")
        assert Image.open(io.BytesIO(data)).mode == "P"
        np.testing.assert_array_equal(decode_labels(data), LABELS)

    def test_sixteen_bit_png_is_refused(self) -> None:
        data = encode_png(LABELS.astype(np.uint16) * 300)  # type: ignore[arg-type]
        with pytest.raises(FrameError, match="single-channel 8-bit"):
            decode_labels(data, name="front")

    def test_colour_png_is_refused(self) -> None:
        with pytest.raises(FrameError, match=r"front: a label map must be single-channel 8-bit .* got mode 'RGB'"):
            decode_labels(_png(RGB), name="front")

    def test_jpeg_is_refused_as_lossy(self) -> None:
        data = _pil_bytes(Image.fromarray(LABELS * 30, mode="L"), "JPEG")
        with pytest.raises(FrameError, match="lossless"):
            decode_labels(data, name="front")

    @pytest.mark.parametrize("keep", [0.3, 0.8, -12])
    def test_truncated_png(self, keep: float) -> None:
        noisy = RNG.integers(0, 256, size=(64, 96), dtype=np.uint8)  # incompressible: data runs the whole file
        data = _png(noisy)
        cut = data[: int(len(data) * keep)] if keep > 0 else data[: int(keep)]
        with pytest.raises(FrameError, match="front: cannot decode label map"):
            decode_labels(cut, name="front")

    def test_empty_and_garbage_bytes(self) -> None:
        with pytest.raises(FrameError, match="empty label map"):
            decode_labels(b"")
        with pytest.raises(FrameError, match="cannot decode label map"):
            decode_labels(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)


class TestFiles:
    def test_write_and_read_back(self, tmp_path: Path) -> None:
        write_png(tmp_path / "rgb.png", RGB)
        write_png(tmp_path / "labels.png", LABELS)
        np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), RGB)
        np.testing.assert_array_equal(read_labels(tmp_path / "labels.png"), LABELS)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(FrameError, match=r"cannot read .*nope\.png"):
            read_image(tmp_path / "nope.png")
        with pytest.raises(FrameError, match="cannot read"):
            read_labels(tmp_path)
