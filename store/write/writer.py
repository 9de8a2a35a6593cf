"""Writer side of the results store: :class:`Store` (create/open, runs, delete, gc, images).

A compute job writes through :meth:`Store.staging`, which returns a
:class:`~xaidash.store.write.staging.Staging` (chunks, publish); file names, atomic writes and locks are
in :mod:`xaidash.store.files`. Layout (the only place besides :mod:`xaidash.store.read.reader` that
knows it)::

    STORE/
      .xaidash-store                 marker: this directory is a store (format + schema version)
      runs/<run_id>/                 one published, immutable run
        manifest.json                written last; a run without it does not exist
        runs.parquet predictions.parquet cams.parquet embeddings.parquet neighbors.parquet
        class_metrics.parquet confusion.parquet faithfulness.parquet failures.parquet
      images/<dataset_fingerprint>/  thumbnails + metadata, shared by every run over that data
        part-<ns>-<pid>.parquet      appended atomically, deduplicated by image_id
        .lock                        flock serializing appends
      _staging/<sha1(job_key)[:20]>/ a job being written; invisible to readers (see staging.py)
      _trash/                        runs being deleted (rename first, then rmtree)

Garbage collection (``Store.gc``): a staging directory whose ``.lock`` no process holds (neither
exclusively nor shared) belongs to dead writers. It is removed when its last activity is older
than ``grace_s`` (default 0) unless ``keep_resumable`` is set and it has done chunks that a
re-run of the same job would reuse. Staging of another host is only removed after at least an
hour, because ``flock`` across hosts on network file systems is not reliable.

The names compute imports from here (``Store``, ``Staging``, ``AlreadyPublished``,
``read_manifest``, ``MANIFEST``, ``MARKER``, ``conform``, ...) stay importable from this module
wherever they live.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from xaidash.constants import FINGERPRINT_RE, RUN_ID_RE
from xaidash.errors import UserError
from xaidash.store import files
from xaidash.store.builder import conform
from xaidash.store.files import FORMAT, MANIFEST, MARKER, FileLock, blocking_lock, read_manifest
from xaidash.store.schema import SCHEMA_VERSION, TABLES
from xaidash.store.write.staging import (
    CHUNK_TABLES,
    GLOBAL_TABLES,
    AlreadyPublished,
    Staging,
    job_key_hash,
    last_activity,
    new_run_id,
    staging_owners,
)

__all__ = [
    "CHUNK_TABLES",
    "FORMAT",
    "GLOBAL_TABLES",
    "MANIFEST",
    "MARKER",
    "OTHER_HOST_GRACE_S",
    "AlreadyPublished",
    "Staging",
    "Store",
    "conform",
    "job_key_hash",
    "new_run_id",
    "read_manifest",
    "validate_fingerprint",
    "validate_run_id",
]

log = logging.getLogger(__name__)

#: Staging of another host is kept at least this long (flock does not span hosts reliably).
OTHER_HOST_GRACE_S = 3600.0


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a well-formed run id, else raise UserError."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise UserError(f"invalid run id {run_id!r}: run ids match {RUN_ID_RE.pattern}")
    return run_id


def validate_fingerprint(fp: str) -> str:
    """Return ``fp`` if it can be used as a directory name, else raise UserError."""
    if not isinstance(fp, str) or not FINGERPRINT_RE.match(fp):
        raise UserError(f"invalid dataset fingerprint {fp!r}: must match {FINGERPRINT_RE.pattern}")
    return fp


class Store:
    """A results store directory, writer side. Create with :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, durable: bool = True) -> None:
        self.path = path
        #: fsync files before renaming them (survive power loss, not only process death).
        self.durable = durable

    # layout
    @property
    def runs_dir(self) -> Path:
        return self.path / "runs"

    @property
    def images_dir(self) -> Path:
        return self.path / "images"

    @property
    def staging_dir(self) -> Path:
        return self.path / "_staging"

    @property
    def trash_dir(self) -> Path:
        return self.path / "_trash"

    @classmethod
    def create(cls, path: str | Path, durable: bool = True) -> Store:
        """Open the store at ``path``, creating it (mkdir -p) if needed.

        Raises UserError when ``path`` is a file, or a non-empty directory that is not a store
        (so a typo never scatters runs into, say, a dataset directory).
        """
        p = Path(path).expanduser().absolute()
        try:
            if p.exists() and not p.is_dir():
                raise UserError(f"store path {p} is a file, not a directory; choose a directory")
            # A store another process is creating right now holds only its marker's temp file
            # (and, a moment later, the marker): that is not "some other directory". The marker
            # is looked for again after the listing, which may have caught it being renamed.
            if p.is_dir() and not (p / MARKER).exists() and any(
                not e.name.startswith(f".{MARKER}.tmp-") for e in p.iterdir()
            ) and not (p / MARKER).exists():
                raise UserError(
                    f"{p} exists and is not an xaidash store (no {MARKER} file); "
                    "choose a new or empty directory"
                )
            p.mkdir(parents=True, exist_ok=True)
            if not (p / MARKER).exists():
                marker = {"format": FORMAT, "schema_version": SCHEMA_VERSION}
                files.atomic_write_bytes(p / MARKER, json.dumps(marker).encode(), durable)
            store = cls(p, durable)
            for d in (store.runs_dir, store.images_dir, store.staging_dir, store.trash_dir):
                d.mkdir(exist_ok=True)
        except OSError as exc:  # permissions, read-only file system, ...
            reason = exc.strerror or exc
            raise UserError(f"cannot use {p} as a store: {reason}; choose a writable directory") from exc
        return store

    @classmethod
    def open(cls, path: str | Path, durable: bool = True) -> Store:
        """Open an existing store; UserError if ``path`` is not one."""
        p = Path(path).expanduser().absolute()
        if not (p / MARKER).is_file():
            raise UserError(
                f"{p} is not an xaidash store (no {MARKER}); run `xaidash compute --store {p}` first"
            )
        return cls.create(p, durable)

    # runs
    def run_dirs(self) -> list[Path]:
        """Directories of published runs (manifest present), sorted by name."""
        if not self.runs_dir.is_dir():
            return []
        return sorted(
            d for d in self.runs_dir.iterdir() if not d.name.startswith(".") and (d / MANIFEST).is_file()
        )

    def published_job(self, job_key: str) -> str | None:
        """run_id under which ``job_key`` was published, or None.

        Scans manifests (a few ms for hundreds of runs); the manifests are the single source of
        truth, so deleting a run also frees its job key.
        """
        for d in self.run_dirs():
            m = read_manifest(d)
            if m is not None and m.get("job_key") == job_key:
                return str(m.get("run_id", d.name))
        return None

    def staging(self, job_key: str, owner: str | None = None) -> Staging:
        """A (possibly resumed) staging area for ``job_key``, invisible to readers.

        ``owner`` None: the only writer of the job (exclusive). ``owner`` given (e.g.
        ``"shard-0-of-4"``): one of several writers that run at the same time and write disjoint
        chunks into the same staging (see :class:`Staging`).
        UserError if the job key was already published (:class:`AlreadyPublished`) or a live
        process already writes it as the same owner (or exclusively).
        """
        if not job_key:
            raise UserError("empty job key")
        done = self.published_job(job_key)
        if done is not None:
            raise AlreadyPublished(job_key, done)
        return Staging(self, job_key, owner)

    def delete(self, run_id: str) -> None:
        """Delete a run atomically: rename it out of runs/ (readers stop seeing it), then rmtree."""
        validate_run_id(run_id)
        src = self.runs_dir / run_id
        if not src.is_dir():
            raise UserError(f"no run {run_id!r} in {self.path}; see `xaidash runs list --store {self.path}`")
        self.trash_dir.mkdir(exist_ok=True)
        dst = self.trash_dir / f"{run_id}-{time.time_ns()}"
        os.rename(src, dst)
        if self.durable:
            files.fsync_dir(self.runs_dir)
        shutil.rmtree(dst, ignore_errors=True)

    # images (shared per dataset fingerprint)
    def _image_parts(self, fp: str) -> list[Path]:
        d = self.images_dir / fp
        return sorted(d.glob("part-*.parquet")) if d.is_dir() else []

    def thumbnail_ids(self, dataset_fingerprint: str) -> set[str]:
        """image_ids that already have an images row for this dataset fingerprint."""
        validate_fingerprint(dataset_fingerprint)
        ids: set[str] = set()
        for part in self._image_parts(dataset_fingerprint):
            col = pq.read_table(part, columns=["image_id"]).column("image_id")
            ids.update(col.to_pylist())
        return ids

    def add_images(self, dataset_fingerprint: str, table: pa.Table) -> None:
        """Append images rows (thumbnails) for a dataset, skipping image_ids already stored.

        Serialized per fingerprint with a flock so two concurrent jobs over the same data never
        store an image twice; each append is one atomically renamed, image_id-sorted part file.
        """
        fp = validate_fingerprint(dataset_fingerprint)
        d = self.images_dir / fp
        d.mkdir(parents=True, exist_ok=True)
        with blocking_lock(d / ".lock"):
            existing = self.thumbnail_ids(fp)
            t = conform(
                table.drop_columns([c for c in ("dataset_fingerprint",) if c in table.column_names]),
                TABLES["images"].schema,
                "images",
                fill={"dataset_fingerprint": fp},
            )
            ids = t.column("image_id").to_pylist()
            keep: list[int] = []
            seen = set(existing)
            for i, image_id in enumerate(ids):
                if image_id not in seen:
                    seen.add(image_id)
                    keep.append(i)
            if not keep:
                return
            t = t.take(pa.array(keep, type=pa.int64())).sort_by("image_id")
            part = d / f"part-{time.time_ns():020d}-{os.getpid()}.parquet"
            files.write_parquet_atomic(part, t, TABLES["images"].row_group_size, self.durable)

    # garbage collection
    def gc(self, grace_s: float = 0.0, keep_resumable: bool = False, dry_run: bool = False) -> list[str]:
        """Remove leftovers of dead writers; return the removed paths.

        * staging dirs whose lock no live process holds and whose last activity is older than
          ``grace_s`` (other hosts: at least an hour); with ``keep_resumable`` staging that has
          done chunks is kept so re-running the same job resumes it;
        * ``_trash`` entries (a delete interrupted between rename and rmtree);
        * temporary files of interrupted atomic writes under ``images/`` (never those of a live
          :meth:`add_images`: a fingerprint folder whose lock is held is skipped).
        Published runs are never touched. ``dry_run`` only reports what would be removed.
        """
        removed: list[str] = []
        now = time.time()
        host = socket.gethostname()
        if self.staging_dir.is_dir():
            for d in sorted(self.staging_dir.iterdir()):
                if not d.is_dir():
                    continue
                lock = FileLock.try_acquire(d / ".lock")
                if lock is None:
                    continue  # a live writer (or any live shard, which holds it shared) holds it
                try:
                    age = now - last_activity(d)
                    grace = grace_s
                    if {o.get("hostname") for o in staging_owners(d)} - {None, host}:
                        grace = max(grace, OTHER_HOST_GRACE_S)
                    if age < grace:
                        continue
                    if keep_resumable and any((d / "chunks").glob("*.done")):
                        continue
                    if not dry_run:
                        shutil.rmtree(d, ignore_errors=True)
                    removed.append(str(d))
                finally:
                    lock.release()
        if self.trash_dir.is_dir():
            for d in sorted(self.trash_dir.iterdir()):
                if not dry_run:
                    shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
                removed.append(str(d))
        if self.images_dir.is_dir():
            for fp_dir in sorted(self.images_dir.iterdir()):
                if not fp_dir.is_dir():
                    continue
                # add_images holds this lock while it writes its temp file: a held lock means a
                # live append, whose temp file must survive. Holding it ourselves keeps a new
                # append from starting while we clean up.
                fp_lock = FileLock.try_acquire(fp_dir / ".lock")
                if fp_lock is None:
                    continue
                try:
                    for tmp in sorted(fp_dir.glob(".*.tmp-*")):
                        try:
                            age = now - tmp.stat().st_mtime
                        except OSError:
                            continue
                        if age >= grace_s:
                            if not dry_run:
                                tmp.unlink(missing_ok=True)
                            removed.append(str(tmp))
                finally:
                    fp_lock.release()
        for r in removed:
            log.info("gc: %s %s", "would remove" if dry_run else "removed", r)
        return removed
