"""Image files and bytes in and out (PNG/JPEG through OpenCV's codecs, label maps through Pillow), with
clear FrameErrors."""

from __future__ import annotations

import io
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from bev_service.errors import FrameError

DEFAULT_MAX_PIXELS = 4096 * 4096


def image_size(data: bytes, *, name: str = "image", what: str = "image") -> tuple[int, int]:
    """(width, height) from an encoded image's header alone (Pillow reads no pixels here)."""
    try:
        with warnings.catch_warnings():
            # Pillow warns of a "decompression bomb" from the header; check_pixels applies our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return int(image.width), int(image.height)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise FrameError(f"{name}: cannot decode {what} ({len(data)} bytes; expected PNG or JPEG): {exc}") from exc


def check_pixels(data: bytes, max_pixels: int, *, name: str, what: str = "image") -> None:
    """FrameError before decoding when the header declares more than ``max_pixels`` pixels: a
    decompression bomb (a few KB of PNG for gigabytes of pixels) is refused without allocating."""
    width, height = image_size(data, name=name, what=what)
    if width * height > max_pixels:
        raise FrameError(f"{name}: {width}x{height} image has more than the {max_pixels} pixels allowed")


def decode_image(data: bytes, *, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> NDArray[np.uint8]:
    """Encoded bytes (PNG, JPEG, ...) to an (h, w, 3) RGB uint8 array; truncated files are refused."""
    if not data:
        raise FrameError(f"{name}: empty image")
    check_pixels(data, max_pixels, name=name)
    if data[:2] == b"\xff\xd8" and data.rstrip(b"\0")[-2:] != b"\xff\xd9":
        # Depending on where a JPEG is cut, libjpeg may fill the rest with grey and only warn: check the end marker.
        raise FrameError(f"{name}: cannot decode image: truncated JPEG ({len(data)} bytes, no end-of-image marker)")
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FrameError(f"{name}: cannot decode image ({len(data)} bytes; expected PNG or JPEG)")
    return np.ascontiguousarray(bgr[..., ::-1])


def decode_labels(data: bytes, *, name: str = "labels", max_pixels: int = DEFAULT_MAX_PIXELS) -> NDArray[np.uint8]:
    """A single-channel 8-bit image of class ids (grey, or palette: its indices are the ids; PNG or
    another lossless format) to an (h, w) uint8 array. Read with Pillow, not OpenCV: OpenCV
    expands a palette PNG to colours and so loses the ids."""
    if not data:
        raise FrameError(f"{name}: empty label map")
    check_pixels(data, max_pixels, name=name, what="label map")
    try:
        # verify() checks every chunk's checksum and that the file is whole; it uses up the
        # file object, so the pixels come from a second open.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_pixels has limited the size
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                mode, fmt = image.mode, image.format
                labels = np.asarray(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise FrameError(f"{name}: cannot decode label map ({len(data)} bytes; expected an 8-bit PNG): {exc}") from exc
    if fmt == "JPEG":
        raise FrameError(f"{name}: a label map must be lossless (PNG); JPEG changes class ids at edges")
    if mode not in ("L", "P"):
        raise FrameError(f"{name}: a label map must be single-channel 8-bit (grey or palette), got mode {mode!r}")
    return np.ascontiguousarray(labels, dtype=np.uint8)


def check_camera_set(given: Collection[str], camera_names: Sequence[str]) -> None:
    """FrameError unless a frame set has exactly the rig's cameras, naming what is missing or extra."""
    missing = [n for n in camera_names if n not in given]
    extra = sorted(set(given) - set(camera_names))
    if missing or extra:
        raise FrameError(
            f"expected {len(camera_names)} cameras ({', '.join(camera_names)}), got {len(given)}"
            + (f": missing {', '.join(map(repr, missing))}" if missing else "")
            + (f"; unknown {', '.join(map(repr, extra))}" if extra else "")
        )


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise FrameError(f"cannot read {path}: {exc.strerror}") from exc


def read_image(path: str | Path) -> NDArray[np.uint8]:
    return decode_image(_read(path), name=str(path))


def read_labels(path: str | Path) -> NDArray[np.uint8]:
    return decode_labels(_read(path), name=str(path))


def encode_png(array: NDArray[np.uint8]) -> bytes:
    """(h, w) grey / class ids or (h, w, 3) RGB to PNG bytes."""
    bgr = array[..., ::-1] if array.ndim == 3 else array
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr))
    if not ok:
        raise ValueError(f"cannot encode an array of shape {array.shape} as PNG")
    return buf.tobytes()


def encode_label_png(labels: NDArray[np.uint8], colours: NDArray[np.uint8], *, compress_level: int = 1) -> bytes:
    """(h, w) class ids to an 8-bit palette PNG: its pixel values are the ids (``decode_labels`` reads
    them back) and any viewer shows the ``colours`` (256, 3) palette. Level 1 compression: a 400x400
    grid in about a millisecond, a few KB."""
    image = Image.fromarray(np.ascontiguousarray(labels), mode="L")
    image = image.convert("P") if image.mode != "P" else image
    image.putpalette(np.ascontiguousarray(colours, dtype=np.uint8).tobytes())
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=compress_level)
    return out.getvalue()


def check_whole_factor(size_hw: tuple[int, int], calibrated_hw: tuple[int, int], *, name: str) -> int:
    """The whole factor by which an image is smaller than its camera's calibrated size (1 when equal);
    FrameError for any other size (another aspect ratio, larger, or a fraction)."""
    (h, w), (ch, cw) = size_hw, calibrated_hw
    factor = ch // h if h > 0 else 0
    if factor < 1 or ch != h * factor or cw != w * factor:
        raise FrameError(
            f"{name}: got a {w}x{h} (w x h) image; camera {name!r} is calibrated at {cw}x{ch}, "
            "so the image must be that size or smaller by a whole factor (e.g. half or a quarter)"
        )
    return factor


def write_png(path: str | Path, array: NDArray[np.uint8]) -> None:
    Path(path).write_bytes(encode_png(array))
