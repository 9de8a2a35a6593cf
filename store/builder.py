"""Building the tables a compute chunk hands to the store, from the store's own schemas.

Compute does not spell Arrow types or column lists: it fills a :class:`TableBuilder` for a
staged table by column name, and the builder checks each name against :mod:`xaidash.store.schema`
as soon as it is used (a typo fails at the first batch, not at publish) and casts to the schema
when the table is built. Matrix columns (``[N, D]`` numpy) become Arrow list columns without a
Python loop over rows. :func:`conform` is the check the store itself applies to every table
it is handed (chunks, global-phase tables, images).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from xaidash.store.schema import TABLES


def list_array(values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """``[N, D]`` numpy -> Arrow ``list<value_type>`` array (zero-copy offsets, no row loop)."""
    values = np.ascontiguousarray(values)
    n, d = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    flat = pa.array(values.reshape(-1)).cast(value_type)
    return pa.ListArray.from_arrays(offsets, flat, type=pa.list_(value_type))


def conform(
    table: pa.Table, schema: pa.Schema, name: str, fill: Mapping[str, object] | None = None
) -> pa.Table:
    """Cast ``table`` to ``schema``: reorder, cast types, add missing nullable columns as null.

    ``fill`` gives constant values for columns the caller need not supply (e.g. run_id).
    Unknown columns and missing required columns are programming errors (ValueError), so a
    mismatch between compute and store is caught at the first chunk, not at read time.
    """
    fill = dict(fill or {})
    unknown = [c for c in table.column_names if c not in schema.names]
    if unknown:
        raise ValueError(f"table {name!r}: unknown columns {unknown}; expected {schema.names}")
    n = table.num_rows
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(
                    f"table {name!r}: column {field.name!r} cannot be {field.type}: {exc}"
                ) from exc
            if not field.nullable and col.null_count:
                raise ValueError(f"table {name!r}: column {field.name!r} must not contain nulls")
        elif field.name in fill:
            col = pa.array([fill[field.name]] * n, type=field.type)
        elif field.nullable:
            col = pa.nulls(n, type=field.type)
        else:
            raise ValueError(f"table {name!r}: required column {field.name!r} is missing")
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=schema)


def staged_schema(name: str) -> pa.Schema:
    """Schema of a table as a chunk stages it: without run_id (filled at publish), and for
    ``images`` without the dataset fingerprint (the run's, added at publish)."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
    schema = TABLES[name].schema
    drop = "dataset_fingerprint" if name == "images" else "run_id"
    return schema.remove(schema.get_field_index(drop))


class TableBuilder:
    """Column buffers of one staged table, appended batch by batch.

    ``extend(col, values)`` appends scalars, ``extend_matrix(col, array)`` appends the rows of an
    ``[N, D]`` array to a list column; ``table()`` returns the table cast to the schema (columns
    never filled are null, which the schema must allow).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.schema = staged_schema(name)
        self._scalars: dict[str, list[Any]] = {}
        self._matrices: dict[str, list[np.ndarray]] = {}

    def _field(self, column: str) -> pa.Field:
        if column not in self.schema.names:
            raise ValueError(f"table {self.name!r} has no column {column!r}; columns: {self.schema.names}")
        return self.schema.field(column)

    def extend(self, column: str, values: Iterable[Any]) -> None:
        self._field(column)
        self._scalars.setdefault(column, []).extend(values)

    def extend_matrix(self, column: str, values: np.ndarray) -> None:
        if not pa.types.is_list(self._field(column).type):
            raise ValueError(f"{self.name}.{column} is not a list column")
        self._matrices.setdefault(column, []).append(np.asarray(values).reshape(len(values), -1))

    def add(self, **columns: Iterable[Any]) -> None:
        """``extend`` several scalar columns at once."""
        for column, values in columns.items():
            self.extend(column, values)

    @property
    def num_rows(self) -> int:
        lengths = [len(v) for v in self._scalars.values()]
        lengths += [sum(len(m) for m in ms) for ms in self._matrices.values()]
        return max(lengths, default=0)

    def table(self) -> pa.Table:
        n = self.num_rows
        arrays: list[pa.Array] = []
        for f in self.schema:
            if f.name in self._matrices:
                value_type = f.type.value_type
                blocks = self._matrices[f.name]
                if len({b.shape[1] for b in blocks}) <= 1:
                    arrays.append(list_array(np.concatenate(blocks), value_type))
                else:  # rows of different lengths (the cams of a run: CAMs and attribution maps)
                    arrays.append(pa.concat_arrays([list_array(b, value_type) for b in blocks]))
            elif f.name in self._scalars:
                arrays.append(pa.array(self._scalars[f.name], type=f.type))
            else:
                arrays.append(pa.nulls(n, type=f.type))
            if len(arrays[-1]) != n:
                raise ValueError(f"{self.name}.{f.name}: {len(arrays[-1])} values for {n} rows")
        return pa.Table.from_arrays(arrays, schema=self.schema)


def table(name: str, columns: Mapping[str, Any]) -> pa.Table:
    """A whole staged table at once: scalar sequences, or ``[N, D]`` arrays for list columns."""
    b = TableBuilder(name)
    for column, values in columns.items():
        if isinstance(values, np.ndarray) and values.ndim == 2:
            b.extend_matrix(column, values)
        else:
            b.extend(column, values)
    return b.table()
