"""The rigs a service knows, each with its pipeline (lookup tables built once), swapped in whole.

A request takes one ``RigEntry`` when it arrives and keeps it to the end, so a rig PUT while it is in
flight cannot mix two calibrations: it is answered entirely with the old rig or entirely with the new one.
A PUT validates the file, checks the store's limits, builds the new tables off the event loop, writes
the file atomically and only then replaces the entry.

The served rig file (``BEV_RIG``) is read-only: a PUT or DELETE of its id is refused, and a stored file
of that id is ignored. A stored rig becomes the default with ``BEV_DEFAULT_RIG_ID``. Stored rigs are
read at start but their tables are built when first used, or in the background once the service is
ready, so a restart with many stored rigs is as quick as a fresh start.

Several processes may share one ``rigs_dir`` (``BEV_SHARED_RIGS_DIR``: Ray Serve replicas, or services
on one volume). Then every read first lists the folder's ``*.yaml`` files with their signatures (mtime,
ctime, size, inode: one directory scan, tens of microseconds) and, when they differ from those last seen,
syncs: new or changed files are read as new entries, entries whose file is gone are dropped (never the
served rig nor the default, which keep their last good version), unchanged ones are kept. So a rig that
another process stored is built here on its first use (that request waits for its tables), and the first
request after a change waits while the changed files are parsed (milliseconds). A bad file, or one over
this store's limits, is logged once per version and skipped, as at start. A PUT or DELETE holds an
exclusive ``flock`` on ``rigs_dir/.lock`` from its sync and limit checks to its write: two processes can
neither both take the last free place nor interleave their writes. The folder must be storage that every
process sees, with atomic rename and working ``flock``: a local disk or a Docker volume, say (over NFS
the client's attribute cache delays when a change is seen).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from bev_service.calib.coverage import coverage_of, coverage_picture
from bev_service.calib.rigfile import RigSpec, load_rig, read_rig_spec, rig_from_spec, rig_to_yaml, save_rig
from bev_service.errors import BevError, CalibrationError, ModelError
from bev_service.geometry.rig import Rig
from bev_service.imageio import encode_png
from bev_service.runtime.pipeline import BevPipeline
from bev_service.service.errors import LimitError, ReadOnlyRigError, UnknownRigError
from bev_service.service.rig_folder import LOCK_FILE, Listing, Signature, locked_file, read_rig_text, scan_rigs_dir, signature_of

__all__ = ["RIG_ID", "RigEntry", "RigLimits", "RigStore", "UnknownRigError", "check_rig_id"]

log = logging.getLogger(__name__)

Sizes = tuple[tuple[int, int], ...]

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
class RigLimits:
    """What the store accepts; each is a setting (``BEV_<NAME>``), named in the error that refuses a rig."""

    max_rigs: int = 16  # stored rigs, besides the served rig file
    max_cameras: int = 16
    max_rig_cells: int = 4 * 1024 * 1024  # grid cells times cameras of one rig: its tables' size
    max_total_cells: int = 16 * 1024 * 1024  # the same, summed over the stored rigs
    max_mask_pixels: int = 48 * 1024 * 1024  # pixels of the masked cameras of one rig (a byte each)

    def check(self, cameras: int, grid_shape: tuple[int, int], mask_pixels: int = 0) -> None:
        """LimitError for a rig of ``cameras`` over a grid of ``grid_shape`` (and masks of ``mask_pixels``)
        over the per-rig limits: checked on the file's schema, before any table (or even the rig) is built."""
        if mask_pixels > self.max_mask_pixels:
            raise LimitError(
                f"masks of {mask_pixels} pixels in all; this service takes at most {self.max_mask_pixels} per rig",
                "max_mask_pixels",
            )
        if cameras > self.max_cameras:
            raise LimitError(f"{cameras} cameras; this service takes at most {self.max_cameras} per rig", "max_cameras")
        rows, cols = grid_shape
        if rows * cols * cameras > self.max_rig_cells:
            raise LimitError(
                f"{rows} x {cols} cells times {cameras} cameras is {rows * cols * cameras}; this service takes at most "
                f"{self.max_rig_cells} per rig (use larger cells or a smaller grid)",
                "max_rig_cells",
            )

    def check_spec(self, spec: RigSpec) -> None:
        """``check`` on a rig file's schema, before its masks are drawn."""
        masked = sum(c.image_size_hw[0] * c.image_size_hw[1] for c in spec.cameras if c.mask is not None)
        self.check(len(spec.cameras), spec.grid.shape, masked)


def mask_pixels(rig: Rig) -> int:
    return sum(c.mask.size for c in rig.cameras if c.mask is not None)


def cell_cameras(rig: Rig) -> int:
    return rig.grid.rows * rig.grid.cols * len(rig.cameras)


class RigEntry:
    """One rig and its pipeline, built on first use (once, whichever thread asks first)."""

    def __init__(self, rig: Rig, path: Path | None, build: Callable[[Rig], BevPipeline], input_sizes_hw: Sizes):
        self.rig = rig
        self.path = path  # the file it was loaded from or stored in
        self.input_sizes_hw = input_sizes_hw  # each camera's network input (h, w), in rig order
        self._build = build
        self._pipeline: BevPipeline | None = None
        self._failure: str | None = None
        self._lock = threading.Lock()

    @property
    def rig_id(self) -> str:
        return self.rig.rig_id

    @property
    def built(self) -> bool:
        return self._pipeline is not None

    @property
    def pipeline(self) -> BevPipeline:
        """The pipeline, built now if it was not yet (seconds: call it off the event loop). CalibrationError
        when the served model cannot run on this rig."""
        if self._pipeline is None:
            with self._lock:
                if self._pipeline is None:
                    if self._failure is None:
                        try:
                            self._pipeline = self._build(self.rig)
                        except ModelError as exc:  # e.g. cameras of another aspect ratio than the network's input
                            self._failure = f"the served model cannot run on this rig: {exc}"
                    if self._failure is not None:
                        raise CalibrationError(self._failure, field="cameras")
        assert self._pipeline is not None
        return self._pipeline

    @cached_property
    def yaml_text(self) -> str:
        """The rig file's text (masks inline as PNG: tens of milliseconds per camera; call it off the event
        loop). Kept on the entry, like the coverage picture."""
        return rig_to_yaml(self.rig)

    @cached_property
    def coverage_png(self) -> bytes:
        """Which camera owns each grid cell, as a PNG with a legend. Kept on the entry: a PUT makes a
        new entry, so the picture can never outlive its calibration. Slow: call it off the event loop."""
        tables = self.pipeline.projector.tables
        picture, _ = coverage_picture(tables, coverage_of(tables))
        return encode_png(picture)

    def close(self) -> None:
        if self._pipeline is not None:
            self._pipeline.close()


class RigStore:
    """Rig id to ``RigEntry``; reads are lock-free (one dict lookup; shared, one folder scan first), writes
    are serialised (shared, across processes too)."""

    def __init__(
        self,
        make_pipeline: Callable[[Rig], BevPipeline],
        rigs_dir: Path,
        rig_file: Path,
        *,
        input_sizes: Callable[[Rig], Sizes],
        limits: RigLimits | None = None,
        default_id: str | None = None,
        shared: bool = False,
    ) -> None:
        """``make_pipeline`` builds a rig's pipeline (slow); ``input_sizes`` tells each camera's network input
        (h, w) without building it; ``shared``: other processes store rigs in ``rigs_dir`` too."""
        self._make_pipeline = make_pipeline
        self._input_sizes = input_sizes
        self.rigs_dir = rigs_dir
        self.limits = limits or RigLimits()
        self.shared = shared
        self._entries: dict[str, RigEntry] = {}
        self._known: Listing = {}  # the folder's files as last read (loaded or refused), replaced whole
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()  # around every change to _entries and _known: short, never a build
        self._scan_error = ""
        served = load_rig(rig_file)
        check_rig_id(served.rig_id)
        try:
            self.limits.check(len(served.cameras), served.grid.shape, mask_pixels(served))
        except LimitError as exc:  # a served rig no request could use (e.g. more cameras than a form takes)
            raise CalibrationError(f"the served rig file {rig_file}: {exc}", field="cameras") from exc
        self.read_only_id = served.rig_id
        self.default_id = default_id or served.rig_id
        self._entries[served.rig_id] = self._entry(served, rig_file)
        self._load_dir()
        if self.default_id not in self._entries:
            raise CalibrationError(
                f"BEV_DEFAULT_RIG_ID names rig {self.default_id!r}, which is neither the rig file's "
                f"({served.rig_id!r}) nor a stored rig in {rigs_dir}",
                field="default_rig_id",
            )
        self.get(None).pipeline  # noqa: B018 (the default's tables are built before the service says ready)

    def _load_dir(self) -> None:
        """Rigs stored by earlier PUTs, read but not built. A bad file, one of the served rig file's id, or
        one over the limits is logged and skipped: one broken rig must not keep the service from starting."""
        with self._sync_lock:
            self._apply(scan_rigs_dir(self.rigs_dir))

    def _entry(self, rig: Rig, path: Path) -> RigEntry:
        return RigEntry(rig, path, self._make_pipeline, self._input_sizes(rig))

    # -- the folder, when shared --------------------------------------------------------------------

    def _sync(self) -> None:
        """Shared: the entries brought up to date with the folder, if it changed since last seen."""
        if not self.shared:
            return
        try:
            if scan_rigs_dir(self.rigs_dir) == self._known:
                return
            with self._sync_lock:
                self._apply(scan_rigs_dir(self.rigs_dir))  # again: another thread may have synced meanwhile
        except OSError as exc:  # e.g. the volume went away: serve the rigs as last seen rather than none
            if str(exc) != self._scan_error:
                log.warning("cannot read %s, serving the rigs last seen there: %s", self.rigs_dir, exc)
            self._scan_error = str(exc)

    def _apply(self, listing: Listing) -> None:
        """Entries for the files of ``listing`` (hold ``_sync_lock``): unchanged ones kept, new or changed
        ones read (not built), those whose file is gone dropped; then swapped in as a whole."""
        if listing == self._known:
            return
        keep = self._protected()
        entries = {k: e for k, e in self._entries.items() if k in keep or f"{k}.yaml" in listing}
        known: Listing = {}
        for name, listed in sorted(listing.items()):
            unchanged = self._known.get(name) == listed
            known[name] = listed if unchanged else self._read_into(entries, name, listed)
        self._entries, self._known = entries, known

    def _read_into(self, entries: dict[str, RigEntry], name: str, listed: Signature) -> Signature:
        """Reads the stored file ``name`` into ``entries`` (or, refused, drops its id but for the served and
        default rigs, which keep their last good version). Returns the signature of the version read."""
        path = self.rigs_dir / name
        signature = listed
        try:
            text, signature = read_rig_text(path)
            entry = self._entry(self._stored_rig(path, text, entries), path)
        except BevError as exc:  # logged once per version: an unchanged file is not read again
            log.error("skipping stored rig %s: %s", path, exc)
            if path.stem not in self._protected():
                entries.pop(path.stem, None)
            return signature
        entries[entry.rig_id] = entry
        return signature

    def _stored_rig(self, path: Path, text: str, entries: Mapping[str, RigEntry]) -> Rig:
        """The rig a stored file holds, if this store may serve it beside ``entries``."""
        spec = read_rig_spec(text)
        if spec.rig_id != path.stem:
            raise CalibrationError(f"rig_id {spec.rig_id!r} differs from the file name", field="rig_id")
        check_rig_id(spec.rig_id)
        if spec.rig_id == self.read_only_id:
            raise CalibrationError("has the served rig file's id, which is read-only", field="rig_id")
        self.limits.check_spec(spec)  # before its masks are drawn
        rig = rig_from_spec(spec, text, path.parent)
        self._check_room(rig, entries)
        return rig

    def _protected(self) -> set[str]:
        return {self.read_only_id, self.default_id}

    @contextmanager
    def _dir_lock(self) -> Iterator[None]:
        """Shared: no other process's PUT or DELETE between this one's sync, limit checks and write."""
        if not self.shared:
            yield
            return
        self.rigs_dir.mkdir(parents=True, exist_ok=True)
        with locked_file(self.rigs_dir / LOCK_FILE):
            yield

    # -- reads ------------------------------------------------------------------------------------

    def ids(self) -> list[str]:
        self._sync()
        return sorted(self._entries)

    def entries(self) -> list[RigEntry]:
        self._sync()
        snapshot = dict(self._entries)  # a DELETE in another thread must not pull a key from under us
        return [snapshot[k] for k in sorted(snapshot)]

    def get(self, rig_id: str | None) -> RigEntry:
        self._sync()
        return self._get(self.default_id if rig_id in (None, "") else str(rig_id))

    def _get(self, key: str) -> RigEntry:
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            raise UnknownRigError(f"unknown rig {key!r}; known rigs: {', '.join(sorted(entries))}")
        return entry

    def stored(self, except_id: str | None = None) -> list[RigEntry]:
        self._sync()
        return self._stored(self._entries, except_id)

    def _stored(self, entries: Mapping[str, RigEntry], except_id: str | None) -> list[RigEntry]:
        return [e for k, e in entries.items() if k != self.read_only_id and k != except_id]

    def build_all(self, stop: threading.Event | None = None) -> None:
        """Builds every rig's tables not built yet, one at a time, until ``stop`` is set (for a background
        thread once the service is ready)."""
        for entry in self.entries():
            if stop is not None and stop.is_set():
                return
            try:
                entry.pipeline  # noqa: B018
            except BevError as exc:
                log.error("stored rig %s cannot be served: %s", entry.rig_id, exc)

    # -- writes -----------------------------------------------------------------------------------

    def _check_writable(self, rig_id: str) -> None:
        if rig_id == self.read_only_id:
            raise ReadOnlyRigError(
                f"rig {rig_id!r} is the served rig file and read-only; store your rig under another id "
                "(and serve it as the default with BEV_DEFAULT_RIG_ID)"
            )

    def _check_room(self, rig: Rig, entries: Mapping[str, RigEntry] | None = None) -> None:
        """LimitError unless ``rig`` fits the limits beside the stored rigs of ``entries`` (default: this
        store's) other than one of its own id."""
        self.limits.check(len(rig.cameras), rig.grid.shape, mask_pixels(rig))
        others = self._stored(self._entries if entries is None else entries, except_id=rig.rig_id)
        if len(others) >= self.limits.max_rigs:
            raise LimitError(
                f"{len(others)} rigs are stored, the most this service keeps; delete one first (DELETE /v1/rigs/{{id}})",
                "max_rigs",
                status=409,
            )
        total = sum(cell_cameras(e.rig) for e in others) + cell_cameras(rig)
        if total > self.limits.max_total_cells:
            raise LimitError(
                f"the stored rigs would hold {total} cells times cameras, over this service's {self.limits.max_total_cells}; "
                "delete a rig first or use larger cells",
                "max_total_cells",
                status=409,
            )

    def put(self, rig_id: str, text: str) -> tuple[RigEntry, bool]:
        """Validate, check the limits, build the tables, store atomically, swap in. Returns the entry and
        whether it is new. Slow (the tables): call it off the event loop."""
        check_rig_id(rig_id)
        self._check_writable(rig_id)
        spec = read_rig_spec(text)
        if spec.rig_id != rig_id:
            raise CalibrationError(f"the file's rig_id {spec.rig_id!r} differs from the path's {rig_id!r}", field="rig_id")
        self.limits.check_spec(spec)
        # One rig built at a time: concurrent PUTs cannot add up their memory. Shared, the folder's lock is
        # held through the build too: a second process's PUT waits rather than passing the limits beside it.
        with self._write_lock, self._dir_lock():
            self._sync()  # the other processes' rigs count against the limits
            rig = rig_from_spec(spec, text)
            self._check_room(rig)
            entry = self._entry(rig, self.rigs_dir / f"{rig_id}.yaml")
            entry.pipeline  # noqa: B018 (the slow part, before anything changes; CalibrationError if the model cannot run on it)
            self.rigs_dir.mkdir(parents=True, exist_ok=True)
            old = self._commit(rig_id, entry)
        log.info("rig %s %s (fingerprint %s)", rig_id, "replaced" if old else "added", rig.fingerprint)
        return entry, old is None

    def _commit(self, rig_id: str, entry: RigEntry) -> RigEntry | None:
        """Writes the entry's file and swaps it in; returns the entry it replaced. Under ``_sync_lock``, so
        that a reader's sync cannot read the new file as a second, unbuilt entry before it is recorded."""
        assert entry.path is not None
        with self._sync_lock:
            save_rig(entry.rig, entry.path, description=f"stored by PUT /v1/rigs/{rig_id}")
            old = self._entries.get(rig_id)
            self._entries[rig_id] = entry  # one reference assignment: the swap
            if self.shared:
                self._known = {**self._known, entry.path.name: signature_of(entry.path.stat())}
        return old

    def delete(self, rig_id: str) -> None:
        """Removes a stored rig and its file. Requests holding its entry finish with it."""
        check_rig_id(rig_id)
        self._check_writable(rig_id)
        with self._write_lock, self._dir_lock():
            self._sync()  # another process may have deleted it (404) or replaced it
            entry = self._get(rig_id)  # UnknownRigError
            if rig_id == self.default_id:
                raise ReadOnlyRigError(f"rig {rig_id!r} is this service's default (BEV_DEFAULT_RIG_ID); it cannot be deleted")
            with self._sync_lock:
                del self._entries[rig_id]
                if entry.path is not None:
                    entry.path.unlink(missing_ok=True)
                    self._known = {k: v for k, v in self._known.items() if k != entry.path.name}
        log.info("rig %s deleted", rig_id)

    def close(self) -> None:
        for entry in self._entries.values():
            entry.close()
