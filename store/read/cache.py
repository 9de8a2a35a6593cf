"""The reader's per-run cache: in-memory DuckDB tables of a run's light columns, pinned while a
query uses them and evicted least recently used, the run's gallery index, and memoized results.

Runs are immutable, so everything here stays valid until the run is deleted (the reader's rescan
then evicts it). One :class:`RunCache` per reader, sharing the reader's lock.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xaidash.constants import METHOD_RE
from xaidash.store.read.catalog import RunEntry
from xaidash.store.read.index import GalleryIndex
from xaidash.store.read.records import RunDiff

#: Heads up to this many classes keep probabilities in the in-memory cache (ImageNet: read on demand).
MAX_CACHED_CLASSES = 100
#: Memoized immutable results (embedding points, train embeddings) kept per reader.
MEMO_SIZE = 256

T = TypeVar("T")
P = ParamSpec("P")


def _copy(value: T) -> T:
    """A copy of a memoized result the caller may mutate (numpy arrays are read-only instead)."""
    if isinstance(value, (pd.DataFrame, dict, RunDiff)):
        return cast(T, value.copy())
    return value


class RunCache:
    """Cache tables, pins, eviction, gallery indexes and memo of the runs a reader queries.

    ``execute`` runs one statement on the calling thread's cursor; ``image_glob`` gives the
    ``read_parquet`` glob of a run's images parts (None when there are none). The last ``runs``
    runs keep their tables.
    """

    def __init__(
        self,
        execute: Callable[[str, Sequence[object] | None], None],
        image_glob: Callable[[RunEntry], str | None],
        lock: threading.RLock,
        runs: int,
        ingest: Callable[[str, pa.Table], None] | None = None,
    ) -> None:
        self._execute = execute
        self._image_glob = image_glob
        #: ``ingest(name, table)`` creates the DuckDB table ``name`` from an Arrow table
        self._ingest = ingest
        self._lock = lock
        self.runs = max(1, int(runs))
        self.cached: OrderedDict[str, str] = OrderedDict()  # run_id -> cache table suffix
        #: run_id -> queries using its cache tables right now; a pinned run is never evicted
        self.pins: dict[str, int] = {}
        self.doomed: set[str] = set()  # deleted runs whose tables are dropped once unpinned
        self.memo: OrderedDict[tuple[object, ...], object] = OrderedDict()
        self.galleries: dict[str, GalleryIndex] = {}
        #: run_id -> its light columns as Arrow (the gallery index and the map's points are built
        #: from them without a DuckDB table; the last ``runs`` runs are kept)
        self.light: OrderedDict[str, pa.Table] = OrderedDict()
        self.no_light: set[str] = set()
        self._light_lock = threading.Lock()
        self._building: dict[str, threading.Event] = {}

    def light_rows(self, e: RunEntry) -> pa.Table | None:
        """The run's light columns read with Arrow (see :func:`light_table`), None when its files
        need the SQL join. Cheaper than :meth:`tables` (no copy into DuckDB), so what can use
        Arrow (gallery index, embedding points, image page) asks for this instead.

        Built outside the reader's lock (other queries go on meanwhile; ~1 s at 1M images),
        once: a second caller waits for the first. Its own small lock is never held while
        waiting, so a waiter holding the reader's lock cannot block the builder.
        """
        if self._ingest is None:
            return None
        with self._light_lock:
            t = self.light.get(e.run_id)
            if t is not None:
                self.light.move_to_end(e.run_id)
                return t
            if e.run_id in self.no_light:
                return None
            done = self._building.get(e.run_id)
            mine = done is None
            if done is None:
                done = self._building[e.run_id] = threading.Event()
        if not mine:
            done.wait()
            with self._light_lock:
                return self.light.get(e.run_id)
        t = None
        try:
            t = light_table(e, [m for m in e.methods if METHOD_RE.match(m)])
        finally:
            with self._light_lock:
                if t is None:
                    self.no_light.add(e.run_id)
                else:
                    self.light[e.run_id] = t
                    while len(self.light) > self.runs:
                        self.light.popitem(last=False)
                del self._building[e.run_id]
            done.set()
        return t

    def tables(self, e: RunEntry) -> str:
        """Suffix of the in-memory cache tables of a run, building them on first use.

        Runs are immutable, so the light per-image columns every list/sort/filter needs
        (predictions without probabilities of big heads, 2-D coordinates, per-method
        faithfulness score, image metadata) are loaded once into DuckDB's in-memory tables
        ``cache.l_<h>`` (one row per val image, sorted by image_id, ``ord`` = its rank) and
        ``cache.f_<h>`` (faithfulness rows). Gallery pages and aggregates then avoid decoding
        zstd Parquet pages on every request; point lookups of big columns (maps, vectors,
        thumbnails) still read the Parquet files. The last ``runs`` runs are kept.
        """
        with self._lock:
            h = self.cached.get(e.run_id)
            if h is not None:
                self.cached.move_to_end(e.run_id)
                return h
            h = hashlib.sha1(e.run_id.encode()).hexdigest()[:16]  # a safe identifier
            methods = [m for m in e.methods if METHOD_RE.match(m)]
            small_head = len(e.class_names) <= MAX_CACHED_CLASSES
            self._execute(f'DROP TABLE IF EXISTS cache."l_{h}"', None)
            ingest = self._ingest
            light = self.light_rows(e)
            if ingest is not None and light is not None:
                ingest(f'cache."l_{h}"', light)
            else:
                self._create_light_sql(e, h, methods, small_head)
            self._execute(f'DROP TABLE IF EXISTS cache."f_{h}"', None)
            self._execute(
                f'CREATE TABLE cache."f_{h}" AS SELECT image_id, method, "drop", increase, deletion_auc, '
                "insertion_auc FROM read_parquet(?)",  # the file is sorted by (image_id, method)
                [str(e.file("faithfulness"))],
            )
            self.cached[e.run_id] = h
            self.trim(keep=e.run_id)
            return h

    def _create_light_sql(self, e: RunEntry, h: str, methods: list[str], small_head: bool) -> None:
        """``cache.l_<h>`` by a SQL join of the files (any row order, duplicate ids)."""
        faith_cols = ", ".join(
            f'max(insertion_auc - deletion_auc) FILTER (WHERE method = ?) AS "faith_{m}"' for m in methods
        )
        probs = "p.probabilities" if small_head else "NULL::FLOAT[] AS probabilities"
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
        params: list[object] = [str(e.file("embeddings"))]
        if glob:
            params.append(glob)
        if methods:
            params += [*methods, str(e.file("faithfulness"))]
        params.append(str(e.file("predictions")))
        self._execute(
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

    @contextlib.contextmanager
    def pinned(self, *entries: RunEntry) -> Iterator[list[str]]:
        """The cache table suffixes of runs, pinned while the caller queries them.

        Another thread caching more than ``runs`` runs evicts (drops) the least recently used
        cache tables; a pinned run is skipped, so a query never loses its table mid-way (the
        cache may exceed ``runs`` while pins last, and is trimmed when they end).
        """
        with self._lock:
            hs = []
            for e in entries:  # pin each as soon as it is cached: caching the next must not evict it
                hs.append(self.tables(e))
                self.pins[e.run_id] = self.pins.get(e.run_id, 0) + 1
        try:
            yield hs
        finally:
            with self._lock:
                for e in entries:
                    n = self.pins.get(e.run_id, 0) - 1
                    if n > 0:
                        self.pins[e.run_id] = n
                    else:
                        self.pins.pop(e.run_id, None)
                self.trim()

    def trim(self, keep: str | None = None) -> None:
        """Evict unpinned deleted runs, then the least recently used unpinned runs over the limit."""
        with self._lock:
            for run_id in [r for r in self.doomed if r not in self.pins]:
                self.evict(run_id)
            over = len(self.cached) - self.runs
            for run_id in list(self.cached):
                if over <= 0:
                    break
                if run_id != keep and run_id not in self.pins:
                    self.evict(run_id)
                    over -= 1

    def evict(self, run_id: str) -> None:
        """Drop a run's tables, gallery index and memoized results (once no query pins it)."""
        with self._lock:
            if run_id in self.pins:  # in use right now: drop its tables when the query ends
                self.doomed.add(run_id)
                return
            self.doomed.discard(run_id)
            h = self.cached.pop(run_id, None)
            self.galleries.pop(run_id, None)
            with self._light_lock:
                self.light.pop(run_id, None)
                self.no_light.discard(run_id)
            if h is not None:
                self._execute(f'DROP TABLE IF EXISTS cache."l_{h}"', None)
                self._execute(f'DROP TABLE IF EXISTS cache."f_{h}"', None)
            for key in [k for k in self.memo if run_id in k]:
                del self.memo[key]

    def memoized(self, key: tuple[object, ...], fn: Callable[[], T]) -> T:
        """Cache a result of an immutable run (bounded); DataFrames are returned as copies."""
        with self._lock:
            if key in self.memo:
                self.memo.move_to_end(key)
                return _copy(cast(T, self.memo[key]))
        value = fn()
        with self._lock:
            self.memo[key] = value
            while len(self.memo) > MEMO_SIZE:
                self.memo.popitem(last=False)
        return _copy(value)


def _sorted_unique(ids: pa.Array) -> bool:
    """True when string ids are strictly increasing (the files are written sorted by image_id)."""
    if len(ids) < 2:
        return True
    return bool(pc.all(pc.less(ids.slice(0, len(ids) - 1), ids.slice(1))).as_py())


def aligned_rows(ids: pa.Array, other_ids: pa.Array, n: int) -> npt.NDArray[np.int64]:
    """Row of each of ``ids`` in ``other_ids`` (-1 where absent): a no-op when they are equal."""
    if len(other_ids) == n and (n == 0 or bool(pc.all(pc.equal(ids, other_ids)).as_py())):
        return np.arange(n, dtype=np.int64)
    at: npt.NDArray[np.int64] = (
        pc.index_in(ids, value_set=other_ids).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    )
    return at


def _take(col: pa.Array, at: npt.NDArray[np.int64], type_: pa.DataType) -> pa.Array:
    """``col[at]`` with nulls where ``at`` is -1, cast to ``type_``."""
    if len(col) == 0:
        return pa.nulls(len(at), type_)
    idx = pa.array(at, mask=at < 0)
    return col.cast(type_).take(idx)


def _bounds_match(path: Path, ids: pa.Array, start: int, per_id: int) -> bool:
    """True when every row group of ``path`` from row ``start`` on begins and ends with the
    image ids that rows ``(row - start) // per_id`` of the sorted, unique ``ids`` have, by the
    file's own min/max statistics (no id column is decoded).

    Both files come sorted by image_id from the same publish, so equal row counts plus equal
    ids at every row-group boundary (every 4,096 or 16,384 rows) is how the fast path checks
    that the rows line up; anything else (a group without statistics, a shifted boundary)
    falls back to reading the ids.
    """
    md = pq.ParquetFile(path).metadata
    col = md.schema.to_arrow_schema().get_field_index("image_id")
    if col < 0:
        return False
    row = 0
    firsts, lasts, want_first, want_last = [], [], [], []
    for rg in range(md.num_row_groups):
        g = md.row_group(rg)
        lo, hi = row, row + g.num_rows
        row = hi
        if hi <= start or g.num_rows == 0:
            continue
        st = g.column(col).statistics
        if st is None or not st.has_min_max:
            return False
        if lo >= start:  # a group straddling the start holds rows before it: only its end counts
            firsts.append(str(st.min))
            want_first.append((lo - start) // per_id)
        lasts.append(str(st.max))
        want_last.append((hi - 1 - start) // per_id)
    if not lasts:
        return len(ids) == 0
    if max(want_last) >= len(ids):
        return False
    got = ids.take(pa.array(want_first + want_last)).to_pylist()
    return bool(got == firsts + lasts)


def light_table(e: RunEntry, methods: Sequence[str]) -> pa.Table | None:
    """The rows of ``cache.l_<h>`` built with Arrow (no SQL join), or None when the files are not
    laid out as the writer lays them out (then the SQL join builds the table).

    Every run file is sorted by image_id (predictions; embeddings by split then image_id;
    faithfulness by image_id then method), so the light columns line up row for row with the
    predictions: one columnar read per file and no join. Left out (null), because they are
    read per image when needed: probabilities (the image page reads one row group) and the
    image metadata (``source``, ``width``, ``height``: the dataset's image parts, hundreds of
    small-row-group files at 1M images, read through the row-group index). At 1M images this
    is ~0.6 s where the SQL join took ~10 s.
    """
    pcols = [
        "image_id",
        "split",
        "label",
        "label_name",
        "pred",
        "pred_name",
        "confidence",
        "correct",
        "loss",
        "runner_up",
        "cam_disagreement",
    ]
    # names and splits are a few distinct strings: decoded as dictionaries, not 1M Python-free copies
    names = ["split", "label_name", "pred_name"]
    pred = pq.read_table(e.file("predictions"), columns=pcols, read_dictionary=names).select(pcols)
    pred = pred.cast(
        pa.schema([pa.field(f.name, pa.string() if f.name in names else f.type) for f in pred.schema])
    )
    ids = pred.column("image_id").combine_chunks()
    if not _sorted_unique(ids):
        return None
    n = len(ids)
    out = pred.add_column(0, "ord", pa.array(np.arange(1, n + 1, dtype=np.int64)))
    out = out.add_column(
        out.schema.get_field_index("correct"), "probabilities", pa.nulls(n, pa.list_(pa.float32()))
    )
    # embeddings: sorted by split then image_id, so the val rows are one run of rows; their ids
    # are checked by row-group statistics, not decoded (decoding them was ~40 % of the time)
    ef = e.file("embeddings")
    split = pq.read_table(ef, columns=["split"], read_dictionary=["split"]).column("split").combine_chunks()
    is_val = pc.equal(split.dictionary, "val").to_numpy(zero_copy_only=False)
    val_rows: npt.NDArray[np.intp] = (
        np.flatnonzero(is_val[split.indices.to_numpy(zero_copy_only=False)])
        if len(split)
        else np.zeros(0, np.intp)
    )
    v0 = int(val_rows[0]) if len(val_rows) else len(split)
    xy = None
    if len(val_rows) == n and (n == 0 or int(val_rows[-1]) == v0 + n - 1) and _bounds_match(ef, ids, v0, 1):
        xy = pq.read_table(ef, columns=["x", "y"]).slice(v0, n)
        at = np.arange(n, dtype=np.int64)
    if xy is None:
        emb = pq.read_table(ef, columns=["image_id", "split", "x", "y"], filters=[("split", "=", "val")])
        at = aligned_rows(ids, emb.column("image_id").combine_chunks(), n)
        xy = emb
    for c in ("x", "y"):
        out = out.append_column(c, _take(xy.column(c).combine_chunks(), at, pa.float32()))
    out = out.append_column("source", pa.nulls(n, pa.string()))
    out = out.append_column("width", pa.nulls(n, pa.int32()))
    out = out.append_column("height", pa.nulls(n, pa.int32()))
    if methods:
        ff = e.file("faithfulness")
        cols = ["method", "deletion_auc", "insertion_auc"]
        f = pq.read_table(ff, columns=cols, read_dictionary=["method"])
        codes = f.column("method").combine_chunks()
        dictionary = codes.dictionary.to_pylist()
        index = codes.indices.to_numpy(zero_copy_only=False)
        k = len(dictionary)
        # sorted by (image_id, method): k rows per image, methods in the same order each time
        regular = (
            k > 0
            and len(index) == n * k
            and bool(np.all(index.reshape(n, k) == np.sort(index[:k])))
            and _bounds_match(ff, ids, 0, k)
        )
        if not regular:  # read the ids and line the rows up by them
            f = pq.read_table(ff, columns=["image_id", *cols], read_dictionary=["method"])
        score_all = pc.subtract(f.column("insertion_auc"), f.column("deletion_auc")).combine_chunks()
        for m in methods:
            if m not in dictionary:
                out = out.append_column(f"faith_{m}", pa.nulls(n, pa.float32()))
                continue
            mi = dictionary.index(m)
            if regular:
                col = int(np.flatnonzero(np.sort(index[:k]) == mi)[0])
                score = score_all.take(pa.array(np.arange(n, dtype=np.int64) * k + col))
                out = out.append_column(f"faith_{m}", score.cast(pa.float32()))
                continue
            keep = pa.array(index == mi)
            fids = f.column("image_id").filter(keep).combine_chunks()
            if not _sorted_unique(fids):
                return None  # two rows of one (image, method): the SQL's max() decides
            score = score_all.filter(keep)
            out = out.append_column(f"faith_{m}", _take(score, aligned_rows(ids, fids, n), pa.float32()))
    return out


def prediction_flips(file_a: Path, file_b: Path) -> pd.DataFrame:
    """Images whose prediction or correctness changed from run a to run b, matched by image_id:
    image_id, label, label_name (b's, else a's), pred_a, pred_b, conf_a, conf_b and change
    ('fixed' wrong -> right, 'broke' right -> wrong, else 'changed'), by change then image_id.

    Both files are read column-wise and compared in numpy: the predictions of runs over the
    same data are sorted by the same ids, so they line up without a join (~0.1 s at 1M images,
    where joining the two runs' cache tables first had to build them, seconds per run).
    """
    cols = ["image_id", "label", "label_name", "pred", "confidence", "correct"]
    ta, tb = (pq.read_table(f, columns=cols).select(cols).combine_chunks() for f in (file_a, file_b))
    at = aligned_rows(
        ta.column("image_id").chunk(0) if ta.num_rows else pa.array([], pa.string()),
        tb.column("image_id").chunk(0) if tb.num_rows else pa.array([], pa.string()),
        ta.num_rows,
    )
    both = at >= 0
    bt = tb.take(pa.array(np.where(both, at, 0))) if tb.num_rows else None
    if bt is None or not both.any():
        empty = {
            "image_id": pa.string(),
            "label": pa.int32(),
            "label_name": pa.string(),
            "pred_a": pa.int32(),
            "pred_b": pa.int32(),
            "conf_a": pa.float32(),
            "conf_b": pa.float32(),
            "change": pa.string(),
        }
        out: pd.DataFrame = pa.table({k: pa.array([], t) for k, t in empty.items()}).to_pandas()
        return out

    def correct(t: pa.Table) -> npt.NDArray[np.int8]:
        c: npt.NDArray[np.int8] = t.column("correct").cast(pa.int8()).fill_null(-1).to_numpy().astype(np.int8)
        return c

    pred_a, pred_b = (t.column("pred").to_numpy() for t in (ta, bt))
    ca, cb = correct(ta), correct(bt)
    rows = np.flatnonzero(both & ((pred_a != pred_b) | (ca != cb)))
    change = np.where(
        (ca[rows] == 0) & (cb[rows] == 1),
        "fixed",
        np.where((ca[rows] == 1) & (cb[rows] == 0), "broke", "changed"),
    )
    ra, rb = ta.take(pa.array(rows)), bt.take(pa.array(rows))
    flips = pa.table(
        {
            "image_id": ra.column("image_id"),
            "label": pc.coalesce(rb.column("label"), ra.column("label")),
            "label_name": pc.coalesce(rb.column("label_name"), ra.column("label_name")),
            "pred_a": ra.column("pred"),
            "pred_b": rb.column("pred"),
            "conf_a": ra.column("confidence"),
            "conf_b": rb.column("confidence"),
            "change": pa.array(change, pa.string()),
        }
    ).sort_by([("change", "ascending"), ("image_id", "ascending")])
    df: pd.DataFrame = flips.to_pandas()
    return df


#: the headline numbers of a run, in display order
HEADLINE = (
    "n",
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_f1",
    "errors",
    "failed",
)


def headline_out(t: pa.Table, e: RunEntry) -> dict[str, float | int | None]:
    """The headline numbers of a run from its headline row (None where unknown)."""
    row: dict[str, Any] = t.to_pylist()[0]
    tables = (e.manifest or {}).get("tables", {})
    row["failed"] = int(tables.get("failures", {}).get("rows", e.row.get("num_failed") or 0))
    out: dict[str, float | int | None] = {}
    for k in HEADLINE:
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


class Memoizing(Protocol):
    """What :func:`memo_run` needs of the object whose methods it memoizes (the reader)."""

    _run_cache: RunCache

    def _entry(self, run_id: object) -> RunEntry | None: ...


S = TypeVar("S", bound=Memoizing)


def memo_run(fn: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
    """Memoize a query over an immutable run (keyed by method name and bound arguments).

    The first argument after ``self`` is the run id. Published runs never change, so a result
    stays valid until the run is deleted (then the rescan drops it). Unknown/invalid run ids are
    not memoized.
    """
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = list(bound.arguments.values())[1:]
        if self._entry(values[0]) is None:
            return fn(self, *args, **kwargs)
        return self._run_cache.memoized((fn.__name__, *values), lambda: fn(self, *args, **kwargs))

    return wrapper
