"""Reader side of the results store: ``open_store(path) -> StoreReader``, the typed queries the
dashboard uses.

One in-memory DuckDB connection per reader; every thread gets its own cursor
(``con.cursor()`` in a ``threading.local``) because a DuckDB connection object must not be used
by two threads at once. All values are bound parameters (``?``) — including the Parquet file
paths, which ``read_parquet(?)`` accepts — and identifiers (run ids, image ids, method names)
are checked against regexes/allow-lists before use, so a filter value like
``' OR 1=1 --`` is just a string that matches nothing.

Speed with many runs: per-run queries read that run's own files directly
(``read_parquet(?)`` with ``runs/<id>/<table>.parquet``), so their cost does not grow with the
number of runs. The rooms behind the queries: the run list (:mod:`xaidash.store.read.catalog`; new or
deleted runs are noticed by the mtime of ``runs/`` on every call, or :meth:`StoreReader.refresh`),
the per-run cache of light columns (:mod:`xaidash.store.read.light`) and memoized results
(:mod:`xaidash.store.read.cache`, :mod:`xaidash.store.read.memo`), and the gallery and row-group
indexes (:mod:`xaidash.store.read.index`): files are sorted by image_id in small row groups, so a
point lookup decodes one row group. The data-quality queries are :attr:`StoreReader.quality`.
The cross-run views (``predictions``, ``cams``, ... for :meth:`StoreReader.sql`) are rebuilt
lazily, on the first ``sql()`` after a change. Parquet footers are cached
(``parquet_metadata_cache``).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from xaidash.constants import FAITHFULNESS_SCORES, METHOD_RE, RUN_ID_RE, TARGET_KINDS
from xaidash.errors import UserError
from xaidash.store.files import distinct_values, require_store
from xaidash.store.read.cache import RunCache
from xaidash.store.read.catalog import Catalog, RunEntry, build_views
from xaidash.store.read.headline import HEADLINE, HEADLINE_SQL, headline_out
from xaidash.store.read.index import (
    GalleryIndex,
    RowGroupIndexes,
    list_to_matrix,
    stored_keys,
)
from xaidash.store.read.memo import memo_run
from xaidash.store.read.quality import QualityQueries
from xaidash.store.read.ranking import RankingQueries
from xaidash.store.read.records import GalleryQuery, ImageDetail, Map, Params, RunDiff, RunInfo
from xaidash.store.read.run_diff import CONFUSION_DIFF_SQL, metric_deltas, prediction_flips
from xaidash.store.read.trust_tables import TrustQueries, valid_image_id
from xaidash.store.schema import GALLERY_COLUMNS, RUNS

__all__ = ["GalleryQuery", "ImageDetail", "RunDiff", "RunInfo", "StoreReader", "open_store"]

TOPK = 5

#: train image ids, their labels (int64, -1 when unknown) and vectors (float32 [N, K])
TrainEmbeddings = tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.float32]]


class StoreReader:
    """Typed, read-only queries over a store (what the dashboard uses).

    ``cache_runs`` is how many runs keep their in-memory query cache (see
    :meth:`xaidash.store.read.cache.RunCache.tables`).
    """

    def __init__(self, path: str | Path, cache_runs: int = 4) -> None:
        p = require_store(path)
        self.path = p
        self._lock = threading.RLock()
        self._local = threading.local()
        self._con = duckdb.connect(":memory:")
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._catalog = Catalog(p)
        self._run_cache = RunCache(
            self._exec,
            self._catalog.image_glob,
            self._lock,
            cache_runs,
            ingest=self._ingest,
        )
        #: the data-quality queries (label issues, leaks, outliers, error clusters)
        self.quality = QualityQueries(self._entry, self._df, self._run_cache)
        #: the trust-check queries (sanity, baselines, ROAD, localisation)
        self.trust = TrustQueries(self._entry, self._df, self._run_cache)
        #: the calibration and ranking queries (reliability bins, ROC / PR per class, ECE, top-k)
        self.ranking = RankingQueries(self._entry, self._df, self._run_cache)
        self._row_groups = RowGroupIndexes()
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
        cur: duckdb.DuckDBPyConnection | None = getattr(self._local, "cur", None)
        if cur is None:
            with self._lock:
                cur = self._con.cursor()
                self._cursors.append(cur)
            self._local.cur = cur
        return cur

    def _arrow(self, query: str, params: Params = None) -> pa.Table:
        """Run one query with bound parameters on this thread's cursor, as an Arrow table."""
        cur = self._cursor()
        try:
            return cur.sql(query, params=params).to_arrow_table()
        except duckdb.IOException:
            # A run deleted between listing and reading: rescan so the next call sees it gone.
            self.refresh()
            raise

    def _df(self, query: str, params: Params = None) -> pd.DataFrame:
        """Like :meth:`_arrow`, as a DataFrame (Arrow -> pandas is ~5x faster than ``.df()`` here)."""
        df: pd.DataFrame = self._arrow(query, params).to_pandas()
        return df

    def _exec(self, query: str, params: Sequence[object] | None = None) -> None:
        self._cursor().execute(query, params)

    def _ingest(self, name: str, table: pa.Table) -> None:
        """``CREATE TABLE name`` (a trusted identifier) from an Arrow table, on this thread's cursor."""
        cur = self._cursor()
        cur.register("_xaidash_ingest", table)
        try:
            cur.execute(f"CREATE TABLE {name} AS SELECT * FROM _xaidash_ingest")
        finally:
            cur.unregister("_xaidash_ingest")

    # ---------------------------------------------------------------- discovery
    def refresh(self) -> None:
        """Rescan ``runs/`` now (new or deleted runs) and rebuild the cross-run views."""
        with self._lock:
            self._catalog.forget()
            self._scan()

    def _maybe_refresh(self) -> None:
        if self._catalog.changed():
            with self._lock:
                self._scan()

    def _scan(self) -> None:
        """Read manifests of new run directories, evict vanished ones, mark the views stale."""
        gone = self._catalog.scan()
        if gone is None:
            return
        for run_id in gone:
            self._run_cache.evict(run_id)
        # The cross-run views are only needed by sql(); binding them reads the footer of every
        # file of every run (union_by_name), ~3 ms per run, so they are built on first use.
        self._views_dirty = True

    # ---------------------------------------------------------------- helpers
    def _entry(self, run_id: object) -> RunEntry | None:
        """The entry of a readable run, None for malformed/unknown ids; UserError for old runs."""
        if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
            return None
        self._maybe_refresh()
        e = self._catalog.entries.get(run_id)
        if e is None:
            return None
        if e.error is not None:
            raise UserError(e.error)
        return e

    def _file_df(self, run_id: str, table: str, columns: list[str], order_by: str) -> pd.DataFrame:
        """``columns`` of one of the run's tables in ``order_by`` order (none when no such run)."""
        e = self._entry(run_id)
        if e is None or not e.file(table).is_file():
            return pd.DataFrame(columns=columns)
        cols = ", ".join(f'"{c}"' for c in columns)
        return self._df(f"SELECT {cols} FROM read_parquet(?) ORDER BY {order_by}", [str(e.file(table))])

    def _cams_rows(self, e: RunEntry, ids: Sequence[str]) -> pa.Table:
        cols = ["image_id", "method", "target_kind", "target_class", "h", "w", "map"]
        return self._row_groups.get([e.file("cams")]).read(ids, cols)

    def _image_rows(self, e: RunEntry, ids: Sequence[str], columns: list[str]) -> pa.Table | None:
        parts = self._catalog.image_parts(e)
        return self._row_groups.get(parts).read(ids, columns) if parts else None

    def warm(self, run_id: str) -> None:
        """Build a run's in-memory cache now (e.g. in the background when the dashboard starts)."""
        e = self._entry(run_id)
        if e is not None:
            self._run_cache.tables(e)

    def warm_light(self, run_id: str) -> None:
        """Read a run's light columns, build its gallery index, the row-group indexes of its maps
        and thumbnails and its list of map methods now (Arrow and numpy only, no DuckDB: safe in a
        daemon thread while the reader serves other queries)."""
        e = self._entry(run_id)
        if e is not None and self._run_cache.light_rows(e) is not None:
            self._gallery_index(e)  # from the Arrow columns just read (never the SQL path here)
            # the footers a gallery page's maps and thumbnails are looked up in (~10k row groups)
            self._row_groups.get([e.file("cams")])
            self.map_methods(e.run_id)  # which methods the pages' pickers offer (a column read)
            parts = self._catalog.image_parts(e)
            if parts:
                self._row_groups.get(parts)

    # ---------------------------------------------------------------- runs
    def runs(self) -> pd.DataFrame:
        """All readable runs, newest first (the runs table). Unreadable runs: :meth:`skipped_runs`."""
        self._maybe_refresh()
        return self._catalog.runs_df.copy()

    def skipped_runs(self) -> dict[str, str]:
        """run_id -> why it is not listed (e.g. written by another schema version)."""
        self._maybe_refresh()
        return {k: e.error for k, e in sorted(self._catalog.entries.items()) if e.error is not None}

    def run(self, run_id: str) -> RunInfo | None:
        """The run's row as a RunInfo, None if no such run; UserError if it has another schema."""
        e = self._entry(run_id)
        if e is None:
            return None
        row: dict[str, Any] = {n: e.row.get(n) for n in RUNS.names}  # checked against RUNS at scan
        row["created"] = pd.Timestamp(row["created"])
        row["class_names"] = list(row["class_names"] or [])
        row["methods"] = list(row["methods"] or [])
        return RunInfo(**row, labeled=row["accuracy"] is not None)

    def latest_run_id(self) -> str | None:
        """Newest readable run, or None for an empty store."""
        self._maybe_refresh()
        return None if self._catalog.runs_df.empty else str(self._catalog.runs_df["run_id"].iloc[0])

    def manifest(self, run_id: str) -> dict[str, Any] | None:
        """The run's manifest (files, row counts, bytes), or None."""
        e = self._entry(run_id)
        if e is None or e.manifest is None:
            return None
        copy: dict[str, Any] = json.loads(json.dumps(e.manifest))
        return copy

    # ---------------------------------------------------------------- metrics
    @memo_run
    def headline(self, run_id: str) -> dict[str, float | int | None]:
        """n, accuracy, macro_precision, macro_recall, macro_f1, weighted_f1, errors, failed
        (see :mod:`xaidash.store.read.headline`)."""
        e = self._entry(run_id)
        if e is None:
            return dict.fromkeys(HEADLINE)
        row = self._arrow(HEADLINE_SQL, [str(e.file("predictions")), str(e.file("class_metrics"))])
        return headline_out(row, e)

    @memo_run
    def class_metrics(self, run_id: str) -> pd.DataFrame:
        """class, class_name, precision, recall, f1, support (by class index)."""
        cols = ["class", "class_name", "precision", "recall", "f1", "support"]
        return self._file_df(run_id, "class_metrics", cols, '"class"')

    @memo_run
    def confusion(self, run_id: str) -> pd.DataFrame:
        """true_class, pred_class, count (long form; zero cells may be absent)."""
        cols = ["true_class", "pred_class", "count"]
        return self._file_df(run_id, "confusion", cols, "true_class, pred_class")

    @memo_run
    def confidence_histogram(self, run_id: str, bins: int = 20) -> pd.DataFrame:
        """bin_start, bin_end, correct, count over confidence in [0, 1] (non-empty bins only).

        Two columns read from the predictions file (not the run's cache: the overview of a run
        opened for the first time does not wait for it).
        """
        cols = ["bin_start", "bin_end", "correct", "count"]
        bins = int(bins)
        if not 1 <= bins <= 1000:
            raise UserError(f"bins must be between 1 and 1000, got {bins}")
        e = self._entry(run_id)
        if e is None:
            return pd.DataFrame(columns=cols)
        return self._df(
            """
            WITH b AS (
              SELECT least(CAST(floor(confidence * ?) AS INTEGER), ? - 1) AS bin, correct FROM read_parquet(?)
            )
            SELECT bin / ?::DOUBLE AS bin_start, (bin + 1) / ?::DOUBLE AS bin_end, correct,
                   count(*) AS "count"
            FROM b GROUP BY bin, correct ORDER BY bin, correct
            """,
            [bins, bins, str(e.file("predictions")), bins, bins],
        )

    @memo_run
    def faithfulness_summary(self, run_id: str) -> pd.DataFrame:
        """Per method: mean drop, increase (fractions; x100 for %), deletion_auc, insertion_auc, n.

        Read from the faithfulness file directly (numeric columns, no cache needed).
        """
        cols = ["method", *FAITHFULNESS_SCORES, "n"]
        e = self._entry(run_id)
        if e is None:
            return pd.DataFrame(columns=cols)
        return self._df(
            """
            SELECT method, avg("drop") AS "drop", avg(increase) AS increase,
                   avg(deletion_auc) AS deletion_auc, avg(insertion_auc) AS insertion_auc, count(*) AS n
            FROM read_parquet(?) GROUP BY method ORDER BY method
            """,
            [str(e.file("faithfulness"))],
        )

    # ---------------------------------------------------------------- gallery
    def gallery(self, run_id: str, q: GalleryQuery) -> tuple[pd.DataFrame, int]:
        """One page of val images matching the filters, and the total count of matches.

        Sort keys: confidence; loss (stored cross-entropy); faithfulness (insertion_auc -
        deletion_auc of ``q.method``); disagreement (cam_disagreement). Nulls sort last; ties
        are broken by image_id so pages are stable.
        """
        q.check()
        e = self._entry(run_id)
        if e is None:
            return pd.DataFrame(columns=[*GALLERY_COLUMNS, "sort_value", "flags"]), 0
        return self._gallery_index(e).page(q, q.sort_key(e.methods))

    def _gallery_index(self, e: RunEntry) -> GalleryIndex:
        g = self._run_cache.galleries.get(e.run_id)
        if g is not None:
            return g
        methods = [m for m in e.methods if METHOD_RE.match(m)]
        light = self._run_cache.light_rows(e)  # outside the lock: other queries go on meanwhile
        with self._lock:
            g = self._run_cache.galleries.get(e.run_id)
            if g is None and light is not None:  # from the Arrow columns: no DuckDB table needed
                g = self._run_cache.galleries[e.run_id] = GalleryIndex.from_table(
                    light, methods, self.quality.quality_rows(e))
            if g is None:
                h = self._run_cache.tables(e)
                cols = ", ".join([*GALLERY_COLUMNS, *(f'"faith_{m}"' for m in methods)])
                t = self._arrow(f'SELECT {cols} FROM cache."l_{h}" ORDER BY ord')
                g = self._run_cache.galleries[e.run_id] = GalleryIndex.from_table(
                    t, methods, self.quality.quality_rows(e))
            return g

    # ---------------------------------------------------------------- one image
    def image(self, run_id: str, image_id: str) -> ImageDetail | None:
        """Prediction, top-k, all maps, faithfulness and metadata of one image; None if absent."""
        e = self._entry(run_id)
        if e is None or not valid_image_id(image_id):
            return None
        light = self._run_cache.light_rows(e)
        if light is not None:  # the run's Arrow columns and row-group reads: no DuckDB table
            rows = self._gallery_index(e).rows_of([image_id])
            pred = light.take(pa.array(rows)).drop_columns(["ord", "x", "y", "source", "width", "height"])
            fcols = ["image_id", "method", *FAITHFULNESS_SCORES]
            ft = self._row_groups.get([e.file("faithfulness")]).read([image_id], fcols)
            faith_t = ft.select(fcols[1:]).sort_by("method") if ft.num_rows else None
            faith = (
                faith_t.to_pandas()
                if faith_t is not None
                else pd.DataFrame(columns=["method", *FAITHFULNESS_SCORES])
            )
            return self._image(e, None, image_id, pred, faith)
        with self._run_cache.pinned(e) as (h,):
            pred = self._arrow(
                f'SELECT * EXCLUDE (ord, x, y, source, width, height) FROM cache."l_{h}" WHERE image_id = ?',
                [image_id],
            )
            faith = self._df(
                f'SELECT method, "drop", increase, deletion_auc, insertion_auc FROM cache."f_{h}" '
                "WHERE image_id = ? ORDER BY method",
                [image_id],
            )
            return self._image(e, h, image_id, pred, faith)

    def _image(
        self, e: RunEntry, h: str | None, image_id: str, pred: pa.Table, faith: pd.DataFrame
    ) -> ImageDetail | None:
        cams = self._cams_rows(e, [image_id])
        meta = self._image_meta(e, h, image_id)
        if pred.num_rows == 0 and cams.num_rows == 0 and meta is None:
            return None
        names = e.class_names
        prediction: dict[str, Any] = {}
        topk: list[tuple[int, str, float]] = []
        if pred.num_rows:
            prediction = {k: v for k, v in pred.to_pylist()[0].items() if not k.startswith("faith_")}
            raw = prediction.get("probabilities")
            if raw is None:  # not cached in memory: read the one row group holding it
                t = self._row_groups.get([e.file("predictions")]).read(
                    [image_id], ["image_id", "probabilities"]
                )
                raw = t.column("probabilities")[0].as_py() if t.num_rows else []
            probs = np.asarray(raw, dtype=np.float32)
            prediction["probabilities"] = probs
            for c in np.argsort(-probs, kind="stable")[:TOPK]:
                topk.append((int(c), names[c] if c < len(names) else str(c), float(probs[c])))
        maps: dict[tuple[str, str], tuple[int, Map]] = {}
        for r in sorted(cams.to_pylist(), key=lambda r: (r["method"], r["target_kind"])):
            maps[(r["method"], r["target_kind"])] = (int(r["target_class"]), _map(r))
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

    def _image_meta(self, e: RunEntry, h: str | None, image_id: str) -> dict[str, Any] | None:
        """The image's metadata row (its val row first), from the cache table ``h`` (when built by
        the SQL join) or the dataset's image parts."""
        cols = ["split", "label", "label_name", "source", "width", "height"]
        t = pa.table({c: pa.array([], pa.null()) for c in cols})
        if h is not None:
            t = self._arrow(
                f'SELECT {", ".join(cols)} FROM cache."l_{h}" WHERE image_id = ? AND source IS NOT NULL',
                [image_id],
            )
        if not t.num_rows:  # the Arrow-built cache has no metadata; a train image (twin) neither
            parts = self._image_rows(e, [image_id], ["image_id", *cols])
            if parts is None or not parts.num_rows:
                return None
            t = parts.select(cols).sort_by([("split", "descending")])  # 'val' before 'train'
        rows: list[dict[str, Any]] = t.slice(0, 1).to_pylist()
        return rows[0] if rows else None

    def cam(self, run_id: str, image_id: str, method: str, target_kind: str = "pred") -> Map | None:
        """One raw map as float32 [h, w] in [0, 1], or None."""
        got = self.cams_batch(run_id, [image_id], [method], target_kind)
        return got.get((image_id, method))

    def cams_batch(
        self, run_id: str, image_ids: Sequence[str], methods: Sequence[str], target_kind: str = "pred"
    ) -> dict[tuple[str, str], Map]:
        """Maps of many images at once: (image_id, method) -> float32 [h, w] (missing pairs absent).

        One read of the run's cams file (row groups pruned by image_id), for gallery pages.
        """
        e = self._entry(run_id)
        ids = [i for i in image_ids if valid_image_id(i)]
        ms = {m for m in methods if isinstance(m, str) and METHOD_RE.match(m)}
        if e is None or not ids or not ms or target_kind not in TARGET_KINDS:
            return {}
        rows = self._cams_rows(e, ids).to_pylist()
        return {
            (r["image_id"], r["method"]): _map(r)
            for r in rows
            if r["method"] in ms and r["target_kind"] == target_kind
        }

    @memo_run
    def map_methods(self, run_id: str) -> list[str]:
        """Every method with maps in the cams table, sorted (the run's and sample-only ones)."""
        e = self._entry(run_id)
        if e is None:
            return []
        recorded = ((e.manifest or {}).get("tables") or {}).get("cams", {}).get("methods")
        if isinstance(recorded, list) and all(isinstance(m, str) for m in recorded):
            return sorted(recorded)
        return distinct_values(e.file("cams"), "method")  # a run published before they were recorded

    def map_keys(self, run_id: str, image_ids: Sequence[str]) -> set[tuple[str, str, str]]:
        """(image_id, method, target_kind) of every map stored for these images (none decoded)."""
        e, ids = self._entry(run_id), [i for i in image_ids if valid_image_id(i)]
        return stored_keys(self._row_groups.get([e.file("cams")]), ids) if e is not None and ids else set()

    def thumbnails(self, run_id: str, image_ids: Sequence[str]) -> dict[str, bytes]:
        """Thumbnails of many images at once: image_id -> bytes (images without one are absent)."""
        e = self._entry(run_id)
        ids = [i for i in image_ids if valid_image_id(i)]
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
        if e is None or not valid_image_id(image_id):
            return pd.DataFrame(columns=cols)
        df = self._df(
            "SELECT kind, rank, neighbor_id, neighbor_class, similarity FROM read_parquet(?) "
            "WHERE image_id = ? ORDER BY kind DESC, rank",  # 'twin' > 'counterfactual': twins first
            [str(e.file("neighbors")), image_id],
        )
        names = e.class_names
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
        return self._run_cache.memoized(
            ("embedding_points", e.run_id, bool(include_train)),
            lambda: self._embedding_points(e, include_train),
        )

    def _embedding_points(self, e: RunEntry, include_train: bool) -> pd.DataFrame:
        cols = ["image_id", "split", "x", "y", "label", "label_name", "pred", "pred_name", "correct"]
        light = self._run_cache.light_rows(e)
        if light is not None:  # rows in image_id order, like the cache table's ord
            t = light.select(cols)
            t = t.cast(pa.schema([pa.field(f.name, f.type) for f in t.schema]))  # no field docs
        else:
            with self._run_cache.pinned(e) as (h,):
                t = self._arrow(f'SELECT {", ".join(cols)} FROM cache."l_{h}" ORDER BY ord')
        if include_train:
            train = self._train_rows(
                e,
                "e.image_id, e.split, e.x, e.y, i.label, i.label_name, NULL::INTEGER AS pred, "
                "NULL::VARCHAR AS pred_name, NULL::BOOLEAN AS correct",
            )
            t = pa.concat_tables([t, train.cast(t.schema)])
        df: pd.DataFrame = t.to_pandas()
        return df

    def _train_rows(self, e: RunEntry, select: str) -> pa.Table:
        """``select`` over the run's train embeddings ``e`` joined with their images' labels
        ``i`` (label, label_name: null when the dataset has no images rows), by image_id."""
        glob = self._catalog.image_glob(e)
        labels = (
            "SELECT image_id, any_value(label) AS label, any_value(label_name) AS label_name "
            "FROM read_parquet(?) WHERE split = 'train' GROUP BY image_id"
            if glob
            else "SELECT NULL::VARCHAR AS image_id, NULL::INTEGER AS label, NULL::VARCHAR AS label_name "
            "WHERE false"
        )
        return self._arrow(
            f"SELECT {select} FROM read_parquet(?) e LEFT JOIN ({labels}) i USING (image_id) "
            "WHERE e.split = 'train' ORDER BY e.image_id",
            [str(e.file("embeddings")), *([glob] if glob else [])],
        )

    def train_embeddings(self, run_id: str) -> TrainEmbeddings:
        """Train ids, labels (int64, -1 when unknown) and vectors float32 [N, K] (for explain twins).

        The arrays are cached and read-only (``flags.writeable = False``): copy before changing.
        """
        e = self._entry(run_id)
        if e is None:
            return [], np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        key = ("train_embeddings", e.run_id)
        ids, labels, vec = self._run_cache.memoized(key, lambda: self._train_embeddings(e))
        return list(ids), labels, vec

    def _train_embeddings(self, e: RunEntry) -> TrainEmbeddings:
        t = self._train_rows(e, "e.image_id, i.label, e.vector")
        ids: list[str] = t.column("image_id").to_pylist()
        labels: npt.NDArray[np.int64] = t.column("label").fill_null(-1).to_numpy().astype(np.int64)
        vec = list_to_matrix(t.column("vector"))
        labels.flags.writeable = False
        vec.flags.writeable = False
        return ids, labels, vec

    # ---------------------------------------------------------------- comparisons
    @memo_run
    def diff(self, run_a: str, run_b: str) -> RunDiff:
        """What changed from run a to run b (metrics, confusion cells, per-image flips).

        Images are matched by image_id, so runs over different data have no flips.
        """
        ea, eb = self._entry(run_a), self._entry(run_b)
        if ea is None or eb is None:
            return RunDiff.empty()
        metrics = metric_deltas(self.headline(ea.run_id), self.headline(eb.run_id))
        conf = self._df(CONFUSION_DIFF_SQL, [str(ea.file("confusion")), str(eb.file("confusion"))])
        flips = prediction_flips(ea.file("predictions"), eb.file("predictions"))
        return RunDiff(metrics, conf, flips)

    def image_history(self, run_id: str, image_id: str) -> pd.DataFrame:
        """This image's prediction in every run over the same dataset fingerprint, oldest first."""
        cols = ["run_id", "created", "pred", "pred_name", "confidence", "correct"]
        e = self._entry(run_id)
        if e is None or not valid_image_id(image_id):
            return pd.DataFrame(columns=cols)
        fp = e.row.get("dataset_fingerprint")
        same = [x for x in self._catalog.readable if x.row.get("dataset_fingerprint") == fp]
        files = [str(x.file("predictions")) for x in same]
        df = self._df(
            "SELECT run_id, pred, pred_name, confidence, correct FROM read_parquet(?) WHERE image_id = ?",
            [files, image_id],
        )
        created = {x.run_id: pd.Timestamp(x.row["created"]) for x in same}
        df.insert(1, "created", [created.get(r) for r in df["run_id"]])
        out: pd.DataFrame = df.sort_values(["created", "run_id"], kind="stable").reset_index(drop=True)
        return out[cols]

    @memo_run
    def failures(self, run_id: str) -> pd.DataFrame:
        """image_id, split, source, reason of images that could not be loaded."""
        return self._file_df(run_id, "failures", ["image_id", "split", "source", "reason"], "image_id")

    # ---------------------------------------------------------------- data quality (self.quality)
    def quality_rows(self, e: RunEntry) -> pa.Table | None:
        """:meth:`QualityQueries.quality_rows <xaidash.store.read.quality.QualityQueries.quality_rows>`."""
        return self.quality.quality_rows(e)

    def has_quality(self, run_id: str) -> bool:
        """True when the run has a non-empty quality table."""
        return self.quality.has_quality(run_id)

    def quality_summary(self, run_id: str) -> dict[str, Any]:
        """Counts of the run's flags and the accuracy without leaked images ({} without a table)."""
        return self.quality.quality_summary(run_id)

    def quality_by_class(self, run_id: str) -> pd.DataFrame:
        """Per true class with any flag: class, class_name, images, mislabelled, leaks, outliers."""
        return self.quality.quality_by_class(run_id)

    def image_quality(self, run_id: str, image_id: str) -> dict[str, Any] | None:
        """The quality row of one val image (None when the run has none or no such image)."""
        return self.quality.image_quality(run_id, image_id)

    def error_clusters(self, run_id: str, true_class: int, pred_class: int) -> pd.DataFrame:
        """The clusters of one confusion cell, one row per (cluster, method), by cluster."""
        return self.quality.error_clusters(run_id, true_class, pred_class)

    def quality_overlap(self, run_a: str, run_b: str) -> pd.DataFrame:
        """Per flag: images flagged in a, in b, in both (empty when either has no quality table)."""
        return self.quality.quality_overlap(run_a, run_b)

    # ---------------------------------------------------------------- escape hatch
    def sql(self, query: str, params: Params = None) -> pd.DataFrame:
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
                build_views(self._con, self._catalog)
                self._views_dirty = False
        return self._df(query, params)


def _map(row: Mapping[str, Any]) -> Map:
    """The map of a cams row as float32 [h, w]."""
    return np.asarray(row["map"], dtype=np.float32).reshape(row["h"], row["w"])


def open_store(path: str | Path) -> StoreReader:
    """Open a store for reading; UserError if ``path`` is not one."""
    return StoreReader(path)
