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
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Concatenate, ParamSpec, Protocol, TypeVar, cast

import pandas as pd

from xaidash.constants import METHOD_RE
from xaidash.store.catalog import RunEntry
from xaidash.store.index import GalleryIndex
from xaidash.store.models import RunDiff

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
    ) -> None:
        self._execute = execute
        self._image_glob = image_glob
        self._lock = lock
        self.runs = max(1, int(runs))
        self.cached: OrderedDict[str, str] = OrderedDict()  # run_id -> cache table suffix
        #: run_id -> queries using its cache tables right now; a pinned run is never evicted
        self.pins: dict[str, int] = {}
        self.doomed: set[str] = set()  # deleted runs whose tables are dropped once unpinned
        self.memo: OrderedDict[tuple[object, ...], object] = OrderedDict()
        self.galleries: dict[str, GalleryIndex] = {}

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
            faith_cols = ", ".join(
                f'max(insertion_auc - deletion_auc) FILTER (WHERE method = ?) AS "faith_{m}"' for m in methods
            )
            small_head = len(e.class_names) <= MAX_CACHED_CLASSES
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
            self._execute(f'DROP TABLE IF EXISTS cache."l_{h}"', None)
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
            self._execute(f'DROP TABLE IF EXISTS cache."f_{h}"', None)
            self._execute(
                f'CREATE TABLE cache."f_{h}" AS SELECT image_id, method, "drop", increase, deletion_auc, '
                "insertion_auc FROM read_parquet(?) ORDER BY image_id, method",
                [str(e.file("faithfulness"))],
            )
            self.cached[e.run_id] = h
            self.trim(keep=e.run_id)
            return h

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
