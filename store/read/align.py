"""Lining up the rows of image_id-sorted Parquet files without a join.

Every run file is written sorted by image_id, so two files over the same images usually agree row
for row; these helpers check that cheaply (row-group statistics, one vectorized comparison) and
fall back to matching by id when they do not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def sorted_unique(ids: pa.Array) -> bool:
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


def take_aligned(col: pa.Array, at: npt.NDArray[np.int64], type_: pa.DataType) -> pa.Array:
    """``col[at]`` with nulls where ``at`` is -1, cast to ``type_``."""
    if len(col) == 0:
        return pa.nulls(len(at), type_)
    idx = pa.array(at, mask=at < 0)
    return col.cast(type_).take(idx)


def bounds_match(path: Path, ids: pa.Array, start: int, per_id: int) -> bool:
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
