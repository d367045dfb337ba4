"""Image files and bytes in and out (PNG/JPEG through OpenCV's codecs), with clear FrameErrors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

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
    """A single-channel 8-bit PNG of class ids to an (h, w) uint8 array (no colour conversion)."""
    if not data:
        raise FrameError(f"{name}: empty label map")
    labels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise FrameError(f"{name}: cannot decode label map ({len(data)} bytes; expected an 8-bit PNG)")
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise FrameError(f"{name}: a label map must be single-channel 8-bit, got {labels.dtype} with shape {labels.shape}")
    return np.asarray(labels, dtype=np.uint8)


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
