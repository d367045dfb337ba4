"""Image and label-map decoding: real codecs, clear FrameErrors on anything broken."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from bev_service.errors import FrameError
from bev_service.imageio import decode_image, decode_labels, encode_png, read_image, read_labels, write_png

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(23, 37, 3), dtype=np.uint8)  # odd sizes
LABELS = RNG.integers(0, 8, size=(23, 37), dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    return encode_png(array)


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return buf.tobytes()


def _pil_bytes(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


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
        with pytest.raises(FrameError, match="expected PNG or JPEG"):
            decode_image(b"GIF89a not really", name="cam")


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
