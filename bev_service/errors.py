"""One exception type per domain; the service maps each to an HTTP status and a stream reply in one place
(``bev_service.service.errors``)."""

from __future__ import annotations


class BevError(Exception):
    """Base of every error this package raises on bad input."""


class CalibrationError(BevError):
    """A rig file, calibration file or calibration input is unusable.

    ``camera`` and ``field`` name where the problem is when it belongs to one camera or field.
    """

    def __init__(self, message: str, *, camera: str | None = None, field: str | None = None) -> None:
        where = ", ".join(part for part in (camera and f"camera {camera!r}", field and f"field {field!r}") if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.camera = camera
        self.field = field


class FrameError(BevError):
    """A frame set is unusable: missing or extra camera, undecodable image, wrong size."""


class ModelError(BevError):
    """A model file or model configuration is unusable: missing, truncated, not ours, other classes."""


class RecordingError(BevError):
    """A recorded drive is unusable: not an MCAP or rosbag2, truncated, a camera's topic missing or ambiguous."""
