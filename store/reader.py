"""Reader side of the results store: ``open_store(path) -> StoreReader``.

One in-memory DuckDB connection per reader; every thread gets its own cursor
(``con.cursor()`` in a ``threading.local``) because a DuckDB connection object must not be used
by two threads at once. All values are bound parameters (``?``) — including the Parquet file
paths, which ``read_parquet(?)`` accepts — and identifiers (run ids, image ids, method names)
are checked against regexes/allow-lists before use, so a filter value like
``' OR 1=1 --`` is just a string that matches nothing.

Speed with many runs: per-run queries read that run's own files directly
(``read_parquet(?)`` with ``runs/<id>/<table>.parquet``), so their cost does not grow with the
number of runs; the run list comes from the manifests (JSON, cached per run directory). The
cross-run views (``predictions``, ``cams``, ... for :meth:`StoreReader.sql`) are rebuilt when
``runs/`` changes, detected by its mtime (one ``stat`` per call), or on :meth:`refresh`.
Parquet footers are cached (``parquet_metadata_cache``), and files are sorted by image_id in
small row groups so a point lookup decodes one row group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from store.schema import IMAGE_ID_RE, RUN_ID_RE, RUN_TABLES, RUNS, SCHEMA_VERSION, TABLES
from store.writer import MANIFEST, MARKER, read_manifest
from xaidash.errors import UserError

log = logging.getLogger(__name__)

_run_id_re = re.compile(RUN_ID_RE)
_image_id_re = re.compile(IMAGE_ID_RE)
_method_re = re.compile(r"^[a-z0-9_]{1,32}$")

OUTCOMES = ("all", "correct", "wrong")
SORTS = ("confidence", "loss", "faithfulness", "disagreement")
MAX_PAGE_SIZE = 1000
TOPK = 5


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
class _RunEntry:
    run_id: str
    dir: Path
    mtime_ns: int
    manifest: dict[str, Any] | None
    error: str | None  # why the run cannot be read (schema version), None when fine
    row: dict[str, Any] = field(default_factory=dict)


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
    """Typed, read-only queries over a store (what the dashboard uses)."""

    def __init__(self, path: str | Path) -> None:
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
        try:
            # Footers of files we read over and over (one per run and table) stay in memory.
            self._con.execute("SET parquet_metadata_cache = true")
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

    def _df(self, query: str, params: Sequence[object] | Mapping[str, object] | None = None) -> pd.DataFrame:
        """Run one query with bound parameters on this thread's cursor, as a DataFrame."""
        cur = self._cursor()
        try:
            return cur.execute(query, params).df()
        except duckdb.IOException:
            # A run deleted between listing and reading: rescan and try once more.
            self.refresh()
            return cur.execute(query, params).df()

    def _arrow(self, query: str, params: Sequence[object]) -> pa.Table:
        cur = self._cursor()
        return cur.sql(query, params=params).to_arrow_table()

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
        self._entries = entries
        ok = [e for e in entries.values() if e.error is None]
        rows = [e.row for e in ok]
        table = pa.Table.from_pylist(rows, schema=RUNS)
        df = table.to_pandas()
        if len(df):
            df = df.sort_values(["created", "run_id"], ascending=False, kind="stable").reset_index(drop=True)
        self._runs_df = df
        self._build_views(table, ok)
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
        if not _run_id_re.match(name) or manifest.get("run_id") != name:
            return _RunEntry(name, d, mtime_ns, manifest, f"directory {name} does not match its manifest")
        row = dict(manifest.get("run", {}))
        row["created"] = pd.Timestamp(row["created"]).to_pydatetime()
        row = {k: v for k, v in row.items() if k in RUNS.names}
        return _RunEntry(name, d, mtime_ns, manifest, None, row)

    def _build_views(self, runs_table: pa.Table, ok: list[_RunEntry]) -> None:
        """(Re)create the cross-run views used by :meth:`sql` and by cross-run queries.

        DDL takes no bound parameters, so the file lists are quoted literals; they are paths we
        listed ourselves, never user input.
        """
        con = self._con
        con.register("_runs_arrow", runs_table)
        con.execute("CREATE OR REPLACE VIEW runs AS SELECT * FROM _runs_arrow")
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
                con.register(f"_empty_{name}", _duck_type_schema(TABLES[name].schema).empty_table())
                con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM _empty_{name}")
        parts = sorted((self.path / "images").glob("*/part-*.parquet"))
        if parts:
            glob = _sql_str(str(self.path / "images" / "*" / "part-*.parquet"))
            con.execute(
                f"CREATE OR REPLACE VIEW images AS SELECT * FROM read_parquet({glob}, union_by_name = true)"
            )
        else:
            con.register("_empty_images", TABLES["images"].schema.empty_table())
            con.execute("CREATE OR REPLACE VIEW images AS SELECT * FROM _empty_images")

    # ---------------------------------------------------------------- helpers
    def _entry(self, run_id: object) -> _RunEntry | None:
        """The entry of a readable run, None for malformed/unknown ids; UserError for old runs."""
        if not isinstance(run_id, str) or not _run_id_re.match(run_id):
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
        if not fp or "/" in fp or fp.startswith("."):
            return None
        d = self.path / "images" / fp
        if not d.is_dir() or not any(d.glob("part-*.parquet")):
            return None
        return str(d / "part-*.parquet")

    @staticmethod
    def _valid_image_id(image_id: object) -> bool:
        return isinstance(image_id, str) and bool(_image_id_re.match(image_id))

    def _class_names(self, e: _RunEntry) -> list[str]:
        return list(e.row.get("class_names") or [])

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

    # ---------------------------------------------------------------- metrics
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
        pred = str(e.dir / "predictions.parquet")
        cm = str(e.dir / "class_metrics.parquet")
        fail = str(e.dir / "failures.parquet")
        df = self._df(
            """
            SELECT
              (SELECT count(*) FROM read_parquet(?)) AS n,
              (SELECT avg(CASE WHEN correct THEN 1.0 ELSE 0.0 END) FILTER (WHERE correct IS NOT NULL)
                 FROM read_parquet(?)) AS accuracy,
              (SELECT avg(precision) FROM read_parquet(?)) AS macro_precision,
              (SELECT avg(recall) FROM read_parquet(?)) AS macro_recall,
              (SELECT avg(f1) FROM read_parquet(?)) AS macro_f1,
              (SELECT sum(f1 * support) / nullif(sum(support), 0) FROM read_parquet(?)) AS weighted_f1,
              (SELECT count(*) FILTER (WHERE correct = false) FROM read_parquet(?)) AS errors,
              (SELECT count(*) FROM read_parquet(?)) AS failed
            """,
            [pred, pred, cm, cm, cm, cm, pred, fail],
        )
        out: dict[str, float | int | None] = {}
        for k in keys:
            v = df[k].iloc[0]
            if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
                out[k] = None
            elif k in ("n", "errors", "failed"):
                out[k] = int(v)
            else:
                out[k] = float(v)
        if out["accuracy"] is None:
            out["errors"] = None  # unlabeled: "errors" is unknown, not zero
        return out

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

    def confusion(self, run_id: str) -> pd.DataFrame:
        """true_class, pred_class, count (long form; zero cells may be absent)."""
        f = self._file(run_id, "confusion")
        if f is None:
            return pd.DataFrame(columns=["true_class", "pred_class", "count"])
        return self._df(
            'SELECT true_class, pred_class, "count" FROM read_parquet(?) ORDER BY true_class, pred_class', [f]
        )

    def confidence_histogram(self, run_id: str, bins: int = 20) -> pd.DataFrame:
        """bin_start, bin_end, correct, count over confidence in [0, 1] (non-empty bins only)."""
        cols = ["bin_start", "bin_end", "correct", "count"]
        f = self._file(run_id, "predictions")
        if f is None:
            return pd.DataFrame(columns=cols)
        bins = int(bins)
        if not 1 <= bins <= 1000:
            raise UserError(f"bins must be between 1 and 1000, got {bins}")
        return self._df(
            """
            WITH b AS (
              SELECT least(CAST(floor(confidence * ?) AS INTEGER), ? - 1) AS bin, correct
              FROM read_parquet(?)
            )
            SELECT bin / ?::DOUBLE AS bin_start, (bin + 1) / ?::DOUBLE AS bin_end, correct,
                   count(*) AS "count"
            FROM b GROUP BY bin, correct ORDER BY bin, correct
            """,
            [bins, bins, f, bins, bins],
        )

    def faithfulness_summary(self, run_id: str) -> pd.DataFrame:
        """Per method: mean drop, increase (fractions; x100 for %), deletion_auc, insertion_auc, n."""
        cols = ["method", "drop", "increase", "deletion_auc", "insertion_auc", "n"]
        f = self._file(run_id, "faithfulness")
        if f is None:
            return pd.DataFrame(columns=cols)
        return self._df(
            """
            SELECT method, avg("drop") AS "drop", avg(increase) AS increase,
                   avg(deletion_auc) AS deletion_auc, avg(insertion_auc) AS insertion_auc, count(*) AS n
            FROM read_parquet(?) GROUP BY method ORDER BY method
            """,
            [f],
        )

    # ---------------------------------------------------------------- gallery
    def gallery(self, run_id: str, q: GalleryQuery) -> tuple[pd.DataFrame, int]:
        """One page of val images matching the filters, and the total count of matches.

        Sort keys: confidence; loss (stored cross-entropy); faithfulness (insertion_auc -
        deletion_auc of ``q.method``); disagreement (cam_disagreement). Nulls sort last; ties
        are broken by image_id so pages are stable.
        """
        cols = [
            "image_id",
            "label",
            "label_name",
            "pred",
            "pred_name",
            "confidence",
            "correct",
            "loss",
            "cam_disagreement",
            "sort_value",
        ]
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
        pred_file = str(e.dir / "predictions.parquet")

        where = ["confidence >= ?", "confidence <= ?"]
        params: list[object] = [float(q.conf_min), float(q.conf_max)]
        if q.true_class is not None:
            where.append("label = ?")
            params.append(int(q.true_class))
        if q.pred_class is not None:
            where.append("pred = ?")
            params.append(int(q.pred_class))
        if q.outcome == "correct":
            where.append("correct")
        elif q.outcome == "wrong":
            where.append("NOT correct")
        if q.image_ids is not None:
            ids = [i for i in q.image_ids if self._valid_image_id(i)]
            if not ids:
                return empty, 0
            where.append("list_contains(?::VARCHAR[], image_id)")
            params.append(ids)

        base = (
            "SELECT image_id, label, label_name, pred, pred_name, confidence, correct, loss, "
            "cam_disagreement "
            "FROM read_parquet(?) WHERE " + " AND ".join(where)
        )
        params = [pred_file, *params]
        if q.sort == "faithfulness":
            if not isinstance(q.method, str) or not _method_re.match(q.method):
                return empty, 0
            query = (
                f"WITH p AS ({base}), f AS (SELECT image_id, insertion_auc - deletion_auc AS s "
                "FROM read_parquet(?) WHERE method = ?) "
                "SELECT p.*, f.s AS sort_value FROM p LEFT JOIN f USING (image_id)"
            )
            params += [str(e.dir / "faithfulness.parquet"), q.method]
        else:
            key = {"confidence": "confidence", "loss": "loss", "disagreement": "cam_disagreement"}[q.sort]
            query = f"SELECT *, {key} AS sort_value FROM ({base})"
        direction = "DESC" if q.descending else "ASC"  # from a fixed pair, never user text
        full = (
            f"SELECT *, count(*) OVER () AS _total FROM ({query}) "
            f"ORDER BY sort_value {direction} NULLS LAST, image_id LIMIT ? OFFSET ?"
        )
        df = self._df(full, [*params, page_size, page * page_size])
        if len(df):
            total = int(df["_total"].iloc[0])
        else:
            total = int(self._df(f"SELECT count(*) AS n FROM ({query})", params)["n"].iloc[0])
        return df.drop(columns="_total")[cols].reset_index(drop=True), total

    # ---------------------------------------------------------------- one image
    def image(self, run_id: str, image_id: str) -> ImageDetail | None:
        """Prediction, top-k, all maps, faithfulness and metadata of one image; None if absent."""
        e = self._entry(run_id)
        if e is None or not self._valid_image_id(image_id):
            return None
        pred = self._df(
            "SELECT * EXCLUDE (run_id) FROM read_parquet(?) WHERE image_id = ?",
            [str(e.dir / "predictions.parquet"), image_id],
        )
        cams = self._arrow(
            "SELECT method, target_kind, target_class, h, w, map FROM read_parquet(?) WHERE image_id = ? "
            "ORDER BY method, target_kind",
            [str(e.dir / "cams.parquet"), image_id],
        )
        meta = self._image_meta(e, image_id)
        if pred.empty and cams.num_rows == 0 and meta is None:
            return None
        names = self._class_names(e)
        prediction: dict[str, Any] = {}
        topk: list[tuple[int, str, float]] = []
        if not pred.empty:
            prediction = {k: _py(v) for k, v in pred.iloc[0].items()}
            raw = prediction.get("probabilities")
            probs = np.asarray([] if raw is None else raw, dtype=np.float32)
            prediction["probabilities"] = probs
            for c in np.argsort(-probs, kind="stable")[:TOPK]:
                topk.append((int(c), names[c] if c < len(names) else str(c), float(probs[c])))
        maps: dict[tuple[str, str], tuple[int, np.ndarray]] = {}
        for r in cams.to_pylist():
            arr = np.asarray(r["map"], dtype=np.float32).reshape(r["h"], r["w"])
            maps[(r["method"], r["target_kind"])] = (int(r["target_class"]), arr)
        faith = self._df(
            'SELECT method, "drop", increase, deletion_auc, insertion_auc FROM read_parquet(?) '
            "WHERE image_id = ? ORDER BY method",
            [str(e.dir / "faithfulness.parquet"), image_id],
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

    def _image_meta(self, e: _RunEntry, image_id: str) -> dict[str, Any] | None:
        glob = self._image_glob(e)
        if glob is None:
            return None
        df = self._df(
            "SELECT split, label, label_name, source, width, height FROM read_parquet(?) "
            "WHERE image_id = ? LIMIT 1",
            [glob, image_id],
        )
        return None if df.empty else {k: _py(v) for k, v in df.iloc[0].items()}

    def cam(self, run_id: str, image_id: str, method: str, target_kind: str = "pred") -> np.ndarray | None:
        """One raw map as float32 [h, w] in [0, 1], or None."""
        f = self._file(run_id, "cams")
        if f is None or not self._valid_image_id(image_id) or target_kind not in ("pred", "true"):
            return None
        if not isinstance(method, str) or not _method_re.match(method):
            return None
        t = self._arrow(
            "SELECT h, w, map FROM read_parquet(?) "
            "WHERE image_id = ? AND method = ? AND target_kind = ? LIMIT 1",
            [f, image_id, method, target_kind],
        )
        if t.num_rows == 0:
            return None
        r = t.to_pylist()[0]
        return np.asarray(r["map"], dtype=np.float32).reshape(r["h"], r["w"])

    def thumbnail(self, run_id: str, image_id: str) -> bytes | None:
        """PNG/JPEG bytes of the image's thumbnail (shared per dataset fingerprint), or None."""
        e = self._entry(run_id)
        if e is None or not self._valid_image_id(image_id):
            return None
        glob = self._image_glob(e)
        if glob is None:
            return None
        t = self._arrow("SELECT thumbnail FROM read_parquet(?) WHERE image_id = ? LIMIT 1", [glob, image_id])
        if t.num_rows == 0:
            return None
        v = t.column(0)[0].as_py()
        return bytes(v) if v is not None else None

    def neighbors(self, run_id: str, image_id: str) -> pd.DataFrame:
        """kind, rank, neighbor_id, neighbor_class, neighbor_class_name, similarity."""
        cols = ["kind", "rank", "neighbor_id", "neighbor_class", "neighbor_class_name", "similarity"]
        e = self._entry(run_id)
        if e is None or not self._valid_image_id(image_id):
            return pd.DataFrame(columns=cols)
        df = self._df(
            "SELECT kind, rank, neighbor_id, neighbor_class, similarity FROM read_parquet(?) "
            "WHERE image_id = ? ORDER BY kind DESC, rank",  # 'twin' before 'counterfactual'
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
        emb = str(e.dir / "embeddings.parquet")
        pred = str(e.dir / "predictions.parquet")
        val = self._df(
            "SELECT e.image_id, e.split, e.x, e.y, p.label, p.label_name, p.pred, p.pred_name, p.correct "
            "FROM read_parquet(?) e JOIN read_parquet(?) p USING (image_id) WHERE e.split = 'val' "
            "ORDER BY e.image_id",
            [emb, pred],
        )
        if not include_train:
            return val
        glob = self._image_glob(e)
        if glob is None:
            train = self._df(
                "SELECT image_id, split, x, y, NULL::INTEGER AS label, NULL::VARCHAR AS label_name, "
                "NULL::INTEGER AS pred, NULL::VARCHAR AS pred_name, NULL::BOOLEAN AS correct "
                "FROM read_parquet(?) WHERE split = 'train' ORDER BY image_id",
                [emb],
            )
        else:
            train = self._df(
                "SELECT e.image_id, e.split, e.x, e.y, i.label, i.label_name, NULL::INTEGER AS pred, "
                "NULL::VARCHAR AS pred_name, NULL::BOOLEAN AS correct FROM read_parquet(?) e "
                "LEFT JOIN (SELECT image_id, label, label_name FROM read_parquet(?) WHERE split = 'train') i "
                "USING (image_id) WHERE e.split = 'train' ORDER BY e.image_id",
                [emb, glob],
            )
        return pd.concat([val, train], ignore_index=True)

    def train_embeddings(self, run_id: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Train ids, labels (int64, -1 when unknown) and vectors float32 [N, K] (for explain twins)."""
        e = self._entry(run_id)
        if e is None:
            return [], np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
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
                "(SELECT image_id, label FROM read_parquet(?) WHERE split = 'train') i USING (image_id) "
                "WHERE e.split = 'train' ORDER BY e.image_id",
                [emb, glob],
            )
        ids = t.column("image_id").to_pylist()
        labels = t.column("label").to_numpy(zero_copy_only=False)
        labels = (
            np.where(pd.isna(labels), -1, labels).astype(np.int64) if len(labels) else np.zeros(0, np.int64)
        )
        vec = _list_to_matrix(t.column("vector"))
        return ids, labels, vec

    # ---------------------------------------------------------------- comparisons
    def diff(self, run_a: str, run_b: str) -> RunDiff:
        """What changed from run a to run b (metrics, confusion cells, per-image flips)."""
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
        flips = self._df(
            """
            SELECT a.image_id, coalesce(b.label, a.label) AS label,
                   coalesce(b.label_name, a.label_name) AS label_name,
                   a.pred AS pred_a, b.pred AS pred_b, a.confidence AS conf_a, b.confidence AS conf_b,
                   CASE WHEN NOT a.correct AND b.correct THEN 'fixed'
                        WHEN a.correct AND NOT b.correct THEN 'broke'
                        ELSE 'changed' END AS change
            FROM read_parquet(?) a JOIN read_parquet(?) b USING (image_id)
            WHERE a.pred <> b.pred OR a.correct IS DISTINCT FROM b.correct
            ORDER BY change, a.image_id
            """,
            [str(ea.dir / "predictions.parquet"), str(eb.dir / "predictions.parquet")],
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
        return self._df(query, params)


def _py(v: Any) -> Any:
    """numpy/pandas scalars -> Python (None for NA), leaving arrays alone."""
    if isinstance(v, (np.ndarray, list)):
        return v
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def _list_to_matrix(col: pa.ChunkedArray) -> np.ndarray:
    """A list<float> column of equal-length lists -> float32 [N, K] without a Python loop."""
    if len(col) == 0:
        return np.zeros((0, 0), np.float32)
    arr = col.combine_chunks()
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(arr), -1)


def open_store(path: str | Path) -> StoreReader:
    """Open a store for reading; UserError if ``path`` is not a store."""
    return StoreReader(path)
