"""The embedding map's point index: image id -> row and (x, y) -> nearest point, in numpy.

Built once per (run, train points shown) from the reader's points table and kept in
:class:`xaidash.dashboard.data.DerivedCache`. A dict of a million ids cost ~1 s to build (the
first hover or click paid it); here the rows of each split are already sorted by image_id, so an
id is found by binary search, and the nearest point to a hovered density cell by a uniform grid.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

#: cells per side of the nearest-point grid
GRID = 256


@dataclass
class PointIndex:
    """Rows of a points table (``image_id``, ``x``, ``y``, ...) by id and by position."""

    ids: npt.NDArray[Any]  # fixed-width bytes (16-hex ids, zero-copy from Arrow) or str objects
    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]
    blocks: list[tuple[int, int]]  # [start, stop) row ranges sorted by id
    lookup: dict[str, int] | None  # only when a block is not sorted
    x0: float
    y0: float
    cw: float  # cell width and height
    ch: float
    order: npt.NDArray[np.int64]  # rows by grid cell
    starts: npt.NDArray[np.int64]  # first position in ``order`` of each cell (GRID * GRID + 1)
    points: pd.DataFrame  # the table itself, for a hovered point's label and prediction

    @classmethod
    def build(cls, points: pd.DataFrame) -> PointIndex:
        ids = _id_array(points["image_id"])
        x = points["x"].to_numpy(dtype=np.float64, na_value=np.nan)
        y = points["y"].to_numpy(dtype=np.float64, na_value=np.nan)
        # val rows then train rows, each sorted by id: a block ends where the ids go down
        cuts = [0, *(np.flatnonzero(ids[1:] <= ids[:-1]) + 1).tolist(), len(ids)]
        blocks = [(a, b) for a, b in itertools.pairwise(cuts) if b > a]
        lookup = None
        if len(blocks) > 2:  # not two sorted blocks: a dict (small or unusual tables only)
            lookup = {_text(k): i for i, k in enumerate(ids)}
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.any():
            x0, x1, y0, y1 = x[ok].min(), x[ok].max(), y[ok].min(), y[ok].max()
        else:
            x0 = x1 = y0 = y1 = 0.0
        cw, ch = max(x1 - x0, 1e-9) / GRID, max(y1 - y0, 1e-9) / GRID
        cell = np.full(len(ids), GRID * GRID, np.int64)  # points without coordinates: past the end
        cx = np.clip(((x[ok] - x0) / cw).astype(np.int64), 0, GRID - 1)
        cy = np.clip(((y[ok] - y0) / ch).astype(np.int64), 0, GRID - 1)
        cell[ok] = cy * GRID + cx
        order = np.argsort(cell, kind="stable").astype(np.int64)
        starts = np.searchsorted(cell[order], np.arange(GRID * GRID + 1)).astype(np.int64)
        return cls(
            ids, x, y, blocks, lookup, float(x0), float(y0), float(cw), float(ch), order, starts, points
        )

    def record(self, row: int) -> dict[str, object]:
        """image_id, x, y and the other columns of one row (None for missing values)."""
        out: dict[str, object] = {}
        for c, v in self.points.iloc[row].to_dict().items():
            out[str(c)] = None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v
        return out

    def image_id(self, row: int) -> str:
        return _text(self.ids[row])

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, image_id: str) -> int | None:
        """The row of ``image_id``, None when it is not a point of the map."""
        if self.lookup is not None:
            return self.lookup.get(image_id)
        key: str | bytes = image_id
        if self.ids.dtype.kind == "S":
            try:
                key = image_id.encode("ascii")
            except UnicodeEncodeError:
                return None
            if len(key) != self.ids.dtype.itemsize:
                return None
        for a, b in self.blocks:
            i = a + int(np.searchsorted(self.ids[a:b], key))
            if i < b and self.ids[i] == key:
                return i
        return None

    def position(self, image_id: str) -> tuple[float, float] | None:
        r = self.row(image_id)
        if r is None or not (np.isfinite(self.x[r]) and np.isfinite(self.y[r])):
            return None
        return float(self.x[r]), float(self.y[r])

    def nearest(self, x: float, y: float) -> int | None:
        """The row of the point nearest to (x, y), None for an empty map.

        Searches rings of grid cells around (x, y); once a ring holds points, one more ring is
        searched (a nearer point can sit just across a cell border), which is exact for points
        within a cell and close to it beyond.
        """
        if not (np.isfinite(x) and np.isfinite(y)) or self.starts[-1] == 0:
            return None
        cx = int(np.clip((x - self.x0) // self.cw, 0, GRID - 1))
        cy = int(np.clip((y - self.y0) // self.ch, 0, GRID - 1))
        found_at = None
        best: int | None = None
        best_d = np.inf
        for r in range(GRID):
            lo_x, hi_x, lo_y, hi_y = (
                max(cx - r, 0),
                min(cx + r, GRID - 1),
                max(cy - r, 0),
                min(cy + r, GRID - 1),
            )
            rows = []
            for gy in range(lo_y, hi_y + 1):
                edge = gy in (cy - r, cy + r)
                xs = range(lo_x, hi_x + 1) if edge else [g for g in (cx - r, cx + r) if 0 <= g < GRID]
                for gx in xs:
                    c = gy * GRID + gx
                    a, b = self.starts[c], self.starts[c + 1]
                    if b > a:
                        rows.append(self.order[a:b])
            if rows:
                cand = np.concatenate(rows)
                d = (self.x[cand] - x) ** 2 + (self.y[cand] - y) ** 2
                k = int(np.argmin(d))
                if d[k] < best_d:
                    best, best_d = int(cand[k]), float(d[k])
                if found_at is None:
                    found_at = r
            if found_at is not None and r >= found_at + 1:
                break
            if lo_x == 0 and lo_y == 0 and hi_x == GRID - 1 and hi_y == GRID - 1 and found_at is not None:
                break
        return best


def _id_array(col: pd.Series) -> npt.NDArray[Any]:
    """The ids as fixed-width bytes straight from the Arrow buffer when every id has the same
    length (16 hex characters), else as str objects (converting a million Arrow strings to
    Python objects costs ~1 s)."""
    try:
        arr = pa.array(col)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if pa.types.is_large_string(arr.type):
            arr = arr.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return col.to_numpy(dtype=object)
    n = len(arr)
    if n and pa.types.is_string(arr.type) and arr.null_count == 0:
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
        width = int(offsets[1] - offsets[0])
        if width > 0 and np.array_equal(np.diff(offsets), np.full(n, width, np.int32)):
            data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
            return data.view(f"S{width}")
    return col.to_numpy(dtype=object)


def _text(v: object) -> str:
    return v.decode("ascii") if isinstance(v, bytes) else str(v)
