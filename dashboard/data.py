"""The dashboard's view of a store: a thin typed facade over the store reader.

Pages and routes reach the store only through :class:`DashData`, which forwards to the public
methods of :class:`xaidash.store.StoreReader` and returns what the reader returns (RunInfo,
ImageDetail, RunDiff, DataFrames). The reader owns the caching of store data: it memoises
per-run aggregates (published runs are immutable) and notices new runs by itself. DashData keeps
one buffer of its own, for the gallery's batch prefetch (see :class:`DashData`). What the
pages build from store data at some cost (the embedding map's figure) is cached apart, in a
:class:`DerivedCache`.
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
from typing import TYPE_CHECKING, Generic, TypeVar, cast

import numpy as np
import pandas as pd

from xaidash.constants import FAITHFULNESS_DIRECTIONS, IMAGE_ID_RE, METHOD_RE, METHODS
from xaidash.dashboard.params import SELECTION_RE
from xaidash.store.read.trust_tables import TrustQueries

if TYPE_CHECKING:
    from xaidash.store import GalleryQuery, ImageDetail, RunDiff, RunInfo, StoreReader
    from xaidash.store.read.quality import QualityQueries

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

#: How long a route waits for a page's batch prefetch that covers its image.
PREFETCH_WAIT_S = 5.0


class LRU(Generic[K, V]):
    """Tiny thread-safe LRU; a stored None is a remembered miss, not an absent key."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._d: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, key: K) -> tuple[bool, V | None]:
        """(True, value) when ``key`` is cached, else (False, None); never computes."""
        with self._lock:
            if key not in self._d:
                return False, None
            self._d.move_to_end(key)
            return True, self._d[key]

    def values(self) -> list[V]:
        """What is cached now, least recently used first (a copy)."""
        with self._lock:
            return list(self._d.values())

    def get(self, key: K, compute: Callable[[], V]) -> V:
        """The cached value, or ``compute()`` stored under ``key``."""
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        value = compute()  # outside the lock: two threads may compute one key once; harmless
        self.put(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.maxsize:
                self._d.popitem(last=False)


T = TypeVar("T")


class DerivedCache:
    """Things built from store data that are expensive to build, e.g. the embedding map's
    20,000-point figure (~0.5 s) or its id -> position index.

    Not a copy of store data (the reader caches that): the results of work done on it. Keys
    start with what was built and the run id; runs are immutable, so entries never go stale.
    """

    def __init__(self, maxsize: int = 64) -> None:
        self._lru: LRU[tuple[object, ...], object] = LRU(maxsize)

    def get(self, key: tuple[object, ...], build: Callable[[], T]) -> T:
        # The key names what was built, so the value under it is always of build's type.
        return cast(T, self._lru.get(key, build))


@dataclass(frozen=True)
class ResolvedRun:
    """The run a page shows (None: the store has no runs) and, when the URL asked for another
    one, why it was replaced."""

    info: RunInfo | None
    warning: str | None = None

    @property
    def run_id(self) -> str | None:
        return None if self.info is None else self.info.run_id


class DashData:
    """Typed access to one store for all pages and routes.

    Every method forwards to the reader. The reader gives each thread its own DuckDB cursor, so
    calls run concurrently (Flask serves requests on threads; a gallery page fires ~100 overlay
    requests at once).

    The one thing kept here is the image buffer: a gallery page reads its images' maps and
    thumbnails in two batch queries (:meth:`prefetch_async`) and the ~100 overlay requests that
    follow take them from memory. The reader has no per-image cache, so this duplicates nothing.
    A map or thumbnail that no prefetch covered is read from the reader and kept in the same
    buffer: one image's thumbnail is under every overlay of it (each method, colormap and
    opacity is another PNG, rendered apart), and each read decodes whole row groups.
    """

    def __init__(self, reader: StoreReader) -> None:
        self.reader = reader
        self._cams: LRU[tuple[str, str, str], np.ndarray | None] = LRU(20_000)  # (run, image, method)
        self._thumbs: LRU[tuple[str, str], bytes | None] = LRU(20_000)  # (run, image)
        self._pending: dict[tuple[str, str], threading.Event] = {}
        self._pending_lock = threading.Lock()
        #: the trust tables (sanity, baselines, ROAD, localisation: store/read/trust_tables.py)
        self.trust: TrustQueries = reader.trust

    # ---- runs -------------------------------------------------------------------------------
    def runs(self) -> pd.DataFrame:
        """All readable runs, newest first (a run published meanwhile is listed at once)."""
        return self.reader.runs()

    def run_ids(self) -> list[str]:
        runs = self.runs()
        return [str(r) for r in runs["run_id"]] if len(runs) else []

    def run(self, run_id: str) -> RunInfo | None:
        """RunInfo for ``run_id``; None when there is no such run."""
        return self.reader.run(run_id)

    def resolve_run(self, requested: str | None) -> ResolvedRun:
        """The run to show: the requested one if it exists, else the latest (with a warning)."""
        ids = self.run_ids()
        if requested is not None and requested in ids:
            info = self.run(requested)
            if info is not None:
                return ResolvedRun(info)
        latest = self.run(ids[0]) if ids else None
        if requested is None or latest is None:
            return ResolvedRun(latest)
        return ResolvedRun(latest, f"There is no run {requested!r} in this store; showing the latest run.")

    def comparable_runs(self, info: RunInfo) -> pd.DataFrame:
        """Runs over the same dataset fingerprint as ``info`` (newest first)."""
        runs = self.runs()
        if not len(runs):
            return runs
        return runs[runs["dataset_fingerprint"] == info.dataset_fingerprint]

    # ---- per-run aggregates (memoised by the reader) ----------------------------------------
    def headline(self, run_id: str) -> dict[str, float | int | None]:
        return self.reader.headline(run_id)

    def class_metrics(self, run_id: str) -> pd.DataFrame:
        return self.reader.class_metrics(run_id)

    def confusion(self, run_id: str) -> pd.DataFrame:
        return self.reader.confusion(run_id)

    def confidence_histogram(self, run_id: str, bins: int = 20) -> pd.DataFrame:
        return self.reader.confidence_histogram(run_id, bins)

    def faithfulness_summary(self, run_id: str) -> pd.DataFrame:
        return self.reader.faithfulness_summary(run_id)

    def failures(self, run_id: str) -> pd.DataFrame:
        return self.reader.failures(run_id)

    def embedding_points(self, run_id: str, include_train: bool = False) -> pd.DataFrame:
        return self.reader.embedding_points(run_id, include_train)

    def train_embeddings(self, run_id: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        return self.reader.train_embeddings(run_id)

    def diff(self, run_a: str, run_b: str) -> RunDiff:
        return self.reader.diff(run_a, run_b)

    @property
    def quality(self) -> QualityQueries:
        """The data-quality queries (label issues, leaks, outliers, error clusters; memoised)."""
        return self.reader.quality

    # ---- pages and images -------------------------------------------------------------------
    def gallery(self, run_id: str, q: GalleryQuery) -> tuple[pd.DataFrame, int]:
        return self.reader.gallery(run_id, q)

    def image(self, run_id: str, image_id: str) -> ImageDetail | None:
        return self.reader.image(run_id, image_id)

    def map_methods(self, run_id: str) -> list[str]:
        """Every method with maps in the run's cams table (memoised by the reader)."""
        return self.reader.map_methods(run_id)

    def map_keys(self, run_id: str, image_ids: Sequence[str]) -> set[tuple[str, str, str]]:
        """(image_id, method, target_kind) of the maps stored for these images."""
        return self.reader.map_keys(run_id, image_ids)

    def neighbors(self, run_id: str, image_id: str) -> pd.DataFrame:
        return self.reader.neighbors(run_id, image_id)

    def image_history(self, run_id: str, image_id: str) -> pd.DataFrame:
        return self.reader.image_history(run_id, image_id)

    def cam(self, run_id: str, image_id: str, method: str, target_kind: str = "pred") -> np.ndarray | None:
        """One raw map: from the prefetch buffer when a page loaded it in batch, else the reader."""
        if target_kind == "pred":
            self._await_prefetch(run_id, image_id)
            found, cam = self._cams.lookup((run_id, image_id, method))
            if found:
                return cam
            cam = self.reader.cam(run_id, image_id, method, target_kind)
            self._cams.put((run_id, image_id, method), cam)  # a miss too: the route answers 404 from memory
            return cam
        return self.reader.cam(run_id, image_id, method, target_kind)

    def thumbnail(self, run_id: str, image_id: str) -> bytes | None:
        """Thumbnail bytes: from the prefetch buffer when a page loaded them, else the reader."""
        self._await_prefetch(run_id, image_id)
        found, thumb = self._thumbs.lookup((run_id, image_id))
        if found:
            return thumb
        thumb = self.reader.thumbnail(run_id, image_id)
        self._thumbs.put((run_id, image_id), thumb)
        return thumb

    # ---- the gallery's batch prefetch -------------------------------------------------------
    def _await_prefetch(self, run_id: str, image_id: str) -> None:
        """If a page's batch prefetch covering this image is in flight, wait for it (bounded)."""
        ev = self._pending.get((run_id, image_id))
        if ev is not None:
            ev.wait(timeout=PREFETCH_WAIT_S)

    def prefetch(self, run_id: str, image_ids: Sequence[str], methods: Iterable[str] = METHODS) -> None:
        """Load the predicted-class maps and the thumbnails of a page's images in two reads.

        The reader's batch look-ups decode only the row groups that can hold these ids, so a
        24-image gallery page costs one read of maps and one of thumbnails, not 120 point
        queries. Best effort: if a batch read fails (e.g. the run was deleted meanwhile), the
        routes read one by one.
        """
        ids = [i for i in dict.fromkeys(image_ids) if IMAGE_ID_RE.match(i)]
        ms = tuple(m for m in methods if METHOD_RE.match(m))
        if not ids:
            return
        try:
            maps = self.reader.cams_batch(run_id, ids, ms, "pred")
            thumbs = self.reader.thumbnails(run_id, ids)
        except Exception:  # a missed optimisation must not break the page
            log.debug("prefetch failed; overlays will be read one by one", exc_info=True)
            return
        for image_id in ids:
            for method in ms:
                # Misses are kept too (e.g. CAM is not applicable to this head): the route then
                # answers 404 from memory instead of querying again.
                self._cams.put((run_id, image_id, method), maps.get((image_id, method)))
            self._thumbs.put((run_id, image_id), thumbs.get(image_id))

    def prefetch_async(self, run_id: str, image_ids: Sequence[str], methods: Iterable[str] = METHODS) -> None:
        """:meth:`prefetch` in a background thread, so the page returns without waiting for it.

        The browser asks for the page's overlays a moment later; routes for these images wait
        for the batch (see :meth:`_await_prefetch`) instead of issuing ~100 single queries.
        """
        methods = tuple(methods)
        ids = [
            i
            for i in dict.fromkeys(image_ids)
            if IMAGE_ID_RE.match(i) and not self._buffered(run_id, i, methods)  # loaded: skip
        ]
        if not ids:
            return
        ev = threading.Event()
        with self._pending_lock:
            for i in ids:
                self._pending.setdefault((run_id, i), ev)

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

    def _buffered(self, run_id: str, image_id: str, methods: Sequence[str]) -> bool:
        """True when the image's thumbnail and its maps of ``methods`` are all in the buffer."""
        return self._thumbs.lookup((run_id, image_id))[0] and all(
            self._cams.lookup((run_id, image_id, m))[0] for m in methods
        )

    def wait_prefetch(self, timeout: float = 10.0) -> None:
        """Wait until no prefetch is in flight (clean shutdown, benchmarks)."""
        end = time.monotonic() + timeout
        while self._pending and time.monotonic() < end:
            time.sleep(0.01)


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
        self._mem: LRU[str, tuple[str, ...] | None] = LRU(256)

    @staticmethod
    def key_for(ids: Sequence[str]) -> str:
        return hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:12]

    def put(self, ids: Sequence[str]) -> str:
        """Store ``ids`` (validated, de-duplicated, sorted) and return their key."""
        clean = sorted({i for i in ids if IMAGE_ID_RE.match(i)})
        key = self.key_for(clean)
        self._mem.put(key, tuple(clean))
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

        return self._mem.get(key, load)


# ---- derived numbers ------------------------------------------------------------------------



def most_faithful(summary: pd.DataFrame) -> tuple[str | None, pd.DataFrame]:
    """The most faithful method by *best mean rank* across the four faithfulness metrics.

    Each metric ranks the methods (1 = best: lowest Average Drop, highest Increase in
    Confidence, lowest Deletion AUC, highest Insertion AUC; ties share the average rank); the
    method with the lowest mean rank wins, ties broken by (insertion - deletion) AUC. Ranks,
    not raw values, because the four metrics live on different scales. Returns the winner (None
    when there is nothing to rank) and the table with a ``mean_rank`` column. Only the methods
    scored on the most images (``n``) are ranked; the others (a sample) get no rank.
    """
    if len(summary) == 0:
        return None, summary
    df = summary.copy()
    # Only the methods scored on every image are ranked: means over a sample (the pixel
    # attributions, ``--attribution-images``) are not comparable with means over all images.
    full = df["n"] == df["n"].max() if "n" in df else pd.Series(True, index=df.index)
    ranked = df[full]
    ranks = []
    for col, direction in FAITHFULNESS_DIRECTIONS.items():
        if col in ranked and ranked[col].notna().any():
            ranks.append(ranked[col].rank(ascending=direction < 0, method="average"))
    if not ranks:
        return None, df
    df["mean_rank"] = pd.concat(ranks, axis=1).mean(axis=1)  # NaN for the rows not ranked

    def filled(col: str) -> pd.Series:
        return df[col].fillna(0) if col in df else pd.Series(0.0, index=df.index)

    tie = filled("insertion_auc") - filled("deletion_auc")
    order = df[full].assign(_tie=tie[full]).sort_values(["mean_rank", "_tie"], ascending=[True, False])
    return str(order["method"].iloc[0]), df
