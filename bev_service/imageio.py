"""Image files and bytes in and out (PNG/JPEG through OpenCV's codecs, label maps through Pillow), with
clear FrameErrors.

Camera images are PNG or JPEG and label maps PNG, nothing else. Every encoded image is judged from its
header before a pixel is decoded (``probe_image``, ``probe_labels``): its format by its first bytes and
by Pillow's reading of the header, its size against ``max_pixels`` and, in the pipeline, against the
camera's calibrated size. A few KB of PNG can declare gigabytes of pixels.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin

from bev_service.errors import FrameError

DEFAULT_MAX_PIXELS = 4096 * 4096

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"  # PNG specification, section 5.2
JPEG_MAGIC = b"\xff\xd8\xff"  # start-of-image marker and the first byte of the next marker
IMAGE_FORMATS = ("PNG", "JPEG")
LABEL_FORMATS = ("PNG",)

# Formats refused by name, so that the error says what was sent (first bytes -> name).
_OTHER_MAGIC = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
)
_BMP_HEADER_SIZES = (12, 40, 52, 56, 64, 108, 124)  # the DIB header sizes of the BMP versions
# Pillow's plugins, called directly: no other plugin looks at the bytes, and Image.open's own
# decompression-bomb limit does not apply (``max_pixels`` does).
_PILLOW_READERS: dict[str, type[ImageFile.ImageFile]] = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
}
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


@dataclass(frozen=True)
class ImageHeader:
    """What an encoded image's header declares."""

    format: str  # "PNG" or "JPEG"
    size_hw: tuple[int, int]
    mode: str  # Pillow's mode: "RGB", "L", "P", "I;16", ...


def format_from_magic(data: bytes) -> str | None:
    """The format named by an encoded image's first bytes: "PNG", "JPEG", or one refused by name
    ("GIF", "WebP", "TIFF", "BMP"); None for anything else."""
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    for magic, name in _OTHER_MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] == b"BM" and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    return None


def probe_image(data: bytes, *, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """A camera image's header, read without decoding a pixel; FrameError unless it is a PNG or JPEG
    of at most ``max_pixels`` pixels."""
    return _probe(data, name=name, what="image", formats=IMAGE_FORMATS, max_pixels=max_pixels)


def probe_labels(data: bytes, *, name: str = "labels", max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """A label map's header, read without decoding a pixel; FrameError unless it is a single-channel
    8-bit (grey or palette) PNG of at most ``max_pixels`` pixels."""
    if data.startswith(JPEG_MAGIC):
        raise FrameError(f"{name}: a label map must be lossless (PNG); JPEG changes class ids at edges")
    header = _probe(data, name=name, what="label map", formats=LABEL_FORMATS, max_pixels=max_pixels)
    if header.mode not in ("L", "P"):
        raise FrameError(f"{name}: a label map must be single-channel 8-bit (grey or palette), got mode {header.mode!r}")
    return header


def _probe(data: bytes, *, name: str, what: str, formats: Sequence[str], max_pixels: int | None) -> ImageHeader:
    if not data:
        raise FrameError(f"{name}: empty {what}")
    wanted = " or ".join(formats)
    found = format_from_magic(data)
    if found is None:
        raise FrameError(f"{name}: cannot decode {what}: expected {wanted}, got {len(data)} bytes starting {data[:8].hex(' ')}")
    if found not in formats:
        raise FrameError(f"{name}: a {found} {what}; send {wanted}")
    try:
        with _PILLOW_READERS[found](io.BytesIO(data)) as image:
            read_format, (width, height), mode = image.format, image.size, image.mode
    except MemoryError:
        raise
    except Exception as exc:  # Pillow raises many types on hostile headers; each one means a broken file
        raise FrameError(f"{name}: cannot decode {what}: broken {found} header ({len(data)} bytes): {_reason(exc)}") from exc
    if read_format != found:
        raise FrameError(f"{name}: cannot decode {what}: its first bytes say {found}, its header says {read_format}")
    if max_pixels is not None and width * height > max_pixels:
        raise FrameError(f"{name}: {width}x{height} {what} has more than the {max_pixels} pixels allowed")
    return ImageHeader(format=found, size_hw=(int(height), int(width)), mode=str(mode))


def _reason(exc: BaseException) -> str:
    """A codec's message in words: without the object reprs some hold ("<_io.BytesIO object at 0x...>"),
    and Pillow's terms for a file cut short or a header without a usable size and mode spelt out."""
    if isinstance(exc.__cause__, struct.error | EOFError | IndexError):
        return "the file ends too early"
    text = _OBJECT_REPR.sub("", str(exc)).strip()
    if text == "not identified by this driver":
        return "no valid image size or pixel format in it"
    return text or type(exc).__name__


def _check_decoded_size(size_hw: tuple[int, int], header: ImageHeader, *, name: str, what: str) -> None:
    if size_hw != header.size_hw:
        (h, w), (hh, hw) = size_hw, header.size_hw
        raise FrameError(f"{name}: cannot decode {what}: the {header.format} header says {hw}x{hh}, its pixels are {w}x{h}")


def decode_image(
    data: bytes, *, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS, header: ImageHeader | None = None
) -> NDArray[np.uint8]:
    """PNG or JPEG bytes to an (h, w, 3) RGB uint8 array in the sensor's pixel order (an EXIF
    orientation is not applied: calibrations describe the pixels as the sensor wrote them); truncated
    files are refused. ``header`` is ``probe_image``'s for these bytes, when the caller has read it."""
    header = header if header is not None else probe_image(data, name=name, max_pixels=max_pixels)
    if header.format == "JPEG" and data.rstrip(b"\0")[-2:] != b"\xff\xd9":
        # Depending on where a JPEG is cut, libjpeg may fill the rest with grey and only warn: check the end marker.
        raise FrameError(f"{name}: cannot decode image: truncated JPEG ({len(data)} bytes, no end-of-image marker)")
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        bgr = None
    if bgr is None:
        raise FrameError(f"{name}: cannot decode image: the {header.format} data is broken or cut short ({len(data)} bytes)")
    _check_decoded_size(bgr.shape[:2], header, name=name, what="image")
    return np.ascontiguousarray(bgr[..., ::-1])


def decode_labels(
    data: bytes, *, name: str = "labels", max_pixels: int = DEFAULT_MAX_PIXELS, header: ImageHeader | None = None
) -> NDArray[np.uint8]:
    """A single-channel 8-bit PNG of class ids (grey, or palette: its indices are the ids) to an
    (h, w) uint8 array. Read with Pillow, not OpenCV: OpenCV expands a palette PNG to colours and so
    loses the ids. ``header`` is ``probe_labels``'s for these bytes, when the caller has read it."""
    header = header if header is not None else probe_labels(data, name=name, max_pixels=max_pixels)
    labels = _png_pixels(data, header, name=name, what="label map")
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise FrameError(f"{name}: a label map must be single-channel 8-bit (grey or palette), got {labels.dtype} {labels.shape}")
    return np.ascontiguousarray(labels)


def _png_pixels(data: bytes, header: ImageHeader, *, name: str, what: str) -> NDArray[Any]:
    """A PNG's pixels as Pillow reads them (palette indices, not colours), checked whole and of the header's size."""
    try:
        # verify() checks every chunk's checksum and that the file is whole; it uses up the
        # file object, so the pixels come from a second reading.
        with PngImagePlugin.PngImageFile(io.BytesIO(data)) as probe:
            probe.verify()
        with PngImagePlugin.PngImageFile(io.BytesIO(data)) as image:
            image.load()
            pixels = np.asarray(image)
    except MemoryError:
        raise
    except Exception as exc:  # as in _probe: any codec error means a broken file
        raise FrameError(f"{name}: cannot decode {what} ({len(data)} bytes of PNG): {_reason(exc)}") from exc
    _check_decoded_size(pixels.shape[:2], header, name=name, what=what)
    return pixels


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
    return _encode(array, ".png", [])


def encode_jpeg(array: NDArray[np.uint8], quality: int = 90) -> bytes:
    """(h, w) grey or (h, w, 3) RGB to JPEG bytes."""
    return _encode(array, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality])


def _encode(array: NDArray[np.uint8], ext: str, params: list[int]) -> bytes:
    bgr = array[..., ::-1] if array.ndim == 3 else array
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(bgr), params)
    if not ok:
        raise ValueError(f"cannot encode an array of shape {array.shape} as {ext[1:].upper()}")
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


def write_image(path: str | Path, array: NDArray[np.uint8]) -> None:
    """PNG or JPEG by the name's suffix (.png, .jpg, .jpeg)."""
    target = Path(path)
    jpeg = target.suffix.lower() in (".jpg", ".jpeg")
    target.write_bytes(encode_jpeg(array) if jpeg else encode_png(array))


def decode_mask_png(data: bytes, *, name: str = "mask") -> NDArray[np.bool_]:
    """A camera's validity mask from a single-channel PNG (1-bit, grey or palette): non-zero pixels see."""
    header = _probe(data, name=name, what="mask", formats=LABEL_FORMATS, max_pixels=DEFAULT_MAX_PIXELS)
    if header.mode not in ("1", "L", "P"):
        raise FrameError(f"{name}: a mask must be a single-channel PNG (1-bit, grey or palette), got mode {header.mode!r}")
    return np.asarray(_png_pixels(data, header, name=name, what="mask") > 0)


def encode_mask_png(mask: NDArray[np.bool_]) -> bytes:
    """A validity mask as a 1-bit PNG (a few KB for a 1280x1080 camera); ``decode_mask_png`` reads it back."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(out, format="PNG", optimize=True)
    return out.getvalue()
