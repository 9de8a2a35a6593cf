"""Reader side of the results store: ``open_store(path) -> StoreReader``.

One in-memory DuckDB connection per reader; every thread gets its own cursor
(``con.cursor()`` in a ``threading.local``) because a DuckDB connection object must not be used
by two threads at once. All values are bound parameters (``?``) — including the Parquet file
paths, which ``read_parquet(?)`` accepts — and identifiers (run ids, image ids, method names)
are checked against regexes/allow-lists before use, so a filter value like
``' OR 1=1 --`` is just a string that matches nothing.

Speed with many runs: per-run queries read that run's own files directly
(``read_parquet(?)`` with ``runs/<id>/<table>.parquet``), so their cost does not grow with the
number of runs; the run list comes from the manifests (JSON, cached per run directory). New or
deleted runs are noticed by the mtime of ``runs/`` (one ``stat`` per call) or :meth:`refresh`.
The cross-run views (``predictions``, ``cams``, ... for :meth:`StoreReader.sql`) are rebuilt
lazily, on the first ``sql()`` call after a change.
Parquet footers are cached (``parquet_metadata_cache``), and files are sorted by image_id in
small row groups so a point lookup decodes one row group.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xaidash.constants import FINGERPRINT_RE, IMAGE_ID_RE, METHOD_RE, OUTCOMES, RUN_ID_RE, SORTS
from xaidash.errors import UserError
from xaidash.store.schema import RUN_TABLES, RUNS, SCHEMA_VERSION, TABLES
from xaidash.store.writer import MANIFEST, MARKER, read_manifest

log = logging.getLogger(__name__)


MAX_PAGE_SIZE = 1000
TOPK = 5
#: Heads up to this many classes keep probabilities in the in-memory cache (ImageNet: read on demand).
MAX_CACHED_CLASSES = 100
#: Memoized immutable results (embedding points, train embeddings) kept per reader.
MEMO_SIZE = 256


@dataclass(frozen=True)
class GalleryQuery:
    """Filters, sort and page of the gallery (see CONTRACTS.md)."""

    true_class: int | None = None
    pred_class: int | None = None
    outcome: str = "all"  # "all" | "correct" | "wrong"
    conf_min: float = 0.0
    conf_max: float = 1.0
    sort: str = "confidence"  # "confidence" | "loss" | "faithfulness" | "disagreement"
    descending: bool = False
    method: str = "gradcam"  # which method the "faithfulness" sort uses
    image_ids: tuple[str, ...] | None = None  # restrict to a selection (lasso in the map)
    page: int = 0
    page_size: int = 24


@dataclass(frozen=True)
class RunInfo:
    """One row of the runs table, with list columns as Python lists."""

    run_id: str
    created: pd.Timestamp
    status: str
    dataset_spec: str | None
    dataset_fingerprint: str
    dataset_kind: str | None
    checkpoint_path: str | None
    checkpoint_sha256: str | None
    arch: str | None
    class_names: list[str]
    methods: list[str]
    target_layer: str | None
    map_h: int | None
    map_w: int | None
    num_val: int | None
    num_train: int | None
    num_failed: int | None
    accuracy: float | None
    scorecam_note: str | None
    config_json: str | None
    versions_json: str | None
    timings_json: str | None
    device: str | None
    schema_version: int
    job_key: str | None
    labeled: bool

    @property
    def config(self) -> dict[str, Any]:
        """``config_json`` parsed ({} when absent)."""
        return json.loads(self.config_json) if self.config_json else {}

    @property
    def versions(self) -> dict[str, Any]:
        return json.loads(self.versions_json) if self.versions_json else {}

    @property
    def timings(self) -> dict[str, Any]:
        return json.loads(self.timings_json) if self.timings_json else {}


@dataclass
class ImageDetail:
    """Everything the image page shows for one image of one run.

    For a train image (a twin) ``prediction`` is ``{}`` and ``topk`` is ``[]``; ``cams`` holds
    its Grad-CAM.
    """

    image_id: str
    prediction: dict[str, Any]
    topk: list[tuple[int, str, float]]
    cams: dict[tuple[str, str], tuple[int, np.ndarray]]
    faithfulness: pd.DataFrame
    split: str | None
    source: str | None
    width: int | None
    height: int | None
    label: int | None = None
    label_name: str | None = None


@dataclass
class RunDiff:
    """Comparison of two runs (a = before, b = after)."""

    metrics: pd.DataFrame  # metric, a, b, delta
    confusion_delta: pd.DataFrame  # true_class, pred_class, a, b, delta
    flips: pd.DataFrame  # image_id, label, label_name, pred_a, pred_b, conf_a, conf_b, change


@dataclass
class _GalleryIndex:
    """Numpy view of a run's light columns for filtering/sorting pages without SQL.

    A page deep in a 100k-image gallery costs a full sort in SQL (~40-60 ms on 2 busy cores);
    here the sort orders are computed once per (key, direction) and a page is a boolean mask
    plus a slice (~1-3 ms), so every page of every filter combination is equally fast.
    """

    table: pa.Table  # output columns, rows in image_id order (row i has ord i + 1)
    pos: dict[str, int]  # image_id -> row
    keys: dict[str, np.ndarray]  # sort keys as float64 with NaN for null
    confidence: np.ndarray
    label: np.ndarray  # int64, -1 when null
    pred: np.ndarray
    correct: np.ndarray  # int8: 1 correct, 0 wrong, -1 unknown
    orders: dict[tuple[str, bool], np.ndarray] = field(default_factory=dict)

    def order(self, key: str, descending: bool) -> np.ndarray:
        """Row order for a sort key: nulls last, ties by image_id (row order)."""
        o = self.orders.get((key, descending))
        if o is None:
            k = self.keys[key]
            nan = np.isnan(k)
            k0 = np.where(nan, 0.0, k)
            ordv = np.arange(len(k))
            o = np.lexsort((ordv, -k0 if descending else k0, nan)).astype(np.int64)
            self.orders[(key, descending)] = o
        return o


#: the predictions columns a gallery page shows (plus its ``sort_value``)
_GALLERY_COLUMNS = (
    "image_id", "label", "label_name", "pred", "pred_name",
    "confidence", "correct", "loss", "cam_disagreement",
)


class _RowGroupIndex:
    """image_id ranges of the row groups of image_id-sorted Parquet files, for point lookups.

    DuckDB prunes row groups by min/max too, but pays a per-row-group cost on every query and
    prunes poorly for lists of ids; with this index a lookup decodes exactly the row groups that
    can hold the ids (pyarrow, footer parsed once), which keeps a 24-image gallery page of maps
    at a few ms instead of ~200 ms on 100k images.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        self.meta: dict[str, pq.FileMetaData] = {}
        mins: list[tuple[str, str, str, int]] = []  # (min, max, path, rg)
        for path in paths:
            md = pq.ParquetFile(path).metadata
            self.meta[str(path)] = md
            col = md.schema.to_arrow_schema().get_field_index("image_id")
            for rg in range(md.num_row_groups):
                st = md.row_group(rg).column(col).statistics
                if md.row_group(rg).num_rows == 0:
                    continue
                if st is None or not st.has_min_max:
                    mins.append(("", "\uffff", str(path), rg))  # no stats: always read
                else:
                    mins.append((str(st.min), str(st.max), str(path), rg))
        mins.sort()
        self.entries = mins
        self._min = [m[0] for m in mins]
        # Ranges may overlap across files (the thumbnails of a dataset are one part file per
        # compute chunk, and train and val chunks interleave), so a backwards scan can only stop
        # once no entry at or before it reaches up to the id: keep the running max of the ends.
        self._max_upto: list[str] = []
        top = ""
        for m in mins:
            top = max(top, m[1])
            self._max_upto.append(top)

    def read(self, ids: Sequence[str], columns: list[str]) -> pa.Table:
        """Rows whose image_id is in ``ids`` (only ``columns``, which must include image_id)."""
        wanted: dict[str, set[int]] = {}
        for i in ids:
            for j in range(bisect.bisect_right(self._min, i) - 1, -1, -1):
                if self._max_upto[j] < i:
                    break  # no range at or before j reaches i
                _, lo_max, path, rg = self.entries[j]
                if lo_max >= i:
                    wanted.setdefault(path, set()).add(rg)
        tables = []
        key = pa.array(sorted(set(ids)), type=pa.string())
        for path, rgs in wanted.items():
            t = pq.ParquetFile(path, metadata=self.meta[path]).read_row_groups(sorted(rgs), columns=columns)
            tables.append(t.filter(pc.is_in(t.column("image_id"), value_set=key)))
        if not tables:
            return pa.table({c: pa.array([], type=pa.null()) for c in columns})
        return pa.concat_tables(tables, promote_options="permissive")


@dataclass
class _RunEntry:
    run_id: str
    dir: Path
    mtime_ns: int
    manifest: dict[str, Any] | None
    error: str | None  # why the run cannot be read (schema version), None when fine
    row: dict[str, Any] = field(default_factory=dict)


_T = TypeVar("_T")


def _memo_run(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Memoize a query over an immutable run (keyed by method name and bound arguments).

    Published runs never change, so a result stays valid until the run is deleted (then the
    rescan drops it). Unknown/invalid run ids are not memoized.
    """
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(self: StoreReader, *args: Any, **kwargs: Any) -> _T:
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = list(bound.arguments.values())[1:]
        if self._entry(values[0]) is None:
            return fn(self, *args, **kwargs)
        return self._memoized((fn.__name__, *values), lambda: fn(self, *args, **kwargs))

    return wrapper


def _manifest_row(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The runs row of a manifest, checked against the runs schema.

    Raises KeyError/ValueError/TypeError/ArrowException for a manifest that is valid JSON but not
    a valid run (no ``run.created``, a bad timestamp, a value of the wrong type), so one bad
    manifest becomes a skipped run instead of breaking the whole run list.
    """
    run = manifest.get("run")
    if not isinstance(run, dict):
        raise TypeError("'run' is not an object")
    row = {k: v for k, v in run.items() if k in RUNS.names}
    created = pd.Timestamp(row["created"])  # KeyError when absent, ValueError when unparsable
    if pd.isna(created):
        raise ValueError("'run.created' is empty")
    if created.tzinfo is None:
        created = created.tz_localize("UTC")
    row["created"] = created.to_pydatetime()
    missing = [f.name for f in RUNS if not f.nullable and row.get(f.name) is None]
    if missing:
        raise KeyError(f"required run fields missing: {', '.join(missing)}")
    pa.Table.from_pylist([row], schema=RUNS)  # every value has the documented type
    return row


def _schema_message(run_id: str, version: object, manifest: Mapping[str, Any]) -> str:
    hint = "the version that wrote it"
    try:
        wrote = json.loads(manifest.get("run", {}).get("versions_json") or "{}").get("xaidash")
        if wrote:
            hint = wrote
    except (ValueError, AttributeError):
        pass
    return (
        f"run {run_id} was written by schema v{version}; this xaidash reads v{SCHEMA_VERSION}: "
        f"recompute it or install xaidash {hint}"
    )


def _duck_type_schema(schema: pa.Schema) -> pa.Schema:
    """The schema DuckDB can ingest from Arrow (no float16: DuckDB reads it from Parquet only)."""

    def fix(t: pa.DataType) -> pa.DataType:
        if pa.types.is_float16(t):
            return pa.float32()
        if pa.types.is_list(t):
            return pa.list_(fix(t.value_type))
        return t

    return pa.schema([pa.field(f.name, fix(f.type), f.nullable) for f in schema])


def _sql_str(s: str) -> str:
    """Quote a string literal for DDL, where DuckDB accepts no bound parameters.

    Only used for file paths discovered on disk while (re)building the cross-run views.
    """
    return "'" + s.replace("'", "''") + "'"


class StoreReader:
    """Typed, read-only queries over a store (what the dashboard uses).

    ``cache_runs`` is how many runs keep their in-memory query cache (see :meth:`_cache`).
    """

    def __init__(self, path: str | Path, cache_runs: int = 4) -> None:
        p = Path(path).expanduser().absolute()
        if not (p / MARKER).is_file():
            raise UserError(
                f"{p} is not an xaidash store (no {MARKER}); run `xaidash compute --store {p}` first"
            )
        self.path = p
        self._runs_dir = p / "runs"
        self._lock = threading.RLock()
        self._local = threading.local()
        self._con = duckdb.connect(":memory:")
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._entries: dict[str, _RunEntry] = {}
        self._runs_df = pd.DataFrame()
        self._runs_mtime: int | None = None
        self._cache_runs = max(1, int(cache_runs))
        self._cached: OrderedDict[str, str] = OrderedDict()  # run_id -> cache table suffix
        #: run_id -> queries using its cache tables right now; a pinned run is never evicted
        self._pins: dict[str, int] = {}
        self._doomed: set[str] = set()  # deleted runs whose tables are dropped once unpinned
        self._memo: OrderedDict[tuple[object, ...], object] = OrderedDict()
        self._galleries: dict[str, _GalleryIndex] = {}
        self._rg_index: dict[tuple[str, ...], _RowGroupIndex] = {}
        self._views_for: tuple[pa.Table, list[_RunEntry]] = (RUNS.empty_table(), [])
        self._views_dirty = True
        try:
            # Footers of files we read over and over (one per run and table) stay in memory.
            self._con.execute("SET parquet_metadata_cache = true")
            self._con.execute("CREATE SCHEMA IF NOT EXISTS cache")
            self._scan()
        except BaseException:
            self._con.close()
            raise

    # ---------------------------------------------------------------- connection handling
    def close(self) -> None:
        """Close every cursor and the connection."""
        with self._lock:
            for cur in self._cursors:
                with contextlib.suppress(duckdb.Error):
                    cur.close()
            self._cursors.clear()
            self._con.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cur", None)
        if cur is None:
            with self._lock:
                cur = self._con.cursor()
                self._cursors.append(cur)
            self._local.cur = cur
        return cur

    def _arrow(self, query: str, params: Sequence[object] | Mapping[str, object] | None = None) -> pa.Table:
        """Run one query with bound parameters on this thread's cursor, as an Arrow table."""
        cur = self._cursor()
        try:
            return cur.sql(query, params=params).to_arrow_table()
        except duckdb.IOException:
            # A run deleted between listing and reading: rescan so the next call sees it gone.
            self.refresh()
            raise

    def _df(self, query: str, params: Sequence[object] | Mapping[str, object] | None = None) -> pd.DataFrame:
        """Like :meth:`_arrow`, as a DataFrame (Arrow -> pandas is ~5x faster than ``.df()`` here)."""
        return self._arrow(query, params).to_pandas()

    def _exec(self, query: str, params: Sequence[object] | None = None) -> None:
        self._cursor().execute(query, params)

    # ---------------------------------------------------------------- discovery
    def refresh(self) -> None:
        """Rescan ``runs/`` now (new or deleted runs) and rebuild the cross-run views."""
        with self._lock:
            self._runs_mtime = None
            self._scan()

    def _maybe_refresh(self) -> None:
        try:
            mtime = self._runs_dir.stat().st_mtime_ns
        except OSError:
            mtime = -1
        if mtime != self._runs_mtime:
            with self._lock:
                self._scan()

    def _scan(self) -> None:
        """Read manifests of new run directories, drop vanished ones, rebuild views."""
        try:
            mtime = self._runs_dir.stat().st_mtime_ns
            names = [d for d in os.listdir(self._runs_dir) if not d.startswith(".")]
        except OSError:
            mtime, names = -1, []
        if mtime == self._runs_mtime:
            return
        entries: dict[str, _RunEntry] = {}
        for name in names:
            d = self._runs_dir / name
            try:
                st = (d / MANIFEST).stat()
            except OSError:
                continue  # not a run (no manifest)
            old = self._entries.get(name)
            if old is not None and old.mtime_ns == st.st_mtime_ns:
                entries[name] = old
                continue
            entries[name] = self._load_entry(name, d, st.st_mtime_ns)
        for gone in set(self._entries) - set(entries):
            self._evict(gone)
        self._entries = entries
        ok = [e for e in entries.values() if e.error is None]
        table = pa.Table.from_pylist([e.row for e in ok], schema=RUNS)
        df = table.to_pandas()
        if len(df):
            df = df.sort_values(["created", "run_id"], ascending=False, kind="stable").reset_index(drop=True)
        self._runs_df = df
        # The cross-run views are only needed by sql(); binding them reads the footer of every
        # file of every run (union_by_name), ~3 ms per run, so they are built on first use.
        self._views_for = (table, ok)
        self._views_dirty = True
        self._runs_mtime = mtime

    def _load_entry(self, name: str, d: Path, mtime_ns: int) -> _RunEntry:
        manifest = read_manifest(d)
        if manifest is None:
            return _RunEntry(name, d, mtime_ns, None, f"run {name} has an unreadable manifest; delete it")
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            msg = _schema_message(name, version, manifest)
            log.warning("%s", msg)
            return _RunEntry(name, d, mtime_ns, manifest, msg)
        if not RUN_ID_RE.match(name) or manifest.get("run_id") != name:
            return _RunEntry(name, d, mtime_ns, manifest, f"directory {name} does not match its manifest")
        try:
            row = _manifest_row(manifest)
        except (KeyError, ValueError, TypeError, OverflowError, pa.ArrowException) as exc:
            msg = f"run {name} has a malformed manifest ({type(exc).__name__}: {exc}); delete it"
            log.warning("%s", msg)
            return _RunEntry(name, d, mtime_ns, manifest, msg)
        return _RunEntry(name, d, mtime_ns, manifest, None, row)

    def _build_views(self, runs_table: pa.Table, ok: list[_RunEntry]) -> None:
        """(Re)create the cross-run views used by :meth:`sql` and by cross-run queries.

        DDL takes no bound parameters, so the file lists are quoted literals; they are paths we
        listed ourselves, never user input.
        """
        con = self._con
        # Arrow registrations are visible only to the connection that made them, not to the
        # per-thread cursors, so they are copied into real (in-memory) tables.
        _arrow_to_table(con, "_runs_rows", runs_table)
        con.execute("CREATE OR REPLACE VIEW runs AS SELECT * FROM _runs_rows")
        for name in RUN_TABLES:
            if name == "runs":
                continue
            files = [str(e.dir / f"{name}.parquet") for e in ok if (e.dir / f"{name}.parquet").is_file()]
            if files:
                lst = "[" + ", ".join(_sql_str(f) for f in files) + "]"
                con.execute(
                    f"CREATE OR REPLACE VIEW {name} AS "
                    f"SELECT * FROM read_parquet({lst}, union_by_name = true)"
                )
            else:
                _arrow_to_table(con, f"_empty_{name}", _duck_type_schema(TABLES[name].schema).empty_table())
                con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM _empty_{name}")
        parts = sorted((self.path / "images").glob("*/part-*.parquet"))
        if parts:
            glob = _sql_str(str(self.path / "images" / "*" / "part-*.parquet"))
            con.execute(
                f"CREATE OR REPLACE VIEW images AS SELECT * FROM read_parquet({glob}, union_by_name = true)"
            )
        else:
            _arrow_to_table(con, "_empty_images", TABLES["images"].schema.empty_table())
            con.execute("CREATE OR REPLACE VIEW images AS SELECT * FROM _empty_images")

    # ---------------------------------------------------------------- per-run cache
    def _cache(self, e: _RunEntry) -> str:
        """Suffix of the in-memory cache tables of a run, building them on first use.

        Runs are immutable, so the light per-image columns every list/sort/filter needs
        (predictions without probabilities of big heads, 2-D coordinates, per-method
        faithfulness score, image metadata) are loaded once into DuckDB's in-memory tables
        ``cache.l_<h>`` (one row per val image, sorted by image_id, ``ord`` = its rank) and
        ``cache.f_<h>`` (faithfulness rows). Gallery pages and aggregates then avoid decoding
        zstd Parquet pages on every request; point lookups of big columns (maps, vectors,
        thumbnails) still read the Parquet files. The last ``cache_runs`` runs are kept.
        """
        with self._lock:
            h = self._cached.get(e.run_id)
            if h is not None:
                self._cached.move_to_end(e.run_id)
                return h
            h = hashlib.sha1(e.run_id.encode()).hexdigest()[:16]  # a safe identifier
            methods = [m for m in e.row.get("methods") or [] if METHOD_RE.match(m)]
            faith_cols = ", ".join(
                f'max(insertion_auc - deletion_auc) FILTER (WHERE method = ?) AS "faith_{m}"' for m in methods
            )
            n_classes = len(e.row.get("class_names") or [])
            probs = "p.probabilities" if n_classes <= MAX_CACHED_CLASSES else "NULL::FLOAT[] AS probabilities"
            glob = self._image_glob(e)
            img_cte = (
                "SELECT image_id, any_value(source) AS source, any_value(width) AS width, "
                "any_value(height) AS height FROM read_parquet(?) WHERE split = 'val' GROUP BY image_id"
                if glob
                else "SELECT NULL::VARCHAR AS image_id, NULL::VARCHAR AS source, NULL::INTEGER AS width, "
                "NULL::INTEGER AS height WHERE false"
            )
            f_cte = (
                f"SELECT image_id, {faith_cols} FROM read_parquet(?) GROUP BY image_id"
                if methods
                else "SELECT NULL::VARCHAR AS image_id WHERE false"
            )
            params: list[object] = [str(e.dir / "embeddings.parquet")]
            if glob:
                params.append(glob)
            if methods:
                params += [*methods, str(e.dir / "faithfulness.parquet")]
            params.append(str(e.dir / "predictions.parquet"))
            self._exec(f'DROP TABLE IF EXISTS cache."l_{h}"')
            self._exec(
                f"""
                CREATE TABLE cache."l_{h}" AS
                WITH xy AS (SELECT image_id, x, y FROM read_parquet(?) WHERE split = 'val'),
                     i AS ({img_cte}),
                     f AS ({f_cte})
                SELECT row_number() OVER (ORDER BY p.image_id) AS ord,
                       p.image_id, p.split, p.label, p.label_name, p.pred, p.pred_name, p.confidence,
                       {probs}, p.correct, p.loss, p.runner_up, p.cam_disagreement,
                       xy.x, xy.y, i.source, i.width, i.height, f.* EXCLUDE (image_id)
                FROM read_parquet(?) p
                LEFT JOIN xy USING (image_id) LEFT JOIN i USING (image_id) LEFT JOIN f USING (image_id)
                ORDER BY p.image_id
                """,
                params,
            )
            self._exec(f'DROP TABLE IF EXISTS cache."f_{h}"')
            self._exec(
                f'CREATE TABLE cache."f_{h}" AS SELECT image_id, method, "drop", increase, deletion_auc, '
                "insertion_auc FROM read_parquet(?) ORDER BY image_id, method",
                [str(e.dir / "faithfulness.parquet")],
            )
            self._cached[e.run_id] = h
            self._trim(keep=e.run_id)
            return h

    @contextlib.contextmanager
    def _pinned(self, *entries: _RunEntry) -> Iterator[list[str]]:
        """The cache table suffixes of runs, pinned while the caller queries them.

        Another thread caching more than ``cache_runs`` runs evicts (drops) the least recently
        used cache tables; a pinned run is skipped, so a query never loses its table mid-way
        (the cache may exceed ``cache_runs`` while pins last, and is trimmed when they end).
        """
        with self._lock:
            hs = []
            for e in entries:  # pin each as soon as it is cached: caching the next must not evict it
                hs.append(self._cache(e))
                self._pins[e.run_id] = self._pins.get(e.run_id, 0) + 1
        try:
            yield hs
        finally:
            with self._lock:
                for e in entries:
                    n = self._pins.get(e.run_id, 0) - 1
                    if n > 0:
                        self._pins[e.run_id] = n
                    else:
                        self._pins.pop(e.run_id, None)
                self._trim()

    def _trim(self, keep: str | None = None) -> None:
        """Evict unpinned deleted runs, then the least recently used unpinned runs over the limit."""
        with self._lock:
            for run_id in [r for r in self._doomed if r not in self._pins]:
                self._evict(run_id)
            over = len(self._cached) - self._cache_runs
            for run_id in list(self._cached):
                if over <= 0:
                    break
                if run_id != keep and run_id not in self._pins:
                    self._evict(run_id)
                    over -= 1

    def _evict(self, run_id: str) -> None:
        with self._lock:
            if run_id in self._pins:  # in use right now: drop its tables when the query ends
                self._doomed.add(run_id)
                return
            self._doomed.discard(run_id)
            h = self._cached.pop(run_id, None)
            self._galleries.pop(run_id, None)
            if h is not None:
                self._exec(f'DROP TABLE IF EXISTS cache."l_{h}"')
                self._exec(f'DROP TABLE IF EXISTS cache."f_{h}"')
            for key in [k for k in self._memo if run_id in k]:
                del self._memo[key]

    def _memoized(self, key: tuple[object, ...], fn: Any) -> Any:
        """Cache a result of an immutable run (bounded); DataFrames are returned as copies."""
        with self._lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return _copy(self._memo[key])
        value = fn()
        with self._lock:
            self._memo[key] = value
            while len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
        return _copy(value)

    # ---------------------------------------------------------------- helpers
    def _entry(self, run_id: object) -> _RunEntry | None:
        """The entry of a readable run, None for malformed/unknown ids; UserError for old runs."""
        if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
            return None
        self._maybe_refresh()
        e = self._entries.get(run_id)
        if e is None:
            return None
        if e.error is not None:
            raise UserError(e.error)
        return e

    def _file(self, run_id: object, table: str) -> str | None:
        e = self._entry(run_id)
        if e is None:
            return None
        p = e.dir / f"{table}.parquet"
        return str(p) if p.is_file() else None

    def _image_glob(self, e: _RunEntry) -> str | None:
        fp = e.row.get("dataset_fingerprint")
        if not fp or not FINGERPRINT_RE.match(fp):
            return None
        d = self.path / "images" / fp
        if not d.is_dir() or not any(d.glob("part-*.parquet")):
            return None
        return str(d / "part-*.parquet")

    def _index(self, paths: Sequence[Path]) -> _RowGroupIndex:
        """Row-group index over files (cached; immutable run files, append-only image parts)."""
        key = tuple(str(p) for p in paths)
        with self._lock:
            idx = self._rg_index.get(key)
            if idx is None:
                if len(self._rg_index) > 64:
                    self._rg_index.clear()
                # image parts of a fingerprint grow: drop indexes of an older listing of the dir
                for old in [
                    k for k in self._rg_index if k and key and Path(k[0]).parent == Path(key[0]).parent
                ]:
                    del self._rg_index[old]
                idx = self._rg_index[key] = _RowGroupIndex(paths)
            return idx

    def _cams_rows(self, e: _RunEntry, ids: Sequence[str]) -> pa.Table:
        cols = ["image_id", "method", "target_kind", "target_class", "h", "w", "map"]
        return self._index([e.dir / "cams.parquet"]).read(ids, cols)

    def _image_rows(self, e: _RunEntry, ids: Sequence[str], columns: list[str]) -> pa.Table | None:
        fp = e.row.get("dataset_fingerprint")
        if not fp or not FINGERPRINT_RE.match(fp):
            return None
        parts = sorted((self.path / "images" / fp).glob("part-*.parquet"))
        if not parts:
            return None
        return self._index(parts).read(ids, columns)

    @staticmethod
    def _valid_image_id(image_id: object) -> bool:
        return isinstance(image_id, str) and bool(IMAGE_ID_RE.match(image_id))

    def _class_names(self, e: _RunEntry) -> list[str]:
        return list(e.row.get("class_names") or [])

    def warm(self, run_id: str) -> None:
        """Build a run's in-memory cache now (e.g. in the background when the dashboard starts)."""
        e = self._entry(run_id)
        if e is not None:
            self._cache(e)

    # ---------------------------------------------------------------- runs
    def runs(self) -> pd.DataFrame:
        """All readable runs, newest first (the runs table). Unreadable runs: :meth:`skipped_runs`."""
        self._maybe_refresh()
        return self._runs_df.copy()

    def skipped_runs(self) -> dict[str, str]:
        """run_id -> why it is not listed (e.g. written by another schema version)."""
        self._maybe_refresh()
        return {k: e.error for k, e in sorted(self._entries.items()) if e.error is not None}

    def run(self, run_id: str) -> RunInfo | None:
        """The run's row as a RunInfo, None if no such run; UserError if it has another schema."""
        e = self._entry(run_id)
        if e is None:
            return None
        row = {n: e.row.get(n) for n in RUNS.names}
        row["created"] = pd.Timestamp(row["created"])
        row["class_names"] = list(row["class_names"] or [])
        row["methods"] = list(row["methods"] or [])
        return RunInfo(**row, labeled=row["accuracy"] is not None)

    def latest_run_id(self) -> str | None:
        """Newest readable run, or None for an empty store."""
        self._maybe_refresh()
        return None if self._runs_df.empty else str(self._runs_df["run_id"].iloc[0])

    def manifest(self, run_id: str) -> dict[str, Any] | None:
        """The run's manifest (files, row counts, bytes), or None."""
        e = self._entry(run_id)
        return None if e is None or e.manifest is None else json.loads(json.dumps(e.manifest))

    # ---------------------------------------------------------------- metrics
    @_memo_run
    def headline(self, run_id: str) -> dict[str, float | int | None]:
        """n, accuracy, macro_precision, macro_recall, macro_f1, weighted_f1, errors, failed."""
        keys = (
            "n",
            "accuracy",
            "macro_precision",
            "macro_recall",
            "macro_f1",
            "weighted_f1",
            "errors",
            "failed",
        )
        e = self._entry(run_id)
        if e is None:
            return dict.fromkeys(keys)
        with self._pinned(e) as (h,):
            t = self._headline_row(h, e)
        return self._headline_out(keys, t, e)

    def _headline_row(self, h: str, e: _RunEntry) -> pa.Table:
        return self._arrow(
            f"""
            SELECT
              (SELECT count(*) FROM cache."l_{h}") AS n,
              (SELECT avg(CASE WHEN correct THEN 1.0 ELSE 0.0 END) FILTER (WHERE correct IS NOT NULL)
                 FROM cache."l_{h}") AS accuracy,
              (SELECT count(*) FILTER (WHERE correct = false) FROM cache."l_{h}") AS errors,
              m.*
            FROM (SELECT avg(precision) AS macro_precision, avg(recall) AS macro_recall, avg(f1) AS macro_f1,
                         sum(f1 * support) / nullif(sum(support), 0) AS weighted_f1
                  FROM read_parquet(?)) m
            """,
            [str(e.dir / "class_metrics.parquet")],
        )

    @staticmethod
    def _headline_out(keys: Sequence[str], t: pa.Table, e: _RunEntry) -> dict[str, float | int | None]:
        row = t.to_pylist()[0]
        tables = (e.manifest or {}).get("tables", {})
        row["failed"] = int(tables.get("failures", {}).get("rows", e.row.get("num_failed") or 0))
        out: dict[str, float | int | None] = {}
        for k in keys:
            v = row.get(k)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                out[k] = None
            elif k in ("n", "errors", "failed"):
                out[k] = int(v)
            else:
                out[k] = float(v)
        if out["accuracy"] is None:
            out["errors"] = None  # unlabeled: "errors" is unknown, not zero
        return out

    @_memo_run
    def class_metrics(self, run_id: str) -> pd.DataFrame:
        """class, class_name, precision, recall, f1, support (by class index)."""
        f = self._file(run_id, "class_metrics")
        cols = ["class", "class_name", "precision", "recall", "f1", "support"]
        if f is None:
            return pd.DataFrame(columns=cols)
        return self._df(
            'SELECT "class", class_name, precision, recall, f1, support '
            'FROM read_parquet(?) ORDER BY "class"',
            [f],
        )

    @_memo_run
    def confusion(self, run_id: str) -> pd.DataFrame:
        """true_class, pred_class, count (long form; zero cells may be absent)."""
        f = self._file(run_id, "confusion")
        if f is None:
            return pd.DataFrame(columns=["true_class", "pred_class", "count"])
        return self._df(
            'SELECT true_class, pred_class, "count" FROM read_parquet(?) ORDER BY true_class, pred_class', [f]
        )

    @_memo_run
    def confidence_histogram(self, run_id: str, bins: int = 20) -> pd.DataFrame:
        """bin_start, bin_end, correct, count over confidence in [0, 1] (non-empty bins only)."""
        cols = ["bin_start", "bin_end", "correct", "count"]
        bins = int(bins)
        if not 1 <= bins <= 1000:
            raise UserError(f"bins must be between 1 and 1000, got {bins}")
        e = self._entry(run_id)
        if e is None:
            return pd.DataFrame(columns=cols)
        with self._pinned(e) as (h,):
            return self._df(
                f"""
                WITH b AS (
                  SELECT least(CAST(floor(confidence * ?) AS INTEGER), ? - 1) AS bin, correct
                  FROM cache."l_{h}"
                )
                SELECT bin / ?::DOUBLE AS bin_start, (bin + 1) / ?::DOUBLE AS bin_end, correct,
                       count(*) AS "count"
                FROM b GROUP BY bin, correct ORDER BY bin, correct
                """,
                [bins, bins, bins, bins],
            )

    @_memo_run
    def faithfulness_summary(self, run_id: str) -> pd.DataFrame:
        """Per method: mean drop, increase (fractions; x100 for %), deletion_auc, insertion_auc, n."""
        cols = ["method", "drop", "increase", "deletion_auc", "insertion_auc", "n"]
        e = self._entry(run_id)
        if e is None:
            return pd.DataFrame(columns=cols)
        with self._pinned(e) as (h,):
            return self._df(
                f"""
                SELECT method, avg("drop") AS "drop", avg(increase) AS increase,
                       avg(deletion_auc) AS deletion_auc, avg(insertion_auc) AS insertion_auc, count(*) AS n
                FROM cache."f_{h}" GROUP BY method ORDER BY method
                """
            )

    # ---------------------------------------------------------------- gallery
    def gallery(self, run_id: str, q: GalleryQuery) -> tuple[pd.DataFrame, int]:
        """One page of val images matching the filters, and the total count of matches.

        Sort keys: confidence; loss (stored cross-entropy); faithfulness (insertion_auc -
        deletion_auc of ``q.method``); disagreement (cam_disagreement). Nulls sort last; ties
        are broken by image_id so pages are stable.
        """
        cols = [*_GALLERY_COLUMNS, "sort_value"]
        empty = pd.DataFrame(columns=cols)
        if q.outcome not in OUTCOMES:
            raise UserError(f"unknown outcome {q.outcome!r}; valid outcomes: {', '.join(OUTCOMES)}")
        if q.sort not in SORTS:
            raise UserError(f"unknown sort {q.sort!r}; valid sorts: {', '.join(SORTS)}")
        page, page_size = int(q.page), int(q.page_size)
        if page < 0 or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise UserError(f"page must be >= 0 and page_size in 1..{MAX_PAGE_SIZE}")
        e = self._entry(run_id)
        if e is None:
            return empty, 0
        if q.sort == "faithfulness":
            methods = e.row.get("methods") or []
            if not isinstance(q.method, str) or q.method not in methods or not METHOD_RE.match(q.method):
                key = "none"  # unknown method: nothing to sort by, keep image order
            else:
                key = f"faith_{q.method}"
        else:
            key = q.sort
        g = self._gallery_index(e)
        mask = (g.confidence >= float(q.conf_min)) & (g.confidence <= float(q.conf_max))
        if q.true_class is not None:
            mask &= (g.label == int(q.true_class)) & (g.label >= 0)
        if q.pred_class is not None:
            mask &= (g.pred == int(q.pred_class)) & (g.pred >= 0)
        if q.outcome == "correct":
            mask &= g.correct == 1
        elif q.outcome == "wrong":
            mask &= g.correct == 0
        if q.image_ids is not None:
            rows = [g.pos[i] for i in q.image_ids if isinstance(i, str) and i in g.pos]
            sel = np.zeros(len(mask), dtype=bool)
            sel[rows] = True
            mask &= sel
        order = g.order(key, bool(q.descending))
        hits = order[mask[order]]
        total = len(hits)
        page_rows = hits[page * page_size : (page + 1) * page_size]
        if len(page_rows) == 0:
            return empty, total
        df = g.table.take(pa.array(page_rows)).to_pandas()
        df["sort_value"] = g.keys[key][page_rows]  # float64, NaN where the key is null
        return df[cols], total

    def _gallery_index(self, e: _RunEntry) -> _GalleryIndex:
        with self._lock:
            g = self._galleries.get(e.run_id)
            if g is not None:
                return g
            h = self._cache(e)
            methods = [m for m in e.row.get("methods") or [] if METHOD_RE.match(m)]
            faith = "".join(f', "faith_{m}"' for m in methods)
            t = self._arrow(
                "SELECT image_id, label, label_name, pred, pred_name, confidence, correct, loss, "
                f'cam_disagreement{faith} FROM cache."l_{h}" ORDER BY ord'
            )

            def num(name: str) -> np.ndarray:
                return t.column(name).cast(pa.float64()).fill_null(np.nan).to_numpy()

            keys = {
                "confidence": num("confidence"),
                "loss": num("loss"),
                "disagreement": num("cam_disagreement"),
            }
            keys.update({f"faith_{m}": num(f"faith_{m}") for m in methods})
            keys["none"] = np.full(t.num_rows, np.nan)
            correct = t.column("correct").cast(pa.int8()).fill_null(-1).to_numpy()
            g = _GalleryIndex(
                table=t.select(list(_GALLERY_COLUMNS)),
                pos={k: i for i, k in enumerate(t.column("image_id").to_pylist())},
                keys=keys,
                confidence=keys["confidence"],
                label=t.column("label").cast(pa.int64()).fill_null(-1).to_numpy(),
                pred=t.column("pred").cast(pa.int64()).fill_null(-1).to_numpy(),
                correct=correct,
            )
            self._galleries[e.run_id] = g
            return g

    # ---------------------------------------------------------------- one image
    def image(self, run_id: str, image_id: str) -> ImageDetail | None:
        """Prediction, top-k, all maps, faithfulness and metadata of one image; None if absent."""
        e = self._entry(run_id)
        if e is None or not self._valid_image_id(image_id):
            return None
        with self._pinned(e) as (h,):
            return self._image(e, h, image_id)

    def _image(self, e: _RunEntry, h: str, image_id: str) -> ImageDetail | None:
        pred = self._arrow(
            f'SELECT * EXCLUDE (ord, x, y, source, width, height) FROM cache."l_{h}" WHERE image_id = ?',
            [image_id],
        )
        cams = self._cams_rows(e, [image_id])
        meta = self._image_meta(e, h, image_id)
        if pred.num_rows == 0 and cams.num_rows == 0 and meta is None:
            return None
        names = self._class_names(e)
        prediction: dict[str, Any] = {}
        topk: list[tuple[int, str, float]] = []
        if pred.num_rows:
            prediction = {k: v for k, v in pred.to_pylist()[0].items() if not k.startswith("faith_")}
            raw = prediction.get("probabilities")
            if raw is None:  # big heads are not cached in memory: read the one row from Parquet
                t = self._arrow(
                    "SELECT probabilities FROM read_parquet(?) WHERE image_id = ?",
                    [str(e.dir / "predictions.parquet"), image_id],
                )
                raw = t.column(0)[0].as_py() if t.num_rows else []
            probs = np.asarray(raw, dtype=np.float32)
            prediction["probabilities"] = probs
            for c in np.argsort(-probs, kind="stable")[:TOPK]:
                topk.append((int(c), names[c] if c < len(names) else str(c), float(probs[c])))
        maps: dict[tuple[str, str], tuple[int, np.ndarray]] = {}
        for r in sorted(cams.to_pylist(), key=lambda r: (r["method"], r["target_kind"])):
            arr = np.asarray(r["map"], dtype=np.float32).reshape(r["h"], r["w"])
            maps[(r["method"], r["target_kind"])] = (int(r["target_class"]), arr)
        faith = self._df(
            f'SELECT method, "drop", increase, deletion_auc, insertion_auc FROM cache."f_{h}" '
            "WHERE image_id = ? ORDER BY method",
            [image_id],
        )
        meta = meta or {}
        label = prediction.get("label", meta.get("label"))
        return ImageDetail(
            image_id=image_id,
            prediction=prediction,
            topk=topk,
            cams=maps,
            faithfulness=faith,
            split=prediction.get("split") or meta.get("split"),
            source=meta.get("source"),
            width=meta.get("width"),
            height=meta.get("height"),
            label=None if label is None else int(label),
            label_name=prediction.get("label_name") or meta.get("label_name"),
        )

    def _image_meta(self, e: _RunEntry, h: str, image_id: str) -> dict[str, Any] | None:
        t = self._arrow(
            f'SELECT split, label, label_name, source, width, height FROM cache."l_{h}" '
            "WHERE image_id = ? AND source IS NOT NULL",
            [image_id],
        )
        if t.num_rows:
            return t.to_pylist()[0]
        glob = self._image_glob(e)  # a train image (twin) or a val image without cached metadata
        if glob is None:
            return None
        t = self._arrow(
            "SELECT split, label, label_name, source, width, height FROM read_parquet(?) "
            "WHERE image_id = ? LIMIT 1",
            [glob, image_id],
        )
        return t.to_pylist()[0] if t.num_rows else None

    def cam(self, run_id: str, image_id: str, method: str, target_kind: str = "pred") -> np.ndarray | None:
        """One raw map as float32 [h, w] in [0, 1], or None."""
        got = self.cams_batch(run_id, [image_id], [method], target_kind)
        return got.get((image_id, method))

    def cams_batch(
        self, run_id: str, image_ids: Sequence[str], methods: Sequence[str], target_kind: str = "pred"
    ) -> dict[tuple[str, str], np.ndarray]:
        """Maps of many images at once: (image_id, method) -> float32 [h, w] (missing pairs absent).

        One read of the run's cams file (row groups pruned by image_id), for gallery pages.
        """
        e = self._entry(run_id)
        ids = [i for i in image_ids if self._valid_image_id(i)]
        ms = {m for m in methods if isinstance(m, str) and METHOD_RE.match(m)}
        if e is None or not ids or not ms or target_kind not in ("pred", "true"):
            return {}
        out: dict[tuple[str, str], np.ndarray] = {}
        for r in self._cams_rows(e, ids).to_pylist():
            if r["method"] in ms and r["target_kind"] == target_kind:
                out[(r["image_id"], r["method"])] = np.asarray(r["map"], dtype=np.float32).reshape(
                    r["h"], r["w"]
                )
        return out

    def thumbnails(self, run_id: str, image_ids: Sequence[str]) -> dict[str, bytes]:
        """Thumbnails of many images at once: image_id -> bytes (images without one are absent)."""
        e = self._entry(run_id)
        ids = [i for i in image_ids if self._valid_image_id(i)]
        if e is None or not ids:
            return {}
        t = self._image_rows(e, ids, ["image_id", "thumbnail"])
        if t is None:
            return {}
        out: dict[str, bytes] = {}
        for r in t.to_pylist():
            if r["thumbnail"] is not None:
                out.setdefault(r["image_id"], bytes(r["thumbnail"]))
        return out

    def thumbnail(self, run_id: str, image_id: str) -> bytes | None:
        """PNG/JPEG bytes of the image's thumbnail (shared per dataset fingerprint), or None."""
        return self.thumbnails(run_id, [image_id]).get(image_id)

    def neighbors(self, run_id: str, image_id: str) -> pd.DataFrame:
        """kind, rank, neighbor_id, neighbor_class, neighbor_class_name, similarity (twins first)."""
        cols = ["kind", "rank", "neighbor_id", "neighbor_class", "neighbor_class_name", "similarity"]
        e = self._entry(run_id)
        if e is None or not self._valid_image_id(image_id):
            return pd.DataFrame(columns=cols)
        df = self._df(
            "SELECT kind, rank, neighbor_id, neighbor_class, similarity FROM read_parquet(?) "
            "WHERE image_id = ? ORDER BY kind DESC, rank",  # 'twin' > 'counterfactual': twins first
            [str(e.dir / "neighbors.parquet"), image_id],
        )
        names = self._class_names(e)
        df["neighbor_class_name"] = [
            names[int(c)] if c is not None and not pd.isna(c) and 0 <= int(c) < len(names) else None
            for c in df["neighbor_class"]
        ]
        return df[cols]

    # ---------------------------------------------------------------- embeddings
    def embedding_points(self, run_id: str, include_train: bool = False) -> pd.DataFrame:
        """image_id, split, x, y, label, label_name, pred, pred_name, correct (pred null for train)."""
        cols = ["image_id", "split", "x", "y", "label", "label_name", "pred", "pred_name", "correct"]
        e = self._entry(run_id)
        if e is None:
            return pd.DataFrame(columns=cols)
        return self._memoized(
            ("embedding_points", e.run_id, bool(include_train)),
            lambda: self._embedding_points(e, include_train),
        )

    def _embedding_points(self, e: _RunEntry, include_train: bool) -> pd.DataFrame:
        with self._pinned(e) as (h,):
            val = self._arrow(
                f'SELECT image_id, split, x, y, label, label_name, pred, pred_name, correct '
                f'FROM cache."l_{h}" ORDER BY ord'
            )
        if not include_train:
            return val.to_pandas()
        emb = str(e.dir / "embeddings.parquet")
        glob = self._image_glob(e)
        if glob is None:
            train = self._arrow(
                "SELECT image_id, split, x, y, NULL::INTEGER AS label, NULL::VARCHAR AS label_name, "
                "NULL::INTEGER AS pred, NULL::VARCHAR AS pred_name, NULL::BOOLEAN AS correct "
                "FROM read_parquet(?) WHERE split = 'train' ORDER BY image_id",
                [emb],
            )
        else:
            train = self._arrow(
                "SELECT e.image_id, e.split, e.x, e.y, i.label, i.label_name, NULL::INTEGER AS pred, "
                "NULL::VARCHAR AS pred_name, NULL::BOOLEAN AS correct FROM read_parquet(?) e "
                "LEFT JOIN (SELECT image_id, any_value(label) AS label, any_value(label_name) AS label_name "
                "FROM read_parquet(?) WHERE split = 'train' GROUP BY image_id) i "
                "USING (image_id) WHERE e.split = 'train' ORDER BY e.image_id",
                [emb, glob],
            )
        return pa.concat_tables([val, train.cast(val.schema)]).to_pandas()

    def train_embeddings(self, run_id: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Train ids, labels (int64, -1 when unknown) and vectors float32 [N, K] (for explain twins).

        The arrays are cached and read-only (``flags.writeable = False``): copy before changing.
        """
        e = self._entry(run_id)
        if e is None:
            return [], np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        ids, labels, vec = self._memoized(("train_embeddings", e.run_id), lambda: self._train_embeddings(e))
        return list(ids), labels, vec

    def _train_embeddings(self, e: _RunEntry) -> tuple[list[str], np.ndarray, np.ndarray]:
        emb = str(e.dir / "embeddings.parquet")
        glob = self._image_glob(e)
        if glob is None:
            t = self._arrow(
                "SELECT image_id, NULL::INTEGER AS label, vector FROM read_parquet(?) "
                "WHERE split = 'train' ORDER BY image_id",
                [emb],
            )
        else:
            t = self._arrow(
                "SELECT e.image_id, i.label, e.vector FROM read_parquet(?) e LEFT JOIN "
                "(SELECT image_id, any_value(label) AS label FROM read_parquet(?) WHERE split = 'train' "
                "GROUP BY image_id) i USING (image_id) WHERE e.split = 'train' ORDER BY e.image_id",
                [emb, glob],
            )
        ids = t.column("image_id").to_pylist()
        labels = t.column("label").fill_null(-1).to_numpy().astype(np.int64)
        vec = _list_to_matrix(t.column("vector"))
        labels.flags.writeable = False
        vec.flags.writeable = False
        return ids, labels, vec

    # ---------------------------------------------------------------- comparisons
    @_memo_run
    def diff(self, run_a: str, run_b: str) -> RunDiff:
        """What changed from run a to run b (metrics, confusion cells, per-image flips).

        Images are matched by image_id, so runs over different data have no flips.
        """
        ea, eb = self._entry(run_a), self._entry(run_b)
        if ea is None or eb is None:
            return RunDiff(
                pd.DataFrame(columns=["metric", "a", "b", "delta"]),
                pd.DataFrame(columns=["true_class", "pred_class", "a", "b", "delta"]),
                pd.DataFrame(
                    columns=[
                        "image_id",
                        "label",
                        "label_name",
                        "pred_a",
                        "pred_b",
                        "conf_a",
                        "conf_b",
                        "change",
                    ]
                ),
            )
        ha, hb = self.headline(ea.run_id), self.headline(eb.run_id)
        metrics = pd.DataFrame(
            [
                {
                    "metric": k,
                    "a": ha[k],
                    "b": hb[k],
                    "delta": None if ha[k] is None or hb[k] is None else hb[k] - ha[k],
                }  # type: ignore[operator]
                for k in ha
            ]
        )
        conf = self._df(
            """
            SELECT coalesce(a.true_class, b.true_class) AS true_class,
                   coalesce(a.pred_class, b.pred_class) AS pred_class,
                   coalesce(a."count", 0) AS a, coalesce(b."count", 0) AS b,
                   coalesce(b."count", 0) - coalesce(a."count", 0) AS delta
            FROM read_parquet(?) a FULL OUTER JOIN read_parquet(?) b
              ON a.true_class = b.true_class AND a.pred_class = b.pred_class
            ORDER BY true_class, pred_class
            """,
            [str(ea.dir / "confusion.parquet"), str(eb.dir / "confusion.parquet")],
        )
        with self._pinned(ea, eb) as (la, lb):
            flips = self._df(
                f"""
                SELECT a.image_id, coalesce(b.label, a.label) AS label,
                       coalesce(b.label_name, a.label_name) AS label_name,
                       a.pred AS pred_a, b.pred AS pred_b, a.confidence AS conf_a, b.confidence AS conf_b,
                       CASE WHEN NOT a.correct AND b.correct THEN 'fixed'
                            WHEN a.correct AND NOT b.correct THEN 'broke'
                            ELSE 'changed' END AS change
                FROM cache."l_{la}" a JOIN cache."l_{lb}" b USING (image_id)
                WHERE a.pred <> b.pred OR a.correct IS DISTINCT FROM b.correct
                ORDER BY change, a.image_id
                """
            )
        return RunDiff(metrics, conf, flips)

    def image_history(self, run_id: str, image_id: str) -> pd.DataFrame:
        """This image's prediction in every run over the same dataset fingerprint, oldest first."""
        cols = ["run_id", "created", "pred", "pred_name", "confidence", "correct"]
        e = self._entry(run_id)
        if e is None or not self._valid_image_id(image_id):
            return pd.DataFrame(columns=cols)
        fp = e.row.get("dataset_fingerprint")
        same = [
            x for x in self._entries.values() if x.error is None and x.row.get("dataset_fingerprint") == fp
        ]
        files = [str(x.dir / "predictions.parquet") for x in same]
        df = self._df(
            "SELECT run_id, pred, pred_name, confidence, correct FROM read_parquet(?) WHERE image_id = ?",
            [files, image_id],
        )
        created = {x.run_id: pd.Timestamp(x.row["created"]) for x in same}
        df.insert(1, "created", [created.get(r) for r in df["run_id"]])
        return df.sort_values(["created", "run_id"], kind="stable").reset_index(drop=True)[cols]

    @_memo_run
    def failures(self, run_id: str) -> pd.DataFrame:
        """image_id, split, source, reason of images that could not be loaded."""
        f = self._file(run_id, "failures")
        if f is None:
            return pd.DataFrame(columns=["image_id", "split", "source", "reason"])
        return self._df("SELECT image_id, split, source, reason FROM read_parquet(?) ORDER BY image_id", [f])

    # ---------------------------------------------------------------- escape hatch
    def sql(self, query: str, params: Sequence[object] | Mapping[str, object] | None = None) -> pd.DataFrame:
        """Run one read-only SELECT over the views (runs, images, predictions, cams, ...).

        Values go in ``params`` (``?`` or ``$name``). Anything but a single SELECT statement
        (CREATE, COPY, ATTACH, SET, ...) is refused: readers never change the store.
        """
        try:
            statements = duckdb.extract_statements(query)
        except duckdb.Error as exc:
            raise UserError(f"invalid SQL: {exc}") from exc
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise UserError("sql() runs exactly one SELECT statement")
        self._maybe_refresh()
        with self._lock:
            if self._views_dirty:
                self._build_views(*self._views_for)
                self._views_dirty = False
        return self._df(query, params)


def _arrow_to_table(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """Materialize an Arrow table as a DuckDB table visible to every cursor (name is ours)."""
    con.register("_arrow_in", table)
    try:
        con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _arrow_in")
    finally:
        con.unregister("_arrow_in")


def _copy(value: Any) -> Any:
    """A copy of a memoized result the caller may mutate (numpy arrays are read-only instead)."""
    if isinstance(value, pd.DataFrame):
        return value.copy()
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, RunDiff):
        return RunDiff(value.metrics.copy(), value.confusion_delta.copy(), value.flips.copy())
    return value


def _list_to_matrix(col: pa.ChunkedArray) -> np.ndarray:
    """A list<float> column of equal-length lists -> float32 [N, K] without a Python loop."""
    if len(col) == 0:
        return np.zeros((0, 0), np.float32)
    arr = col.combine_chunks()
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(arr), -1)


def open_store(path: str | Path) -> StoreReader:
    """Open a store for reading; UserError if ``path`` is not one."""
    return StoreReader(path)
