"""One compute job being written: :class:`Staging` (chunks, the publish lock, publish, compaction).

Obtained from :meth:`xaidash.store.write.writer.Store.staging`; it needs only the store's layout
(:class:`~xaidash.store.write.layout.StoreLayout`). Its directory,
``_staging/<sha1(job_key)[:20]>/``, is invisible to readers (see :mod:`xaidash.store.write.layout`
for the whole layout)::

    .lock  owner.json              flock held by the live writer(s) (shared by shards); pid, host
    owners/<owner>.lock .json      one per concurrent writer (shard-I-of-N), held exclusively
    .publish.lock                  shared while a chunk is written, exclusive while publishing
    parts/<table>/<chunk>.parquet  one file per chunk and table (tmp + rename)
    chunks/<chunk>.done            written after the chunk's parts: the chunk is complete
    global/                        publish() writes the global-phase tables here
    out/                           publish() builds the run here, then renames it to runs/

* Streaming: every chunk's tables go to their own part files, so memory is bounded by one chunk.
  ``publish`` compacts parts with DuckDB (an out-of-core sort) into one file per table, sorted
  so point lookups by image_id prune row groups.
* Embeddings are written once: the staged ``embeddings`` parts (image_id, split, vector) are
  input of the global phase only (:meth:`Staging.iter_table`); ``publish`` takes the complete
  table, 2-D projection included, and writes that (see :meth:`Staging.publish`).
* Atomic publish is a single ``os.rename`` of a fully written directory (manifest inside) from
  ``out`` to ``runs/<run_id>``: a reader lists ``runs/`` and sees either the whole run or
  nothing, and a SIGKILLed writer leaves nothing under ``runs/``.
* Resume: a new :class:`Staging` with the same job key reuses the done chunks of a dead writer
  (``done_chunks()``), parts of unfinished chunks are ignored and overwritten.
* A job key is published at most once: the manifest of every run records its job key and
  ``Store.staging``/``publish`` refuse a key already present. Deleting the run frees the key.
* Concurrent shards: several writers (``Store.staging(key, owner="shard-I-of-N")``) share one
  staging, each writing its own chunks; exactly one publishes, under the exclusive
  ``.publish.lock`` after re-checking that the key was not published meanwhile.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
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

from xaidash.constants import CHUNK_ID_RE
from xaidash.errors import UserError
from xaidash.store import files
from xaidash.store.builder import conform, staged_schema
from xaidash.store.files import FORMAT, MANIFEST, FileLock
from xaidash.store.schema import RUN_TABLES, RUNS, SCHEMA_VERSION, TABLES
from xaidash.store.write import images
from xaidash.store.write.layout import StoreLayout

log = logging.getLogger(__name__)

#: Tables a chunk may contain (per-image phase). Global tables go to publish().
CHUNK_TABLES = ("predictions", "cams", "embeddings", "faithfulness", "failures", "neighbors", "images",
                "sanity", "baseline_faithfulness", "road", "localisation", "image_facts")
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
    "quality",
    "error_clusters",
    "duplicates",
    "quality_rules",
    "calibration",
    "class_ranking",
    "ranking_curves",
    "scores",
    "method_stats",
    "method_ranking",
)
#: Staged tables that are global-phase input only: publish() takes each one complete, with these
#: columns, and writes it instead of compacting the staged parts.
WHOLE_AT_PUBLISH: dict[str, tuple[str, ...]] = {"embeddings": ("image_id", "split", "vector", "x", "y")}
_COMPACT_BATCH_ROWS = 8192
_owner_re = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


class AlreadyPublished(UserError):
    """The job key has a published run (``run_id``): nothing left to write."""

    def __init__(self, job_key: str, run_id: str) -> None:
        super().__init__(
            f"job {job_key!r} was already published as run {run_id}; "
            f"delete it first (xaidash runs delete {run_id}) to recompute"
        )
        self.job_key = job_key
        self.run_id = run_id


def job_key_hash(job_key: str) -> str:
    """Directory name of a job's staging area (job keys may contain any characters)."""
    return hashlib.sha1(job_key.encode("utf-8")).hexdigest()[:20]


def new_run_id(job_key: str, now: _dt.datetime | None = None) -> str:
    """Sortable, unique run id: UTC time to the second + 6 hex chars of a hash of the job key."""
    now = now or _dt.datetime.now(_dt.UTC)
    h = hashlib.sha1(f"{job_key}\0{time.time_ns()}\0{os.getpid()}".encode()).hexdigest()[:6]
    return f"{now:%Y%m%d-%H%M%S}-{h}"


def staging_owners(d: Path) -> list[dict[str, Any]]:
    """What every writer that ever owned the staging dir recorded (exclusive owner, then shards)."""
    found = [files.read_json(d / "owner.json")]
    if (d / "owners").is_dir():
        found += [files.read_json(p) for p in sorted((d / "owners").glob("*.json"))]
    return [o for o in found if o]


def last_activity(d: Path) -> float:
    """Newest mtime of the staging dir's bookkeeping (owner files, chunk markers, dirs)."""
    times = [d.stat().st_mtime]
    for p in (d / "owner.json", d / "owners", d / "chunks", d / "parts", d / "out"):
        with contextlib.suppress(OSError):
            times.append(p.stat().st_mtime)
    return max(times)


def _jsonable(value: object) -> object:
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return value


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

    def __init__(self, store: StoreLayout, job_key: str, owner: str | None = None) -> None:
        if owner is not None and not _owner_re.match(owner):
            raise ValueError(f"invalid staging owner {owner!r}: must match {_owner_re.pattern}")
        self.store = store
        self.job_key = job_key
        self.owner = owner
        self.dir = store.staging_dir / job_key_hash(job_key)
        self._lock: FileLock | None = None
        self._owner_lock: FileLock | None = None
        self._publish_lock: FileLock | None = None
        for _attempt in range(20):
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                lock = FileLock.try_acquire(self.dir / ".lock", shared=owner is not None)
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
                self._owner_lock = FileLock.try_acquire(self.dir / "owners" / f"{owner}.lock")
                if self._owner_lock is None:
                    raise UserError(self._busy_message())
            owner_file = self.dir / "owner.json" if owner is None else self.dir / "owners" / f"{owner}.json"
            previous = files.read_json(owner_file) or {}
            info = {
                "job_key": job_key,
                "owner": owner,
                "pid": os.getpid(),
                "hostname": socket.gethostname(),
                "started": _dt.datetime.now(_dt.UTC).isoformat(),
                "resumed_from_pid": previous.get("pid"),
            }
            files.atomic_write_bytes(owner_file, json.dumps(info).encode(), store.durable)
            (self.dir / "parts").mkdir(exist_ok=True)
            (self.dir / "chunks").mkdir(exist_ok=True)
        except BaseException:
            self.close()
            raise
        if previous:
            log.info("resuming job %r: %d chunks already done", job_key, len(self.done_chunks()))

    def _busy_message(self) -> str:
        who = ", ".join(
            f"pid {o.get('pid')} on {o.get('hostname')}" + (f" as {o['owner']}" if o.get("owner") else "")
            for o in staging_owners(self.dir)
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
        for lock in (self._publish_lock, self._owner_lock, self._lock):
            if lock is not None:
                lock.release()
        self._publish_lock = self._owner_lock = self._lock = None

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

    def _open_publish_lock(self, shared: bool) -> FileLock:
        try:
            return FileLock(self.dir / ".publish.lock", shared=shared, blocking=True)
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
        conformed = {n: conform(t, staged_schema(n), n) for n, t in tables.items()}
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
            files.write_parquet_atomic(
                tdir / f"{chunk_id}.parquet", t, TABLES[name].row_group_size, self.store.durable
            )
            rows[name] = t.num_rows
        files.atomic_write_bytes(marker, json.dumps({"rows": rows}).encode(), self.store.durable)

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
        appended to the staged rows of the same table; ``run_id`` is filled in every table.

        ``tables["embeddings"]`` is required and is the run's complete embeddings table:
        ``image_id, split, vector, x, y`` for every val and train image (an empty table with
        those columns when there are none). The staged ``embeddings`` parts are only input of
        the global phase (read them with :meth:`iter_table`) and are not compacted: the vectors
        are written once, from this table. A missing table or column is a ValueError.
        """
        self._check_open()
        unknown = [n for n in tables if n not in GLOBAL_TABLES]
        if unknown:
            raise ValueError(f"publish tables must be among {GLOBAL_TABLES}, got {unknown}")
        for name, columns in WHOLE_AT_PUBLISH.items():
            given = tables.get(name)
            missing = list(columns) if given is None else [c for c in columns if c not in given.column_names]
            if missing:
                raise ValueError(
                    f"publish needs the complete {name!r} table ({', '.join(columns)}; the staged "
                    f"parts are global-phase input only): missing {', '.join(missing)}"
                )
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
            if name == "cams":  # what the dashboard's method picker offers, without a scan
                manifest_tables[name]["methods"] = files.distinct_values(path, "method")

        row: dict[str, object] = {k: _jsonable(v) for k, v in run.items()}
        row.update(run_id=run_id, created=now, schema_version=SCHEMA_VERSION, job_key=self.job_key)
        row.setdefault("status", "complete")
        runs_table = pa.Table.from_pylist([row], schema=RUNS)
        files.write_parquet_atomic(out / "runs.parquet", runs_table, 1, self.store.durable)
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
                images.add_images(self.store, fingerprint, pq.read_table(part))

        # The manifest is written last: a run directory without it is not a run.
        files.atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=1).encode(), self.store.durable)
        if self.store.durable:
            files.fsync_dir(out)
        os.rename(out, self.store.runs_dir / run_id)  # the atomic publish
        if self.store.durable:
            files.fsync_dir(self.store.runs_dir)
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

        A table of :data:`WHOLE_AT_PUBLISH` is the global table alone (its staged parts were
        global-phase input). DuckDB does the sort because it spills to disk: memory stays
        bounded however many images the run has. Its Arrow output is cast back to the store
        schema (e.g. float16 vectors, which DuckDB reads as FLOAT) and written with pyarrow in
        row groups of the table's size.
        """
        import duckdb  # heavy-ish; only needed at publish

        spec = TABLES[name]
        staged = staged_schema(name)
        staged_parts = name in CHUNK_TABLES and name not in WHOLE_AT_PUBLISH
        sources = [str(p) for p in self._parts(name)] if staged_parts else []
        if global_table is not None and global_table.num_rows:
            gpath = glob_dir / f"{name}.parquet"
            pq.write_table(conform(global_table, staged, name), gpath, compression="zstd")
            sources.append(str(gpath))

        target = out / f"{name}.parquet"
        if not sources:
            pq.write_table(spec.schema.empty_table(), target, compression="zstd")
            return 0
        con = duckdb.connect()
        try:
            tmpdir = self.dir / "duckdb_tmp"
            tmpdir.mkdir(exist_ok=True)
            # the sort spills to temp_directory, but list payloads (a 1M-image run's maps) failed
            # with 1 GB: a quarter of this machine's memory, at least 1 GB
            con.execute(f"SET memory_limit = '{_compact_memory_mb()}MB'")
            con.execute("SET temp_directory = ?", [str(tmpdir)])
            con.execute("SET preserve_insertion_order = false")
            select_cols = ", ".join(f'"{c}"' for c in staged.names)
            query = f"SELECT ?::VARCHAR AS run_id, {select_cols} FROM read_parquet(?, union_by_name = true)"
            if spec.sort_by:
                query += " ORDER BY " + ", ".join(f'"{c}"' for c in spec.sort_by)
            reader = con.sql(query, params=[run_id, sources]).to_arrow_reader(_COMPACT_BATCH_ROWS)
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
            files.replace(tmp, target, self.store.durable)
            return rows
        finally:
            con.close()


def _compact_memory_mb() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: the old fixed limit
        return 1024
    return max(1024, int(total / 4 / 2**20))


def _flush(
    writer: pq.ParquetWriter, batches: list[pa.RecordBatch], schema: pa.Schema, row_group_size: int
) -> int:
    t = pa.Table.from_batches(batches)
    t = pa.Table.from_arrays([t.column(f.name).cast(f.type) for f in schema], schema=schema)
    writer.write_table(t, row_group_size=row_group_size)
    n: int = t.num_rows
    return n
