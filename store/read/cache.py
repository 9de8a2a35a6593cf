"""The reader's per-run cache: in-memory DuckDB tables of a run's light columns, pinned while a
query uses them and evicted least recently used, the run's gallery index, and memoized results.

Runs are immutable, so everything here stays valid until the run is deleted (the reader's rescan
then evicts it). One :class:`RunCache` per reader, sharing the reader's lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar, cast

import pandas as pd
import pyarrow as pa

from xaidash.constants import METHOD_RE
from xaidash.store.read.catalog import RunEntry
from xaidash.store.read.index import GalleryIndex
from xaidash.store.read.light import light_table, light_table_sql
from xaidash.store.read.records import RunDiff

#: Heads up to this many classes keep probabilities in the in-memory cache (ImageNet: read on demand).
MAX_CACHED_CLASSES = 100
#: Memoized immutable results (embedding points, train embeddings) kept per reader.
MEMO_SIZE = 256

T = TypeVar("T")


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
                self._execute(*light_table_sql(e, f'cache."l_{h}"', methods, small_head, self._image_glob(e)))
            self._execute(f'DROP TABLE IF EXISTS cache."f_{h}"', None)
            self._execute(
                f'CREATE TABLE cache."f_{h}" AS SELECT image_id, method, "drop", increase, deletion_auc, '
                "insertion_auc FROM read_parquet(?)",  # the file is sorted by (image_id, method)
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
