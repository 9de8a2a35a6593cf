"""Writer side of the results store: :class:`Store` and :class:`Staging`.

Layout (the only place besides :mod:`xaidash.store.reader` that knows it)::

    STORE/
      .xaidash-store                 marker: this directory is a store (format + schema version)
      runs/<run_id>/                 one published, immutable run
        manifest.json                written last; a run without it does not exist
        runs.parquet predictions.parquet cams.parquet embeddings.parquet neighbors.parquet
        class_metrics.parquet confusion.parquet faithfulness.parquet failures.parquet
      images/<dataset_fingerprint>/  thumbnails + metadata, shared by every run over that data
        part-<ns>-<pid>.parquet      appended atomically, deduplicated by image_id
        .lock                        flock serializing appends
      _staging/<sha1(job_key)[:20]>/ a job being written; invisible to readers
        .lock  owner.json            flock held by the live writer(s) (shared by shards); pid, host
        owners/<owner>.lock .json    one per concurrent writer (shard-I-of-N), held exclusively
        .publish.lock                shared while a chunk is written, exclusive while publishing
        parts/<table>/<chunk>.parquet  one file per chunk and table (tmp + rename)
        chunks/<chunk>.done          written after the chunk's parts: the chunk is complete
        out/                         publish() builds the run here, then renames it to runs/
      _trash/                        runs being deleted (rename first, then rmtree)

Why this shape:

* Atomic publish is a single ``os.rename`` of a fully written directory (manifest inside) from
  ``_staging/<key>/out`` to ``runs/<run_id>``: a reader lists ``runs/`` and sees either the whole
  run or nothing, and a SIGKILLed writer leaves nothing under ``runs/``.
* Streaming: every chunk's tables go to their own part files, so memory is bounded by one chunk.
  ``publish`` compacts parts with DuckDB (an out-of-core sort) into one file per table, sorted
  so point lookups by image_id prune row groups.
* Resume: a new :class:`Staging` with the same job key reuses the done chunks of a dead writer
  (``done_chunks()``), parts of unfinished chunks are ignored and overwritten.
* A job key is published at most once: the manifest of every run records its job key and
  ``Store.staging``/``publish`` refuse a key already present. Deleting the run frees the key.
* Concurrent shards: several writers (``Store.staging(key, owner="shard-I-of-N")``) share one
  staging, each writing its own chunks; exactly one publishes, under the exclusive
  ``.publish.lock`` after re-checking that the key was not published meanwhile (see
  :class:`Staging`).
* Garbage collection (``Store.gc``): a staging directory whose ``.lock`` no process holds
  (neither exclusively nor shared) belongs to dead writers. It is removed when its last
  activity is older than ``grace_s`` (default 0) unless ``keep_resumable`` is set and it has
  done chunks that a re-run of the same job would reuse. Staging of another host is only
  removed after at least an hour, because ``flock`` across hosts on network file systems is not
  reliable.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from xaidash.constants import CHUNK_ID_RE, FINGERPRINT_RE, RUN_ID_RE
from xaidash.errors import UserError
from xaidash.store.schema import (
    RUN_TABLES,
    RUNS,
    SCHEMA_VERSION,
    TABLES,
)

log = logging.getLogger(__name__)

MARKER = ".xaidash-store"
MANIFEST = "manifest.json"
FORMAT = "xaidash-store"
#: Tables a chunk may contain (per-image phase). Global tables go to publish().
CHUNK_TABLES = ("predictions", "cams", "embeddings", "faithfulness", "failures", "neighbors", "images")
#: Tables publish() accepts as global-phase tables.
GLOBAL_TABLES = (
    "neighbors",
    "class_metrics",
    "confusion",
    "embeddings",
    "failures",
    "predictions",
    "cams",
    "faithfulness",
)
#: Staging of another host is kept at least this long (flock does not span hosts reliably).
OTHER_HOST_GRACE_S = 3600.0
_COMPACT_BATCH_ROWS = 8192



# --------------------------------------------------------------------------------------------
# small helpers


def _fsync_dir(path: Path) -> None:
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


def _atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file + rename: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_parquet_atomic(path: Path, table: pa.Table, row_group_size: int, durable: bool) -> None:
    """Write one Parquet file via tmp + rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd", row_group_size=max(1, row_group_size))
    if durable:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, path)


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


class AlreadyPublished(UserError):
    """The job key has a published run (``run_id``): nothing left to write."""

    def __init__(self, job_key: str, run_id: str) -> None:
        super().__init__(
            f"job {job_key!r} was already published as run {run_id}; "
            f"delete it first (xaidash runs delete {run_id}) to recompute"
        )
        self.job_key = job_key
        self.run_id = run_id


_owner_re = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


def job_key_hash(job_key: str) -> str:
    """Directory name of a job's staging area (job keys may contain any characters)."""
    return hashlib.sha1(job_key.encode("utf-8")).hexdigest()[:20]


def new_run_id(job_key: str, now: _dt.datetime | None = None) -> str:
    """Sortable, unique run id: UTC time to the second + 6 hex chars of a hash of the job key."""
    now = now or _dt.datetime.now(_dt.UTC)
    h = hashlib.sha1(f"{job_key}\0{time.time_ns()}\0{os.getpid()}".encode()).hexdigest()[:6]
    return f"{now:%Y%m%d-%H%M%S}-{h}"


def conform(
    table: pa.Table, schema: pa.Schema, name: str, fill: Mapping[str, object] | None = None
) -> pa.Table:
    """Cast ``table`` to ``schema``: reorder, cast types, add missing nullable columns as null.

    ``fill`` gives constant values for columns the caller need not supply (e.g. run_id).
    Unknown columns and missing required columns are programming errors (ValueError), so a
    mismatch between compute and store is caught at the first chunk, not at read time.
    """
    fill = dict(fill or {})
    unknown = [c for c in table.column_names if c not in schema.names]
    if unknown:
        raise ValueError(f"table {name!r}: unknown columns {unknown}; expected {schema.names}")
    n = table.num_rows
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(
                    f"table {name!r}: column {field.name!r} cannot be {field.type}: {exc}"
                ) from exc
            if not field.nullable and col.null_count:
                raise ValueError(f"table {name!r}: column {field.name!r} must not contain nulls")
        elif field.name in fill:
            col = pa.array([fill[field.name]] * n, type=field.type)
        elif field.nullable:
            col = pa.nulls(n, type=field.type)
        else:
            raise ValueError(f"table {name!r}: required column {field.name!r} is missing")
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=schema)


def _staged_schema(name: str) -> pa.Schema:
    """Schema of a staged part: the table schema without run_id (unknown until publish)."""
    schema = TABLES[name].schema
    # images rows are per dataset, not per run: their fingerprint is the run's, added at publish
    drop = "dataset_fingerprint" if name == "images" else "run_id"
    return schema.remove(schema.get_field_index(drop))


def _jsonable(value: object) -> object:
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        return value.item()  # type: ignore[no-any-return]
    return value


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The manifest of a run directory, or None when it is missing/corrupt (not a run)."""
    try:
        with open(run_dir / MANIFEST, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class _FileLock:
    """An exclusive, non-blocking ``flock`` held for the lifetime of the object.

    flock (not a pid file) is what tells a live writer from a dead one: the kernel drops it when
    the process dies, even on SIGKILL, and a recycled pid cannot fake it.
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
    def try_acquire(cls, path: Path, shared: bool = False) -> _FileLock | None:
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
def _blocking_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Store


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
            # (and, a moment later, the marker): that is not "some other directory".
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
                _atomic_write_bytes(p / MARKER, json.dumps(marker).encode(), durable)
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
            _fsync_dir(self.runs_dir)
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
        with _blocking_lock(d / ".lock"):
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
            _write_parquet_atomic(part, t, TABLES["images"].row_group_size, self.durable)

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
                lock = _FileLock.try_acquire(d / ".lock")
                if lock is None:
                    continue  # a live writer (or any live shard, which holds it shared) holds it
                try:
                    age = now - _last_activity(d)
                    grace = grace_s
                    if _owner_hosts(d) - {None, host}:
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
                fp_lock = _FileLock.try_acquire(fp_dir / ".lock")
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


def _read_owner(d: Path) -> dict[str, Any]:
    try:
        with open(d / "owner.json", encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _owner_hosts(d: Path) -> set[str | None]:
    """Hostnames of every writer that ever owned the staging dir (exclusive and shard owners)."""
    owners = [_read_owner(d)]
    if (d / "owners").is_dir():
        owners += [_read_json(p) for p in (d / "owners").glob("*.json")]
    return {o.get("hostname") for o in owners if o}


def _read_json(p: Path) -> dict[str, Any]:
    try:
        with open(p, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _last_activity(d: Path) -> float:
    """Newest mtime of the staging dir's bookkeeping (owner files, chunk markers, dirs)."""
    times = [d.stat().st_mtime]
    for p in (d / "owner.json", d / "owners", d / "chunks", d / "parts", d / "out"):
        with contextlib.suppress(OSError):
            times.append(p.stat().st_mtime)
    return max(times)


# --------------------------------------------------------------------------------------------
# Staging


class Staging:
    """One compute job being written. Obtain with :meth:`Store.staging`.

    Locks (all ``flock``, so the kernel drops them when a writer dies, SIGKILL included):

    * ``.lock`` says the staging is alive. The exclusive writer (``owner`` None) holds it
      exclusively for its whole life; each of several concurrent writers (``owner`` given, e.g.
      one per shard) holds it *shared* plus ``owners/<owner>.lock`` exclusively, so two shards
      of one job run at the same time while the same shard twice, or a shard next to an exclusive
      writer, is refused. ``gc`` removes a staging only when it can take ``.lock`` exclusively,
      i.e. when no writer of any kind is alive.
    * ``.publish.lock``: :meth:`write_chunk` holds it shared while it writes one chunk;
      :meth:`publishing` / :meth:`publish` hold it exclusively, so the global phase and publish
      never see a chunk half-rewritten, and exactly one writer publishes: the one that gets the
      lock re-checks that the job was not published meanwhile (:class:`AlreadyPublished`).

    The locks are released by :meth:`publish`, :meth:`abort`, :meth:`close` or the death of the
    process. Concurrent writers must write disjoint chunks (shards of the same plan).
    """

    def __init__(self, store: Store, job_key: str, owner: str | None = None) -> None:
        if owner is not None and not _owner_re.match(owner):
            raise ValueError(f"invalid staging owner {owner!r}: must match {_owner_re.pattern}")
        self.store = store
        self.job_key = job_key
        self.owner = owner
        self.dir = store.staging_dir / job_key_hash(job_key)
        self._lock: _FileLock | None = None
        self._owner_lock: _FileLock | None = None
        self._publish_lock: _FileLock | None = None
        for _attempt in range(20):
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                lock = _FileLock.try_acquire(self.dir / ".lock", shared=owner is not None)
            except FileNotFoundError:  # pragma: no cover - removed between mkdir and open
                continue
            if lock is None:
                raise UserError(self._busy_message())
            if lock.still_at_path():
                break
            # The staging was renamed away (published) or removed (gc) between mkdir and flock:
            # what we locked is not the staging at this path any more.
            lock.release()
            done = store.published_job(job_key)
            if done is not None:
                raise AlreadyPublished(job_key, done)
        else:  # pragma: no cover - a staging recreated and removed 20 times in a row
            raise UserError(f"staging of job {job_key!r} keeps disappearing; is a gc running in a loop?")
        self._lock = lock
        try:
            if owner is not None:
                (self.dir / "owners").mkdir(exist_ok=True)
                self._owner_lock = _FileLock.try_acquire(self.dir / "owners" / f"{owner}.lock")
                if self._owner_lock is None:
                    raise UserError(self._busy_message())
            owner_file = self.dir / "owner.json" if owner is None else self.dir / "owners" / f"{owner}.json"
            previous = _read_json(owner_file)
            info = {
                "job_key": job_key,
                "owner": owner,
                "pid": os.getpid(),
                "hostname": socket.gethostname(),
                "started": _dt.datetime.now(_dt.UTC).isoformat(),
                "resumed_from_pid": previous.get("pid"),
            }
            _atomic_write_bytes(owner_file, json.dumps(info).encode(), store.durable)
            (self.dir / "parts").mkdir(exist_ok=True)
            (self.dir / "chunks").mkdir(exist_ok=True)
        except BaseException:
            self.close()
            raise
        if previous:
            log.info("resuming job %r: %d chunks already done", job_key, len(self.done_chunks()))

    def _busy_message(self) -> str:
        owners = [_read_owner(self.dir)]
        if (self.dir / "owners").is_dir():
            owners += [_read_json(p) for p in sorted((self.dir / "owners").glob("*.json"))]
        who = ", ".join(
            f"pid {o.get('pid')} on {o.get('hostname')}" + (f" as {o['owner']}" if o.get("owner") else "")
            for o in owners
            if o
        )
        return (
            f"job {self.job_key!r} is being written by another process ({who or 'unknown'}); "
            "wait for it or stop it"
        )

    # context manager: leaves the staging (resumable) on error, only releases the lock
    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the locks without removing anything (the job stays resumable)."""
        for name in ("_publish_lock", "_owner_lock", "_lock"):
            lock = getattr(self, name)
            if lock is not None:
                lock.release()
                setattr(self, name, None)

    def _check_open(self) -> None:
        if self._lock is None:
            raise RuntimeError("staging is closed (published, aborted or closed)")

    def _check_still_here(self) -> None:
        """UserError when another writer published the job (its staging was moved away)."""
        assert self._lock is not None
        if not self._lock.still_at_path():
            done = self.store.published_job(self.job_key)
            if done is not None:
                raise AlreadyPublished(self.job_key, done)
            raise UserError(f"the staging of job {self.job_key!r} was removed by another process")

    def done_chunks(self) -> set[str]:
        """Chunk ids written completely (their marker exists); a resumed job skips these."""
        d = self.dir / "chunks"
        return {p.name[: -len(".done")] for p in d.glob("*.done")} if d.is_dir() else set()

    def _open_publish_lock(self, shared: bool) -> _FileLock:
        try:
            return _FileLock(self.dir / ".publish.lock", shared=shared, blocking=True)
        except FileNotFoundError:  # the staging was moved away: published (or removed)
            self._check_still_here()
            raise

    @contextlib.contextmanager
    def publishing(self) -> Iterator[None]:
        """Hold the exclusive publish lock: no chunk is being written, no one else publishes.

        Blocks while other writers write chunks or publish. Raises :class:`AlreadyPublished`
        when another writer published the job meanwhile. Run the global phase (which reads the
        staged tables) and :meth:`publish` inside it; publish releases it.
        """
        self._check_open()
        if self._publish_lock is not None:  # re-entrant
            yield
            return
        self._publish_lock = self._open_publish_lock(shared=False)
        try:
            self._check_still_here()
            done = self.store.published_job(self.job_key)
            if done is not None:
                raise AlreadyPublished(self.job_key, done)
            yield
        finally:
            if self._publish_lock is not None:
                self._publish_lock.release()
                self._publish_lock = None

    def write_chunk(self, chunk_id: str, tables: Mapping[str, pa.Table]) -> None:
        """Write one chunk's tables, all-or-nothing.

        Each table becomes its own part file (tmp + rename); the chunk's marker is written last,
        so a chunk killed midway is simply not done and its parts are ignored and overwritten.
        Columns are cast to the store schema (``run_id`` is added at publish). Holds the publish
        lock shared meanwhile, so a concurrent publish never sees the chunk half-written.
        """
        self._check_open()
        if not isinstance(chunk_id, str) or not CHUNK_ID_RE.match(chunk_id) or chunk_id.startswith("_"):
            raise ValueError(
                f"invalid chunk id {chunk_id!r}: must match {CHUNK_ID_RE.pattern} and not start with '_'"
            )
        unknown = [n for n in tables if n not in CHUNK_TABLES]
        if unknown:
            raise ValueError(f"chunk tables must be among {CHUNK_TABLES}, got {unknown}")
        conformed = {n: conform(t, _staged_schema(n), n) for n, t in tables.items()}
        if self._publish_lock is not None:  # inside publishing(): the lock is ours already
            self._write_chunk(chunk_id, conformed)
            return
        plock = self._open_publish_lock(shared=True)
        try:
            self._check_still_here()
            self._write_chunk(chunk_id, conformed)
        finally:
            plock.release()

    def _write_chunk(self, chunk_id: str, conformed: Mapping[str, pa.Table]) -> None:
        marker = self.dir / "chunks" / f"{chunk_id}.done"
        marker.unlink(missing_ok=True)
        # Drop parts of an earlier attempt of this chunk first: a table absent from this write
        # must not be resurrected from a killed attempt.
        for tdir in (self.dir / "parts").iterdir():
            (tdir / f"{chunk_id}.parquet").unlink(missing_ok=True)
        rows = {}
        for name, t in conformed.items():
            tdir = self.dir / "parts" / name
            tdir.mkdir(exist_ok=True)
            _write_parquet_atomic(
                tdir / f"{chunk_id}.parquet", t, TABLES[name].row_group_size, self.store.durable
            )
            rows[name] = t.num_rows
        _atomic_write_bytes(marker, json.dumps({"rows": rows}).encode(), self.store.durable)

    def _parts(self, name: str) -> list[Path]:
        """Part files of done chunks for one table (in chunk order)."""
        tdir = self.dir / "parts" / name
        return [p for c in sorted(self.done_chunks()) if (p := tdir / f"{c}.parquet").is_file()]

    def iter_table(self, name: str, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Stream a staged table (done chunks only), e.g. embeddings for the global phase."""
        if name not in CHUNK_TABLES:
            raise ValueError(f"unknown staged table {name!r}; staged tables: {CHUNK_TABLES}")
        for part in self._parts(name):
            yield from pq.ParquetFile(part).iter_batches(batch_size=_COMPACT_BATCH_ROWS, columns=columns)

    def abort(self) -> None:
        """Discard the job: remove the staging directory (a shard owner only releases its locks:
        other shards may be writing into it; ``gc`` removes it once none is alive)."""
        if self.owner is not None:
            self.close()
            return
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # publish
    def publish(self, run: Mapping[str, object], tables: Mapping[str, pa.Table]) -> str:
        """Compact, write the manifest last and rename the run into ``runs/``; return run_id.

        ``run`` is the runs row without run_id/created/schema_version/job_key (filled here).
        ``tables`` are global-phase tables (neighbors, class_metrics, confusion, failures, ...),
        appended to the staged rows of the same table. ``tables["embeddings"]`` may instead
        carry only ``image_id, x, y`` (no ``vector``): the 2-D projection is then merged onto the
        staged vectors by image_id.
        """
        self._check_open()
        unknown = [n for n in tables if n not in GLOBAL_TABLES]
        if unknown:
            raise ValueError(f"publish tables must be among {GLOBAL_TABLES}, got {unknown}")
        bad = [k for k in run if k not in RUNS.names]
        if bad:
            raise ValueError(f"unknown runs columns {bad}; expected {RUNS.names}")
        with self.publishing():  # exclusive: no chunk half-written, nobody else publishing
            return self._publish(run, tables)

    def _publish(self, run: Mapping[str, object], tables: Mapping[str, pa.Table]) -> str:
        now = _dt.datetime.now(_dt.UTC)
        run_id = new_run_id(self.job_key, now)
        while (self.store.runs_dir / run_id).exists():
            run_id = new_run_id(self.job_key, now)
        out = self.dir / "out"
        shutil.rmtree(out, ignore_errors=True)  # leftovers of a publish killed midway
        out.mkdir()
        glob_dir = self.dir / "global"
        shutil.rmtree(glob_dir, ignore_errors=True)
        glob_dir.mkdir()

        manifest_tables: dict[str, dict[str, object]] = {}
        for name in RUN_TABLES:
            if name == "runs":
                continue
            rows = self._compact(name, tables.get(name), out, glob_dir, run_id)
            path = out / f"{name}.parquet"
            manifest_tables[name] = {"file": path.name, "rows": rows, "bytes": path.stat().st_size}

        row: dict[str, object] = {k: _jsonable(v) for k, v in run.items()}
        row.update(run_id=run_id, created=now, schema_version=SCHEMA_VERSION, job_key=self.job_key)
        for key in ("status",):
            row.setdefault(key, "complete")
        runs_table = pa.Table.from_pylist([row], schema=RUNS)
        _write_parquet_atomic(out / "runs.parquet", runs_table, 1, self.store.durable)
        manifest_tables["runs"] = {
            "file": "runs.parquet",
            "rows": 1,
            "bytes": (out / "runs.parquet").stat().st_size,
        }

        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "job_key": self.job_key,
            "created": now.isoformat(),
            "run": {k: _jsonable(v) for k, v in row.items()},
            "tables": manifest_tables,
        }
        # Thumbnails join the dataset's shared images only now, so a job killed before its
        # publish leaves nothing visible. A crash between here and the rename below leaves
        # thumbnails without a run - harmless: the rerun finds them and skips re-adding them.
        fingerprint = str(run.get("dataset_fingerprint") or "")
        for part in self._parts("images"):
            if fingerprint:
                self.store.add_images(fingerprint, pq.read_table(part))

        # The manifest is written last: a run directory without it is not a run.
        _atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=1).encode(), self.store.durable)
        if self.store.durable:
            _fsync_dir(out)
        os.rename(out, self.store.runs_dir / run_id)  # the atomic publish
        if self.store.durable:
            _fsync_dir(self.store.runs_dir)
        log.info("published run %s (%s)", run_id, self.job_key)
        # Move the staging out of the way while still holding its lock: a job of the same key
        # that starts right after must find a fresh staging, not one being deleted under it.
        trash = self.store.trash_dir / f"staging-{self.dir.name}-{os.getpid()}-{time.time_ns()}"
        try:
            os.rename(self.dir, trash)
        except OSError:
            trash = self.dir
        self.close()
        shutil.rmtree(trash, ignore_errors=True)
        return run_id

    def _compact(
        self, name: str, global_table: pa.Table | None, out: Path, glob_dir: Path, run_id: str
    ) -> int:
        """Merge staged parts (+ the global table) into ``out/<name>.parquet``, sorted; return rows.

        DuckDB does the sort because it spills to disk: memory stays bounded however many
        images the run has. Its Arrow output is cast back to the store schema (e.g. float16
        vectors, which DuckDB reads as FLOAT) and written with pyarrow in row groups of the
        table's size.
        """
        import duckdb  # heavy-ish; only needed at publish

        spec = TABLES[name]
        staged = _staged_schema(name)
        sources = [str(p) for p in self._parts(name)] if name in CHUNK_TABLES else []
        merge_xy = False
        if global_table is not None and global_table.num_rows:
            if name == "embeddings" and "vector" not in global_table.column_names:
                merge_xy = True
                xy_schema = pa.schema([staged.field("image_id"), staged.field("x"), staged.field("y")])
                g = conform(global_table, xy_schema, "embeddings (x/y)")
                gpath = glob_dir / "embeddings_xy.parquet"
            else:
                g = conform(global_table, staged, name)
                gpath = glob_dir / f"{name}.parquet"
                sources.append(str(gpath))
            pq.write_table(g, gpath, compression="zstd")

        target = out / f"{name}.parquet"
        cols = [f for f in staged.names]
        con = duckdb.connect()
        try:
            tmpdir = self.dir / "duckdb_tmp"
            tmpdir.mkdir(exist_ok=True)
            con.execute("SET memory_limit = '1GB'")
            con.execute("SET temp_directory = ?", [str(tmpdir)])
            con.execute("SET preserve_insertion_order = false")
            if not sources:
                pq.write_table(spec.schema.empty_table(), target, compression="zstd")
                return 0
            select_cols = ", ".join(f's."{c}"' for c in cols)
            if merge_xy:
                select_cols = ", ".join(f'g."{c}"' if c in ("x", "y") else f's."{c}"' for c in cols)
                src = (
                    "read_parquet(?, union_by_name = true) AS s "
                    "LEFT JOIN read_parquet(?) AS g ON s.image_id = g.image_id"
                )
                params: list[object] = [run_id, sources, str(gpath)]
            else:
                src = "read_parquet(?, union_by_name = true) AS s"
                params = [run_id, sources]
            order = ", ".join(f's."{c}"' for c in spec.sort_by)
            query = f"SELECT ?::VARCHAR AS run_id, {select_cols} FROM {src}"
            if order:
                query += f" ORDER BY {order}"
            reader = con.sql(query, params=params).to_arrow_reader(_COMPACT_BATCH_ROWS)
            rows = 0
            pending: list[pa.RecordBatch] = []
            pending_rows = 0
            tmp = target.with_name(f".{target.name}.tmp")
            with pq.ParquetWriter(tmp, spec.schema, compression="zstd") as writer:
                for batch in reader:
                    pending.append(batch)
                    pending_rows += batch.num_rows
                    if pending_rows >= spec.row_group_size:
                        rows += _flush(writer, pending, spec.schema, spec.row_group_size)
                        pending, pending_rows = [], 0
                if pending:
                    rows += _flush(writer, pending, spec.schema, spec.row_group_size)
            if self.store.durable:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
            return rows
        finally:
            con.close()


def _flush(
    writer: pq.ParquetWriter, batches: list[pa.RecordBatch], schema: pa.Schema, row_group_size: int
) -> int:
    t = pa.Table.from_batches(batches)
    t = pa.Table.from_arrays([t.column(f.name).cast(f.type) for f in schema], schema=schema)
    writer.write_table(t, row_group_size=row_group_size)
    return t.num_rows
