"""Where ``bev replay`` puts one recording's grids: ``DIR/<drive>.mcap``, ``DIR/<drive>.parquet`` or
``DIR/<drive>/<time_ns>.png``, each written so that a re-run can tell what is done.

MCAP and Parquet files are written beside their name (``.partial``) and renamed into place when complete: a file
that exists is complete, and a run cut short leaves only a ``.partial`` that the next run starts over. PNGs are
written one by one, each whole or not at all. Every output records how it was made (MCAP metadata, Parquet schema
metadata, ``provenance.json`` beside the PNGs): the model's hash, the rig's fingerprint, the source recording (its
path, size and modification time), the tolerance and each camera's topic. One made any other way (another model,
rig or setting, another recording of the same name) is reported, never taken as done, nor added to. An output that
would be the recording itself (PNGs of a rosbag2 folder into that folder, an MCAP over itself) is refused.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from bev_service.classes import palette
from bev_service.errors import RecordingError
from bev_service.geometry.rig import Rig
from bev_service.imageio import encode_label_png
from bev_service.recordings.mcap_out import BevMcapWriter
from bev_service.runtime.pipeline import STAGES

log = logging.getLogger(__name__)

OutputFormat = Literal["mcap", "parquet", "png"]
FORMATS: tuple[OutputFormat, ...] = ("mcap", "parquet", "png")
PARTIAL = ".partial"
PROVENANCE_FILE = "provenance.json"


@dataclass(frozen=True)
class Provenance:
    model_sha256: str
    rig_fingerprint: str
    source: str = ""  # the recording's resolved path
    source_size: int = 0  # bytes (of a rosbag2 folder: of its files)
    source_mtime_ns: int = 0  # (of a rosbag2 folder: its newest file's)
    tolerance_ms: float = 0.0
    topics: dict[str, str] = field(default_factory=dict)  # camera -> topic, in rig order
    window: str = "all"  # the part of the recording replayed (``bev replay --start/--end``), or all of it

    @classmethod
    def of(
        cls,
        source: Path,
        *,
        model_sha256: str,
        rig_fingerprint: str,
        tolerance_ms: float,
        topics: dict[str, str],
        window: str = "all",
    ) -> Self:
        files = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
        stats = [f.stat() for f in files]
        return cls(
            model_sha256=model_sha256,
            rig_fingerprint=rig_fingerprint,
            source=str(source.resolve()),
            source_size=sum(s.st_size for s in stats),
            source_mtime_ns=max((s.st_mtime_ns for s in stats), default=0),
            tolerance_ms=float(tolerance_ms),
            topics=dict(topics),
            window=window,
        )

    def as_dict(self) -> dict[str, str]:
        """As the outputs record it: every value a string."""
        return {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in asdict(self).items()}


class Output:
    """One recording's results. ``complete``: an earlier run wrote them all; ``done``: it wrote this frame set."""

    complete = False

    def done(self, time_ns: int) -> bool:
        return False

    def write(self, time_ns: int, capture_time_ns: dict[str, int], timings_ms: dict[str, float], grid: Any) -> None:
        raise NotImplementedError

    def commit(self) -> None: ...

    def abort(self) -> None: ...


# Provenance keys that outputs of earlier versions lack, with the value their absence meant.
UNRECORDED = {"window": "all"}


def _check(path: Path, found: dict[str, str], provenance: Provenance) -> None:
    wanted = provenance.as_dict()
    recorded = {k: found.get(k, UNRECORDED.get(k)) for k in wanted}
    differ = [f"{k} {recorded[k] or 'unknown'} (now {v})" for k, v in wanted.items() if recorded[k] != v]
    if differ:
        raise RecordingError(f"{path} exists from another run: {', '.join(differ)}; remove it or write to another --out")


class _FileOutput(Output):
    def __init__(self, path: Path, provenance: Provenance, open_writer: Callable[[Path], Any]) -> None:
        self.path, self._partial = path, path.with_name(path.name + PARTIAL)
        self.complete = path.exists()
        if self.complete:
            _check(path, self._provenance_of(path), provenance)
        self._open = open_writer
        self._writer: Any = None

    def _provenance_of(self, path: Path) -> dict[str, str]:
        raise NotImplementedError

    def commit(self) -> None:
        if self._writer is None:  # every frame set skipped: an empty output still says the recording is done
            log.warning("%s: no frame set to write", self.path)
            self._writer = self._open(self._partial)
        self._writer.close()
        os.replace(self._partial, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # a half-written file is removed whatever state its writer is in
                log.debug("closing %s after a failure", self._partial, exc_info=True)
        self._partial.unlink(missing_ok=True)

    def _writing(self) -> Any:
        if self._writer is None:
            self._writer = self._open(self._partial)
        return self._writer


class McapOutput(_FileOutput):
    def __init__(self, path: Path, rig: Rig, provenance: Provenance) -> None:
        super().__init__(path, provenance, lambda p: BevMcapWriter(p, rig, metadata=provenance.as_dict()))

    def _provenance_of(self, path: Path) -> dict[str, str]:
        from mcap.reader import make_reader

        try:
            with path.open("rb") as f:
                metadata = {m.name: m.metadata for m in make_reader(f).iter_metadata()}
        except Exception as exc:  # any reader error: the file is not an output of ours
            raise RecordingError(f"{path} exists and is not a readable MCAP ({exc}); remove it") from exc
        return dict(metadata.get("bev", {}))

    def write(self, time_ns: int, capture_time_ns: dict[str, int], timings_ms: dict[str, float], grid: Any) -> None:
        self._writing().write_grid(time_ns, grid)


class ParquetOutput(_FileOutput):
    def __init__(self, path: Path, rig: Rig, provenance: Provenance, drive: str) -> None:
        from bev_service.recordings.parquet_out import BevParquetWriter

        super().__init__(
            path,
            provenance,
            lambda p: BevParquetWriter(
                p, rig, drive=drive, model_sha256=provenance.model_sha256, stages=STAGES, metadata=provenance.as_dict()
            ),
        )

    def _provenance_of(self, path: Path) -> dict[str, str]:
        import pyarrow.parquet as pq

        try:
            metadata = pq.read_schema(path).metadata or {}
        except Exception as exc:  # as for MCAP
            raise RecordingError(f"{path} exists and is not a readable Parquet file ({exc}); remove it") from exc
        return {k.decode().removeprefix("bev."): v.decode() for k, v in metadata.items()}

    def write(self, time_ns: int, capture_time_ns: dict[str, int], timings_ms: dict[str, float], grid: Any) -> None:
        self._writing().write(time_ns, capture_time_ns, timings_ms, grid)


class PngOutput(Output):
    """A palette PNG of class ids per frame set, ``<folder>/<time_ns>.png`` (19 digits: they sort by time)."""

    def __init__(self, folder: Path, provenance: Provenance) -> None:
        self.folder, self.provenance = folder, provenance
        self._colours = palette()
        self._recorded = False
        record = folder / PROVENANCE_FILE
        if record.exists():
            try:
                found = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise RecordingError(f"{record}: unreadable ({exc}); remove it") from exc
            _check(folder, found, provenance)
        elif folder.is_dir() and any(folder.glob("*.png")):
            raise RecordingError(f"{folder} holds PNGs of an unknown run (no {PROVENANCE_FILE}); remove them")

    def _path(self, time_ns: int) -> Path:
        return self.folder / f"{time_ns:019d}.png"

    def done(self, time_ns: int) -> bool:
        return self._path(time_ns).exists()

    def write(self, time_ns: int, capture_time_ns: dict[str, int], timings_ms: dict[str, float], grid: Any) -> None:
        if not self._recorded:
            self.folder.mkdir(parents=True, exist_ok=True)
            record = self.folder / PROVENANCE_FILE
            if not record.exists():  # a folder made beforehand has none: the PNGs must not go in unlabelled
                _write_atomically(record, (json.dumps(self.provenance.as_dict(), indent=2) + "\n").encode())
            self._recorded = True
        _write_atomically(self._path(time_ns), encode_label_png(grid, self._colours))


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + PARTIAL)
    partial.write_bytes(data)
    os.replace(partial, path)


def output_for(fmt: OutputFormat, out: Path, drive: str, rig: Rig, provenance: Provenance, source: Path) -> Output:
    """The output of the recording ``source`` (named ``drive``) in ``out``."""
    if fmt not in FORMATS:
        raise ValueError(f"output format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    target = out / (drive if fmt == "png" else f"{drive}.{fmt}")
    if _same_or_inside(target, source):
        raise RecordingError(f"{source}: the output would be the recording itself; write to another --out")
    if fmt == "mcap":
        return McapOutput(target, rig, provenance)
    if fmt == "parquet":
        return ParquetOutput(target, rig, provenance, drive)
    return PngOutput(target, provenance)


def _same_or_inside(path: Path, folder_or_file: Path) -> bool:
    path, other = path.resolve(), folder_or_file.resolve()
    return path == other or other in path.parents
