"""The store's files: the names every side agrees on, durable atomic writes, and ``flock`` locks.

Writers change nothing in place: a file is written next to its final name and renamed over it
(``os.replace``), so a reader sees the old file or the new one, never half of one. With
``durable`` the file is fsynced before the rename (survives power loss, not only process death).

The writer (:mod:`xaidash.store.write.writer`, :mod:`xaidash.store.write.staging`) and the reader
(:mod:`xaidash.store.read.reader`) import the names from here; the reader needs nothing else of the
writer side. Callers use this module's functions as ``files.write_parquet_atomic(...)``, so a test
that slows one of them down patches it in one place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xaidash.errors import UserError

#: Marker file of a store directory (format + schema version).
MARKER = ".xaidash-store"
#: A run directory's manifest, written last: a run directory without it is not a run.
MANIFEST = "manifest.json"
#: ``format`` of the marker and of every manifest.
FORMAT = "xaidash-store"
#: The store's folder of published runs (``runs/<run_id>/``), and of the images shared per dataset
#: fingerprint (``images/<fingerprint>/part-*.parquet``): what both the writer and the reader find.
RUNS_DIR = "runs"
IMAGES_DIR = "images"
#: The images part files of one fingerprint, in that fingerprint's folder (sorted = oldest first).
IMAGE_PARTS = "part-*.parquet"


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The manifest of a run directory, or None when it is missing/corrupt (not a run)."""
    return read_json(run_dir / MANIFEST)


def image_parts(store: Path, fingerprint: str) -> list[Path]:
    """The images part files of a dataset fingerprint in the store at ``store``, oldest first."""
    d = store / IMAGES_DIR / fingerprint
    return sorted(d.glob(IMAGE_PARTS)) if d.is_dir() else []


def distinct_values(path: Path, column: str) -> list[str]:
    """The distinct non-null values of one string column of a Parquet file, sorted (only that
    column is read). For a run's cams file the writer records them in the manifest at publish:
    at a million images the scan takes a second or two (thousands of row groups)."""
    if not path.is_file():
        return []
    col = pq.read_table(path, columns=[column]).column(column)
    return sorted(str(v) for v in pc.unique(col).to_pylist() if v is not None)


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives a crash (best effort: not on all OSes)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_path(path: Path) -> Path:
    """Where an atomic write of ``path`` writes first (a hidden name ``gc`` recognizes)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def replace(tmp: Path, path: Path, durable: bool) -> None:
    """Rename a fully written ``tmp`` over ``path``, fsyncing it first when ``durable``."""
    if durable:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file + rename: readers see old or new, never half."""
    tmp = tmp_path(path)
    tmp.write_bytes(data)
    replace(tmp, path, durable)


def write_parquet_atomic(path: Path, table: pa.Table, row_group_size: int, durable: bool) -> None:
    """Write one zstd Parquet file via tmp + rename."""
    tmp = tmp_path(path)
    pq.write_table(table, tmp, compression="zstd", row_group_size=max(1, row_group_size))
    replace(tmp, path, durable)


class FileLock:
    """A ``flock`` (exclusive, or shared) held for the lifetime of the object.

    flock (not a pid file) is what tells a live writer from a dead one: the kernel drops it when
    the process dies, even on SIGKILL, and a recycled pid cannot fake it. Non-blocking unless
    ``blocking``: an OSError says another process holds it.
    """

    def __init__(self, path: Path, shared: bool = False, blocking: bool = False) -> None:
        self.path = path
        self._fd: int | None = None  # set before open: __del__ must work when open fails
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        op = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(self._fd, op)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise

    @classmethod
    def try_acquire(cls, path: Path, shared: bool = False) -> FileLock | None:
        """The lock, or None when another process holds it."""
        try:
            return cls(path, shared=shared)
        except OSError:
            return None

    def still_at_path(self) -> bool:
        """Whether the locked file is still the one at ``path`` (not renamed away or deleted)."""
        if self._fd is None:
            return False
        try:
            a, b = os.fstat(self._fd), os.stat(self.path)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # pragma: no cover - safety net
        self.release()


@contextlib.contextmanager
def blocking_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (waiting for it) for the ``with`` block."""
    lock = FileLock(path, blocking=True)
    try:
        yield
    finally:
        lock.release()


def require_store(path: str | Path) -> Path:
    """``path`` as an absolute path when it holds a store; UserError saying what to run if not."""
    p = Path(path).expanduser().absolute()
    if not (p / MARKER).is_file():
        raise UserError(f"{p} is not an xaidash store (no {MARKER}); run `xaidash compute --store {p}` first")
    return p
