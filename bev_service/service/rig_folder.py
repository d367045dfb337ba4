"""The rigs folder as several processes see it: its stored files with their signatures, a file read with the
signature of the very version read, and the folder's lock file (``service.rigs`` explains how a shared store
uses them)."""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bev_service.errors import CalibrationError

__all__ = ["LOCK_FILE", "Listing", "Signature", "locked_file", "read_rig_text", "scan_rigs_dir", "signature_of"]

# (st_mtime_ns, st_ctime_ns, st_size, st_ino) of a stored file: an atomic replace gives a new inode, an
# edit in place a new ctime (which, unlike mtime, no copy tool can set back).
Signature = tuple[int, int, int, int]
Listing = dict[str, Signature]  # "<rig id>.yaml" to its signature

LOCK_FILE = ".lock"  # in rigs_dir, when shared: held by a PUT or DELETE (not a *.yaml: never read as a rig)


def signature_of(st: os.stat_result) -> Signature:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def scan_rigs_dir(folder: Path) -> Listing:
    """Each regular ``*.yaml`` file of ``folder`` with its signature: one directory read and one stat per
    file. Empty when the folder does not exist; other OSErrors propagate."""
    listing: Listing = {}
    try:
        with os.scandir(folder) as found:
            for item in found:
                if not item.name.endswith(".yaml"):
                    continue
                try:
                    st = item.stat()
                except FileNotFoundError:  # removed since the directory was read
                    continue
                if stat.S_ISREG(st.st_mode):
                    listing[item.name] = signature_of(st)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return listing


def read_rig_text(path: Path) -> tuple[str, Signature]:
    """A stored file's text and the signature of the very version read (taken from the open file)."""
    try:
        with path.open("rb") as f:
            signature = signature_of(os.fstat(f.fileno()))
            data = f.read()
    except OSError as exc:
        raise CalibrationError(f"cannot read rig file {path}: {exc.strerror}") from exc
    try:
        return data.decode("utf-8"), signature
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"cannot read rig file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


@contextmanager
def locked_file(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing), held while the block runs. flock locks belong
    to the open file, so two stores of one process exclude each other as two processes do."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
