"""Uncompressed camera images (``sensor_msgs/msg/Image``, ``foxglove.RawImage``) to the RGB the pipeline takes.

``raw_to_rgb(data, width=, height=, step=, encoding=)`` reads the pixel buffer as its encoding says (the names of
ROS's ``sensor_msgs/image_encodings.h``, which Foxglove's RawImage uses too): colour (``rgb8``, ``bgr8``, ``rgba8``,
``bgra8``), grey (``mono8``, ``mono16``: its high byte), Bayer mosaics (``bayer_rggb8``, ``bayer_bggr8``,
``bayer_gbrg8``, ``bayer_grbg8``: demosaiced, as the camera driver's debayer node would) and packed YUV 4:2:2
(``yuv422`` / ``uyvy``, ``yuv422_yuy2`` / ``yuyv``). Rows may be padded (``step`` > width x bytes per pixel). Anything
else is a ValueError that names the encoding: the frame set it belongs to is skipped with that reason.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

_COLOUR = {"rgb8": (3, None), "bgr8": (3, cv2.COLOR_BGR2RGB), "rgba8": (4, cv2.COLOR_RGBA2RGB), "bgra8": (4, cv2.COLOR_BGRA2RGB)}
# OpenCV names a Bayer pattern by the second row's first two pixels: ROS's rggb is OpenCV's BG.
_BAYER = {
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
}
_YUV422 = {"yuv422": cv2.COLOR_YUV2RGB_UYVY, "uyvy": cv2.COLOR_YUV2RGB_UYVY}
_YUV422 |= {"yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2, "yuyv": cv2.COLOR_YUV2RGB_YUY2}
_BYTES_PER_PIXEL = {**{k: v[0] for k, v in _COLOUR.items()}, "mono8": 1, "mono16": 2, **dict.fromkeys(_BAYER, 1)}
_BYTES_PER_PIXEL |= dict.fromkeys(_YUV422, 2)
ENCODINGS = tuple(_BYTES_PER_PIXEL)


def raw_to_rgb(
    data: bytes | bytearray | memoryview | NDArray[np.uint8],
    *,
    width: int,
    height: int,
    step: int,
    encoding: str,
    big_endian: bool = False,
) -> NDArray[np.uint8]:
    """The image (height, width, 3) uint8 RGB of a raw buffer of ``height`` rows of ``step`` bytes."""
    name = encoding.lower()
    if name not in _BYTES_PER_PIXEL:
        raise ValueError(f"raw image encoding {encoding!r} is not one this reads ({', '.join(ENCODINGS)})")
    width, height, step = int(width), int(height), int(step)
    row_bytes = width * _BYTES_PER_PIXEL[name]
    if width <= 0 or height <= 0 or step < row_bytes:
        raise ValueError(f"raw image of {width}x{height} {encoding} with a row step of {step} bytes (at least {row_bytes})")
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size < height * step - (step - row_bytes):  # the last row's padding may be left off
        raise ValueError(f"raw image of {width}x{height} {encoding} needs {height * step} bytes, got {buffer.size}")
    rows = np.lib.stride_tricks.as_strided(buffer, shape=(height, row_bytes), strides=(step, 1), writeable=False)
    if name == "mono16":
        high = 0 if big_endian else 1
        grey = np.ascontiguousarray(rows.reshape(height, width, 2)[..., high])
        return np.repeat(grey[..., None], 3, axis=2)
    if name == "mono8":
        return np.repeat(rows[..., None], 3, axis=2)
    if name in _BAYER:
        return np.asarray(cv2.cvtColor(np.ascontiguousarray(rows), _BAYER[name]), dtype=np.uint8)
    if name in _YUV422:
        if width % 2:
            raise ValueError(f"packed {encoding} needs an even width, got {width}")
        return np.asarray(cv2.cvtColor(np.ascontiguousarray(rows.reshape(height, width, 2)), _YUV422[name]), dtype=np.uint8)
    channels, conversion = _COLOUR[name]
    pixels = rows.reshape(height, width, channels)
    if conversion is None:
        return np.ascontiguousarray(pixels)
    return np.asarray(cv2.cvtColor(np.ascontiguousarray(pixels), conversion), dtype=np.uint8)
