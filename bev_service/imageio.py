"""Image files and bytes in and out (PNG/JPEG through OpenCV's codecs, label maps through Pillow), with
clear FrameErrors."""

from __future__ import annotations

import io
from collections.abc import Collection, Sequence
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from bev_service.errors import FrameError


def decode_image(data: bytes, *, name: str = "image") -> NDArray[np.uint8]:
    """Encoded bytes (PNG, JPEG, ...) to an (h, w, 3) RGB uint8 array."""
    if not data:
        raise FrameError(f"{name}: empty image")
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FrameError(f"{name}: cannot decode image ({len(data)} bytes; expected PNG or JPEG)")
    return np.ascontiguousarray(bgr[..., ::-1])


def decode_labels(data: bytes, *, name: str = "labels") -> NDArray[np.uint8]:
    """A single-channel 8-bit image of class ids (grey, or palette: its indices are the ids; PNG or
    another lossless format) to an (h, w) uint8 array. Read with Pillow, not OpenCV: OpenCV
    expands a palette PNG to colours and so loses the ids."""
    if not data:
        raise FrameError(f"{name}: empty label map")
    try:
        # verify() checks every chunk's checksum and that the file is whole; it uses up the
        # file object, so the pixels come from a second open.
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


def write_png(path: str | Path, array: NDArray[np.uint8]) -> None:
    Path(path).write_bytes(encode_png(array))
