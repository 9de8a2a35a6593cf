"""Writer side of the results store: :class:`Store` (create/open, runs, delete, gc, images).

A compute job writes through :meth:`Store.staging`, which returns a
:class:`~xaidash.store.write.staging.Staging` (chunks, publish); the directory layout is
:mod:`xaidash.store.write.layout`, the shared images :mod:`xaidash.store.write.images`, file names,
atomic writes and locks :mod:`xaidash.store.files`.

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

from xaidash.errors import UserError
from xaidash.store import files
from xaidash.store.builder import conform
from xaidash.store.files import FORMAT, MANIFEST, MARKER, FileLock, read_manifest, require_store
from xaidash.store.schema import SCHEMA_VERSION
from xaidash.store.write import images
from xaidash.store.write.layout import StoreLayout, validate_fingerprint, validate_run_id
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


class Store(StoreLayout):
    """A results store directory, writer side. Create with :meth:`create` or :meth:`open`."""

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
        p = require_store(path)
        return cls.create(p, durable)

    # runs
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
    def thumbnail_ids(self, dataset_fingerprint: str) -> set[str]:
        """image_ids that already have an images row for this dataset fingerprint."""
        return images.thumbnail_ids(self, dataset_fingerprint)

    def add_images(self, dataset_fingerprint: str, table: pa.Table) -> None:
        """Append images rows for a dataset, skipping stored image_ids (:func:`images.add_images`)."""
        images.add_images(self, dataset_fingerprint, table)

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
