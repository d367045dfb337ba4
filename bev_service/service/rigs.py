"""The rigs a service knows, each with its pipeline (lookup tables built), swapped in whole.

A request takes one ``RigEntry`` when it arrives and keeps it to the end, so a rig PUT while it is in
flight cannot mix two calibrations: it is answered entirely with the old rig or entirely with the new one.
A PUT validates the YAML, builds the new tables off the event loop, writes the file atomically and
only then replaces the entry.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from bev_service.calib.coverage import coverage_of, coverage_picture
from bev_service.calib.rigfile import load_rig, rig_from_yaml, save_rig
from bev_service.errors import BevError, CalibrationError, ModelError
from bev_service.geometry.rig import Rig
from bev_service.imageio import encode_png
from bev_service.runtime.pipeline import BevPipeline
from bev_service.service.errors import UnknownRigError

__all__ = ["RIG_ID", "RigEntry", "RigStore", "UnknownRigError", "check_rig_id"]

log = logging.getLogger(__name__)

# Letters, digits, '.', '_' and '-', starting with a letter or digit: no path separators, no '..'.
RIG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_rig_id(rig_id: str) -> str:
    if not RIG_ID.fullmatch(rig_id) or ".." in rig_id:
        raise CalibrationError(
            f"invalid rig id {rig_id!r}: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            field="rig_id",
        )
    return rig_id


@dataclass(frozen=True)
class RigEntry:
    rig: Rig
    pipeline: BevPipeline
    path: Path | None  # the file it was loaded from or stored in

    @property
    def rig_id(self) -> str:
        return self.rig.rig_id

    @cached_property
    def coverage_png(self) -> bytes:
        """Which camera owns each grid cell, as a PNG with a legend. Kept on the entry: a PUT makes a
        new entry, so the picture can never outlive its calibration. Slow: call it off the event loop."""
        tables = self.pipeline.projector.tables
        picture, _ = coverage_picture(tables, coverage_of(tables))
        return encode_png(picture)


class RigStore:
    """Rig id to ``RigEntry``; reads are lock-free (one dict lookup), writes are serialised."""

    def __init__(self, make_pipeline: Callable[[Rig], BevPipeline], rigs_dir: Path, default_rig: Path) -> None:
        self._make_pipeline = make_pipeline
        self.rigs_dir = rigs_dir
        self._entries: dict[str, RigEntry] = {}
        self._write_lock = threading.Lock()
        default = load_rig(default_rig)
        check_rig_id(default.rig_id)
        self.default_id = default.rig_id
        self._entries[default.rig_id] = RigEntry(default, make_pipeline(default), default_rig)
        self._load_dir()

    def _load_dir(self) -> None:
        """Rigs stored by earlier PUTs; a stored rig with the default's id replaces it. A bad file is
        logged and skipped: one broken rig must not keep the service from starting."""
        if not self.rigs_dir.is_dir():
            return
        for path in sorted(self.rigs_dir.glob("*.yaml")):
            try:
                rig = load_rig(path)
                if rig.rig_id != path.stem:
                    raise CalibrationError(f"rig_id {rig.rig_id!r} differs from the file name", field="rig_id")
                check_rig_id(rig.rig_id)
                self._entries[rig.rig_id] = RigEntry(rig, self._make_pipeline(rig), path)
            except BevError as exc:
                log.error("skipping stored rig %s: %s", path, exc)

    def ids(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[RigEntry]:
        return [self._entries[k] for k in self.ids()]

    def get(self, rig_id: str | None) -> RigEntry:
        key = self.default_id if rig_id in (None, "") else str(rig_id)
        entry = self._entries.get(key)
        if entry is None:
            raise UnknownRigError(f"unknown rig {key!r}; known rigs: {', '.join(self.ids())}")
        return entry

    def put(self, rig_id: str, yaml_text: str) -> tuple[RigEntry, bool]:
        """Validate, build the tables, store atomically, swap in. Returns the entry and whether it is new."""
        check_rig_id(rig_id)
        rig = rig_from_yaml(yaml_text)
        if rig.rig_id != rig_id:
            raise CalibrationError(f"the file's rig_id {rig.rig_id!r} differs from the id in the path {rig_id!r}", field="rig_id")
        with self._write_lock:
            try:
                pipeline = self._make_pipeline(rig)  # the slow part (lookup tables), before anything changes
            except ModelError as exc:  # e.g. cameras of another aspect ratio than the network's input
                raise CalibrationError(f"the served model cannot run on this rig: {exc}", field="cameras") from exc
            self.rigs_dir.mkdir(parents=True, exist_ok=True)
            path = self.rigs_dir / f"{rig_id}.yaml"
            save_rig(rig, path, description=f"stored by PUT /v1/rigs/{rig_id}")
            old = self._entries.get(rig_id)
            self._entries[rig_id] = RigEntry(rig, pipeline, path)  # one reference assignment: the swap
        log.info("rig %s %s (fingerprint %s)", rig_id, "replaced" if old else "added", rig.fingerprint)
        return self._entries[rig_id], old is None

    def close(self) -> None:
        for entry in self._entries.values():
            entry.pipeline.close()
