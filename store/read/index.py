"""In-memory indexes of a run's files: :class:`GalleryIndex` (filter/sort/page the gallery in
numpy) and :class:`RowGroupIndex` (which Parquet row groups can hold an image_id).

Both are built once per immutable file set and kept by the reader: the gallery index per run in
its run cache (:mod:`xaidash.store.read.cache`), row-group indexes in :class:`RowGroupIndexes`.
The run's ``quality`` rows (:data:`QUALITY_INDEX_COLUMNS`) are lined up with the gallery rows by
:func:`align_quality`, so the gallery filters and sorts by data-quality flags too.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xaidash.constants import QUALITY_FLAGS
from xaidash.store.read.align import aligned_rows
from xaidash.store.read.records import GalleryQuery
from xaidash.store.schema import GALLERY_COLUMNS

#: the quality columns the gallery index filters and sorts by
QUALITY_INDEX_COLUMNS = ["image_id", "label_quality", *QUALITY_FLAGS]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def _column(t: pa.Table, name: str, type_: pa.DataType, null: object) -> npt.NDArray[np.generic]:
    """A column cast to ``type_`` as numpy, nulls replaced by ``null``."""
    values: npt.NDArray[np.generic] = t.column(name).cast(type_).fill_null(null).to_numpy()
    return values


def align_quality(
    ids: pa.Array, quality: pa.Table
) -> tuple[npt.NDArray[np.float64], dict[str, npt.NDArray[np.bool_]]]:
    """The label-quality sort key (NaN when absent) and the flag masks, row by row of ``ids``."""
    n = len(ids)
    at = aligned_rows(ids, quality.column("image_id").combine_chunks(), n)
    present = at >= 0
    take = np.where(present, at, 0)

    def col(name: str, null: object, type_: pa.DataType) -> npt.NDArray[Any]:
        values: npt.NDArray[Any] = quality.column(name).cast(type_).fill_null(null).to_numpy()
        return values[take] if len(values) else np.zeros(n, values.dtype)

    key = np.where(present, col("label_quality", np.nan, pa.float64()), np.nan).astype(np.float64)
    flags = {f: present & col(f, False, pa.bool_()).astype(bool) for f in QUALITY_FLAGS}
    return key, flags


@dataclass
class GalleryIndex:
    """Numpy view of a run's light columns for filtering/sorting pages without SQL.

    A page deep in a 100k-image gallery costs a full sort in SQL (~40-60 ms on 2 busy cores);
    here the sort orders are computed once per (key, direction) and a page is a boolean mask
    plus a slice (~1-3 ms), so every page of every filter combination is equally fast.
    """

    table: pa.Table  # output columns, rows in image_id order (row i has ord i + 1)
    keys: dict[str, Floats]  # sort keys as float64 with NaN for null
    confidence: Floats
    label: Ints  # int64, -1 when null
    pred: Ints
    correct: npt.NDArray[np.int8]  # 1 correct, 0 wrong, -1 unknown
    #: data-quality flags (constants.QUALITY_FLAGS) per row; empty for runs without a quality table
    flags: dict[str, npt.NDArray[np.bool_]] = field(default_factory=dict)
    orders: dict[tuple[str, bool], Ints] = field(default_factory=dict)
    _ids: npt.NDArray[np.object_] | None = None  # image ids in row order (sorted), made on first use

    def rows_of(self, ids: Sequence[object]) -> Ints:
        """Rows of the ``ids`` that are in the index (binary search: rows are sorted by image_id;
        a dict of a million ids cost ~0.5 s to build)."""
        if self._ids is None:
            self._ids = self.table.column("image_id").to_numpy(zero_copy_only=False).astype(object)
        want = np.array([i for i in ids if isinstance(i, str)], dtype=object)
        if not len(want) or not len(self._ids):
            return np.zeros(0, np.int64)
        at = np.minimum(np.searchsorted(self._ids, want), len(self._ids) - 1)
        rows: Ints = at[self._ids[at] == want].astype(np.int64)
        return rows

    @classmethod
    def from_table(cls, t: pa.Table, methods: Sequence[str], quality: pa.Table | None = None) -> GalleryIndex:
        """The index of a run's cached rows: :data:`GALLERY_COLUMNS` plus ``faith_<method>``, and
        the run's ``quality`` rows (:data:`QUALITY_INDEX_COLUMNS`) when it has them."""

        def num(name: str) -> Floats:
            return _column(t, name, pa.float64(), np.nan).astype(np.float64, copy=False)

        keys = {"confidence": num("confidence"), "loss": num("loss"), "disagreement": num("cam_disagreement")}
        keys.update({f"faith_{m}": num(f"faith_{m}") for m in methods})
        keys["none"] = np.full(t.num_rows, np.nan)
        flags: dict[str, npt.NDArray[np.bool_]] = {}
        if quality is not None:
            keys["label_quality"], flags = align_quality(t.column("image_id").combine_chunks(), quality)
        else:
            keys["label_quality"] = keys["none"]
        return cls(
            table=t.select(list(GALLERY_COLUMNS)),
            keys=keys,
            confidence=keys["confidence"],
            label=_column(t, "label", pa.int64(), -1).astype(np.int64, copy=False),
            pred=_column(t, "pred", pa.int64(), -1).astype(np.int64, copy=False),
            correct=_column(t, "correct", pa.int8(), -1).astype(np.int8, copy=False),
            flags=flags,
        )

    def page(self, q: GalleryQuery, key: str) -> tuple[pd.DataFrame, int]:
        """Page ``q.page`` of the rows matching the filters of ``q`` (checked), sorted by ``key``
        (one of :attr:`keys`), as :data:`GALLERY_COLUMNS` plus ``sort_value`` and ``flags`` (the
        row's data-quality flags, :data:`xaidash.constants.QUALITY_FLAGS` order, comma-separated;
        "" when none or the run has no quality table); and the total count of matches."""
        mask = (self.confidence >= float(q.conf_min)) & (self.confidence <= float(q.conf_max))
        if q.true_class is not None:
            mask &= (self.label == int(q.true_class)) & (self.label >= 0)
        if q.pred_class is not None:
            mask &= (self.pred == int(q.pred_class)) & (self.pred >= 0)
        if q.outcome == "correct":
            mask &= self.correct == 1
        elif q.outcome == "wrong":
            mask &= self.correct == 0
        if q.flag is not None:
            flag = self.flags.get(q.flag)
            mask &= flag if flag is not None else False
        if q.image_ids is not None:
            rows = self.rows_of(q.image_ids)
            sel = np.zeros(len(mask), dtype=bool)
            sel[rows] = True
            mask &= sel
        order = self.order(key, bool(q.descending))
        hits = order[mask[order]]
        page, page_size = int(q.page), int(q.page_size)
        page_rows = hits[page * page_size : (page + 1) * page_size]
        cols = [*GALLERY_COLUMNS, "sort_value", "flags"]
        if len(page_rows) == 0:
            return pd.DataFrame(columns=cols), len(hits)
        df: pd.DataFrame = self.table.take(pa.array(page_rows)).to_pandas()
        df["sort_value"] = self.keys[key][page_rows]  # float64, NaN where the key is null
        df["flags"] = [",".join(f for f, m in self.flags.items() if m[r]) for r in page_rows]
        return df[cols], len(hits)

    def order(self, key: str, descending: bool) -> Ints:
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


class RowGroupIndex:
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


class RowGroupIndexes:
    """The row-group indexes of the file sets a reader has looked up (immutable run files,
    append-only image parts), at most ``limit`` + 1 of them."""

    def __init__(self, limit: int = 64) -> None:
        self._limit = limit
        self._indexes: dict[tuple[str, ...], RowGroupIndex] = {}
        self._lock = threading.Lock()

    def get(self, paths: Sequence[Path]) -> RowGroupIndex:
        key = tuple(str(p) for p in paths)
        with self._lock:
            idx = self._indexes.get(key)
            if idx is None:
                if len(self._indexes) > self._limit:
                    self._indexes.clear()
                # image parts of a fingerprint grow: drop indexes of an older listing of the dir
                # (only listings of parts: a run's cams and faithfulness files share a dir too)
                if key and Path(key[0]).name.startswith("part-"):
                    for old in [
                        k
                        for k in self._indexes
                        if k
                        and Path(k[0]).name.startswith("part-")
                        and Path(k[0]).parent == Path(key[0]).parent
                    ]:
                        del self._indexes[old]
                idx = self._indexes[key] = RowGroupIndex(paths)
            return idx


def stored_keys(index: RowGroupIndex, ids: Sequence[str]) -> set[tuple[str, str, str]]:
    """(image_id, method, target_kind) of the maps of ``ids`` in a cams file (maps not decoded)."""
    t = index.read(ids, ["image_id", "method", "target_kind"])
    if t.num_rows == 0:
        return set()
    return set(zip(*(t.column(c).to_pylist() for c in ("image_id", "method", "target_kind")), strict=True))


def list_to_matrix(col: pa.ChunkedArray) -> npt.NDArray[np.float32]:
    """A list<float> column of equal-length lists -> float32 [N, K] without a Python loop."""
    if len(col) == 0:
        return np.zeros((0, 0), np.float32)
    arr = col.combine_chunks()
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    values: npt.NDArray[np.float32] = flat.astype(np.float32, copy=False)
    return values.reshape(len(arr), -1)
