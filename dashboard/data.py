"""The dashboard's view of a store: caching, locking and small derived computations.

The dashboard talks to the store only through :class:`xaidash.store.reader.StoreReader` (and its
``sql()`` escape hatch with bound parameters for the two batch look-ups below). Runs are
immutable, so per-run aggregates are memoised forever; only the list of runs is re-read
(a compute job may publish a new run while the dashboard is open).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from xaidash.constants import IMAGE_ID_RE, METHODS, RUN_ID_RE
from xaidash.dashboard.params import SELECTION_RE

log = logging.getLogger(__name__)

T = TypeVar("T")

RUNS_TTL_S = 5.0


class _LRU:
    """Tiny thread-safe LRU keyed by hashable tuples (values may be None: cached misses)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._d: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]  # type: ignore[no-any-return]
        value = compute()
        with self._lock:
            self._d[key] = value
            while len(self._d) > self.maxsize:
                self._d.popitem(last=False)
        return value

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        with self._lock:
            self._d[key] = value
            while len(self._d) > self.maxsize:
                self._d.popitem(last=False)


@dataclass(frozen=True)
class ResolvedRun:
    """The run a page shows and, when the URL asked for another one, why it was replaced."""

    run_id: str | None
    warning: str | None = None


class DashData:
    """Cached, thread-safe access to one store for all pages and routes.

    The reader gives each thread its own DuckDB cursor, so calls run concurrently (Flask serves
    requests on threads; a gallery page fires ~100 overlay requests at once). Caching makes the
    expensive aggregates run once per run.
    """

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self._runs: tuple[float, pd.DataFrame] | None = None
        self._per_run = _LRU(512)  # (name, run_id, *args) -> aggregate
        self._pages = _LRU(256)  # gallery pages
        self._images = _LRU(1024)  # image details, neighbours
        self._cams = _LRU(20_000)  # (run, image, method, kind) -> np.ndarray | None
        self._thumbs = _LRU(20_000)  # (fingerprint or run, image) -> bytes | None
        self._pending: dict[tuple[str, str], threading.Event] = {}
        self._pending_lock = threading.Lock()

    # ---- runs -------------------------------------------------------------------------------
    def _call(self, name: str, *args: Any) -> Any:
        return getattr(self.reader, name)(*args)

    def runs(self) -> pd.DataFrame:
        """All runs, newest first (re-read at most every few seconds)."""
        now = time.monotonic()
        if self._runs is None or now - self._runs[0] > RUNS_TTL_S:
            self._runs = (now, self._call("runs"))
        return self._runs[1]

    def run_ids(self) -> list[str]:
        runs = self.runs()
        return [str(r) for r in runs["run_id"]] if len(runs) else []

    def run(self, run_id: str) -> Any:
        """RunInfo for ``run_id`` (None when unknown)."""
        if not RUN_ID_RE.match(run_id):
            return None
        return self._per_run.get(("run", run_id), lambda: self._call("run", run_id))

    def resolve_run(self, requested: str | None) -> ResolvedRun:
        """The run to show: the requested one if it exists, else the latest (with a warning)."""
        ids = self.run_ids()
        if not ids:
            return ResolvedRun(None)
        if requested is None:
            return ResolvedRun(ids[0])
        if requested in ids:
            return ResolvedRun(requested)
        return ResolvedRun(ids[0], f"There is no run {requested!r} in this store; showing the latest run.")

    def comparable_runs(self, run_id: str) -> pd.DataFrame:
        """Runs over the same dataset fingerprint as ``run_id`` (newest first)."""
        runs = self.runs()
        info = self.run(run_id)
        if info is None or not len(runs):
            return runs.iloc[0:0]
        fp = getattr(info, "dataset_fingerprint", None)
        return runs[runs["dataset_fingerprint"] == fp]

    # ---- per-run aggregates (immutable, cached) ---------------------------------------------
    def cached(self, name: str, run_id: str, *args: Any) -> Any:
        """Memoised ``reader.<name>(run_id, *args)``."""
        return self._per_run.get((name, run_id, *args), lambda: self._call(name, run_id, *args))

    def headline(self, run_id: str) -> dict[str, Any]:
        return self.cached("headline", run_id)  # type: ignore[no-any-return]

    def class_metrics(self, run_id: str) -> pd.DataFrame:
        return self.cached("class_metrics", run_id)  # type: ignore[no-any-return]

    def confusion(self, run_id: str) -> pd.DataFrame:
        return self.cached("confusion", run_id)  # type: ignore[no-any-return]

    def confidence_histogram(self, run_id: str, bins: int = 20) -> pd.DataFrame:
        return self.cached("confidence_histogram", run_id, bins)  # type: ignore[no-any-return]

    def faithfulness_summary(self, run_id: str) -> pd.DataFrame:
        return self.cached("faithfulness_summary", run_id)  # type: ignore[no-any-return]

    def failures(self, run_id: str) -> pd.DataFrame:
        return self.cached("failures", run_id)  # type: ignore[no-any-return]

    def embedding_points(self, run_id: str, include_train: bool = False) -> pd.DataFrame:
        return self.cached("embedding_points", run_id, include_train)  # type: ignore[no-any-return]

    def diff(self, run_a: str, run_b: str) -> Any:
        return self._per_run.get(("diff", run_a, run_b), lambda: self._call("diff", run_a, run_b))

    def train_embeddings(self, run_id: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        return self.cached("train_embeddings", run_id)  # type: ignore[no-any-return]

    # ---- pages and images -------------------------------------------------------------------
    def gallery(self, run_id: str, q: Any) -> tuple[pd.DataFrame, int]:
        return self._pages.get(("gallery", run_id, q), lambda: self._call("gallery", run_id, q))

    def image(self, run_id: str, image_id: str) -> Any:
        return self._images.get(("image", run_id, image_id), lambda: self._call("image", run_id, image_id))

    def neighbors(self, run_id: str, image_id: str) -> pd.DataFrame:
        return self._images.get(("nb", run_id, image_id), lambda: self._call("neighbors", run_id, image_id))

    def image_history(self, run_id: str, image_id: str) -> pd.DataFrame:
        # Not cached: a new run of the same data adds a row.
        return self._call("image_history", run_id, image_id)  # type: ignore[no-any-return]

    def _await_prefetch(self, run_id: str, image_id: str) -> None:
        """If a page's batch prefetch covering this image is in flight, wait for it (bounded)."""
        ev = self._pending.get((run_id, image_id))
        if ev is not None:
            ev.wait(timeout=5.0)

    def cam(self, run_id: str, image_id: str, method: str, target_kind: str = "pred") -> np.ndarray | None:
        """One raw map, from the prefetch cache when a page already loaded it in batch."""
        self._await_prefetch(run_id, image_id)
        key = (run_id, image_id, method, target_kind)
        return self._cams.get(key, lambda: self._call("cam", run_id, image_id, method, target_kind))

    def thumbnail(self, run_id: str, image_id: str) -> bytes | None:
        self._await_prefetch(run_id, image_id)
        return self._thumbs.get((run_id, image_id), lambda: self._call("thumbnail", run_id, image_id))

    def prefetch(self, run_id: str, image_ids: Sequence[str], methods: Iterable[str] = METHODS) -> None:
        """Load maps and thumbnails of a page's images in two queries instead of ~5 per image.

        A gallery page then triggers ~100 overlay requests that all hit memory. Best effort: if
        the batch query fails (reader layout changed), the routes fall back to one-by-one reads.
        """
        ids = [i for i in dict.fromkeys(image_ids) if IMAGE_ID_RE.match(i)]
        if not ids:
            return
        try:
            fetch_batch(self, run_id, ids, tuple(m for m in methods if m in METHODS))
        except Exception:  # a missed optimisation must not break the page
            log.debug("prefetch failed; overlays will be read one by one", exc_info=True)

    def prefetch_async(self, run_id: str, image_ids: Sequence[str], methods: Iterable[str] = METHODS) -> None:
        """:meth:`prefetch` in a background thread, so the page returns without waiting for it.

        The browser asks for the page's overlays a moment later; routes for these images wait
        for the batch (see :meth:`_await_prefetch`) instead of issuing ~100 single queries.
        """
        ids = [i for i in dict.fromkeys(image_ids) if IMAGE_ID_RE.match(i)]
        ids = [i for i in ids if self._thumbs._d.get((run_id, i)) is None]  # already loaded: skip
        if not ids:
            return
        ev = threading.Event()
        with self._pending_lock:
            for i in ids:
                self._pending.setdefault((run_id, i), ev)
        methods = tuple(methods)

        def work() -> None:
            try:
                self.prefetch(run_id, ids, methods)
            finally:
                with self._pending_lock:
                    for i in ids:
                        if self._pending.get((run_id, i)) is ev:
                            del self._pending[(run_id, i)]
                ev.set()

        threading.Thread(target=work, name="xaidash-prefetch", daemon=True).start()

    def wait_prefetch(self, timeout: float = 10.0) -> None:
        """Wait until no prefetch is in flight (clean shutdown, benchmarks)."""
        end = time.monotonic() + timeout
        while self._pending and time.monotonic() < end:
            time.sleep(0.01)


def fetch_batch(data: DashData, run_id: str, ids: list[str], methods: tuple[str, ...]) -> None:
    """Prefetch the predicted-class maps and the thumbnails of a page of images in two reads.

    The reader's batch lookups decode only the row groups that can hold these ids, so a
    24-image gallery page costs one read of maps and one of thumbnails, not 120 point queries.
    """
    maps = data.reader.cams_batch(run_id, ids, methods, "pred")
    thumbs = data.reader.thumbnails(run_id, ids)
    for image_id in ids:
        for method in methods:
            # Remember misses too (e.g. CAM is not applicable to this head): the route then
            # answers 404 from memory instead of querying again.
            data._cams.put((run_id, image_id, method, "pred"), maps.get((image_id, method)))
        data._thumbs.put((run_id, image_id), thumbs.get(image_id))


# ---- selections (lasso in the embedding map -> gallery) -------------------------------------


class SelectionStore:
    """Server-side storage of image-id selections, keyed by a short content hash.

    A lasso can select 50,000 images - far too many for a URL - so the URL carries
    ``sel=<12 hex>`` and the ids live here. Kept in memory and on disk (so gunicorn workers
    and restarts share them); the key is a hash of the content, so links stay valid.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        if directory is None:
            base = os.environ.get("XAIDASH_CACHE_DIR") or os.path.join(Path.home(), ".cache", "xaidash")
            directory = Path(base) / "selections"
        self.dir = Path(directory)
        self._mem = _LRU(256)

    @staticmethod
    def key_for(ids: Sequence[str]) -> str:
        return hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:12]

    def put(self, ids: Sequence[str]) -> str:
        """Store ``ids`` (validated, de-duplicated, sorted) and return their key."""
        clean = sorted({i for i in ids if IMAGE_ID_RE.match(i)})
        key = self.key_for(clean)
        self._mem.put((key,), tuple(clean))
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / f"{key}.txt"
            if not path.exists():
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text("\n".join(clean), encoding="ascii")
                os.replace(tmp, path)
        except OSError:
            log.warning("could not persist selection %s under %s; it lives in memory only", key, self.dir)
        return key

    def get(self, key: str | None) -> tuple[str, ...] | None:
        """The ids stored under ``key``, or None when unknown/invalid."""
        if not key or not SELECTION_RE.match(key):
            return None

        def load() -> tuple[str, ...] | None:
            try:
                text = (self.dir / f"{key}.txt").read_text(encoding="ascii")
            except OSError:
                return None
            return tuple(i for i in text.split() if IMAGE_ID_RE.match(i))

        return self._mem.get((key,), load)


# ---- derived numbers ------------------------------------------------------------------------

#: Direction of each faithfulness metric: +1 higher is better, -1 lower is better.
FAITHFULNESS_DIRECTIONS: dict[str, int] = {"drop": -1, "increase": 1, "deletion_auc": -1, "insertion_auc": 1}


def most_faithful(summary: pd.DataFrame) -> tuple[str | None, pd.DataFrame]:
    """The most faithful method by *best mean rank* across the four faithfulness metrics.

    Each metric ranks the methods (1 = best: lowest Average Drop, highest Increase in
    Confidence, lowest Deletion AUC, highest Insertion AUC; ties share the average rank); the
    method with the lowest mean rank wins, ties broken by (insertion - deletion) AUC. Ranks,
    not raw values, because the four metrics live on different scales. Returns the winner (None
    when there is nothing to rank) and the table with a ``mean_rank`` column.
    """
    if summary is None or len(summary) == 0:
        return None, summary
    df = summary.copy()
    ranks = []
    for col, direction in FAITHFULNESS_DIRECTIONS.items():
        if col in df and df[col].notna().any():
            ranks.append(df[col].rank(ascending=direction < 0, method="average"))
    if not ranks:
        return None, df
    df["mean_rank"] = pd.concat(ranks, axis=1).mean(axis=1)
    tie = df.get("insertion_auc", 0).fillna(0) - df.get("deletion_auc", 0).fillna(0)
    order = df.assign(_tie=tie).sort_values(["mean_rank", "_tie"], ascending=[True, False])
    return str(order["method"].iloc[0]), df
