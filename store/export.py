"""Exports of a run's tables as files: CSV, Parquet or JSON lines, optionally restricted to the
images the gallery's filters select (true / predicted class, outcome, confidence range, quality
flag).

The selection is the gallery's own (:meth:`StoreReader.gallery`, page after page), so an export
and the gallery cannot disagree about which images a filter means; the pseudo-table ``gallery``
is those rows themselves, with each image's source, labels, prediction, confidence and flags, in
the gallery's order - what the gallery's "Download" button saves.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from xaidash.constants import OUTCOMES, QUALITY_FLAGS
from xaidash.errors import UserError
from xaidash.store.read.records import MAX_PAGE_SIZE, GalleryQuery
from xaidash.store.schema import TABLES

if TYPE_CHECKING:
    from xaidash.store.read.reader import StoreReader
    from xaidash.store.read.records import RunInfo

FORMATS: tuple[str, ...] = ("csv", "parquet", "jsonl")
#: what ``--filter`` accepts: the gallery's filters
FILTER_KEYS: tuple[str, ...] = ("true", "pred", "outcome", "flag", "cmin", "cmax")
#: the pseudo-table of the gallery's rows
GALLERY = "gallery"
GALLERY_EXPORT_COLUMNS = [
    "image_id",
    "source",
    "label",
    "label_name",
    "pred",
    "pred_name",
    "confidence",
    "correct",
    "loss",
    "flags",
]
#: tables with no image to filter on (a filter on them is an error, not a silent no-op)
_PER_IMAGE = {n for n, spec in TABLES.items() if "image_id" in spec.schema.names}
#: columns of raw bytes that a text format cannot carry
_BINARY = {"thumbnail"}


def table_names() -> list[str]:
    """The tables an export can write: the gallery's rows, then every stored table."""
    return [GALLERY, *TABLES]


def _class_index(value: object, names: list[str], key: str) -> int:
    text = str(value).strip()
    if text in names:
        return names.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
        return int(text)
    shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
    raise UserError(
        f"--filter {key}={text}: not a class of this run (names: {shown}; or 0..{len(names) - 1})"
    )


def _fraction(value: object, key: str) -> float:
    try:
        f = float(str(value))
    except ValueError:
        f = math.nan
    if not 0.0 <= f <= 1.0:
        raise UserError(f"--filter {key}={value}: expected a number between 0 and 1")
    return f


def parse_filters(items: list[str] | None) -> dict[str, str]:
    """``["true=cat", "outcome=wrong"]`` -> ``{"true": "cat", "outcome": "wrong"}``; UserError on a
    malformed item or an unknown key."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not value.strip():
            raise UserError(f"--filter {item!r}: expected KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}")
        if key not in FILTER_KEYS:
            raise UserError(f"--filter {item!r}: unknown filter {key!r}; filters: {', '.join(FILTER_KEYS)}")
        out[key] = value.strip()
    return out


def gallery_query(info: RunInfo, filters: Mapping[str, Any]) -> GalleryQuery:
    """The gallery query of ``filters`` (class names or indices, an outcome, a flag, a confidence
    range), checked against the run; UserError naming what is valid."""
    unknown = sorted(set(filters) - set(FILTER_KEYS))
    if unknown:
        raise UserError(f"unknown filter(s) {', '.join(unknown)}; filters: {', '.join(FILTER_KEYS)}")
    names = list(info.class_names)
    q = GalleryQuery()
    if filters.get("true") is not None:
        q = replace(q, true_class=_class_index(filters["true"], names, "true"))
    if filters.get("pred") is not None:
        q = replace(q, pred_class=_class_index(filters["pred"], names, "pred"))
    if filters.get("outcome") is not None:
        outcome = str(filters["outcome"])
        if outcome not in OUTCOMES:
            raise UserError(f"--filter outcome={outcome}: valid outcomes: {', '.join(OUTCOMES)}")
        q = replace(q, outcome=outcome)
    if filters.get("flag") is not None:
        flag = str(filters["flag"])
        if flag not in QUALITY_FLAGS:
            raise UserError(f"--filter flag={flag}: valid flags: {', '.join(QUALITY_FLAGS)}")
        q = replace(q, flag=flag)
    if filters.get("cmin") is not None:
        q = replace(q, conf_min=_fraction(filters["cmin"], "cmin"))
    if filters.get("cmax") is not None:
        q = replace(q, conf_max=_fraction(filters["cmax"], "cmax"))
    return q


def gallery_rows(reader: StoreReader, run_id: str, query: GalleryQuery) -> pd.DataFrame:
    """Every row ``query`` matches (all pages, the query's order) with the image's ``source``."""
    q = replace(query, page=0, page_size=MAX_PAGE_SIZE)
    pages: list[pd.DataFrame] = []
    total = None
    while total is None or q.page * MAX_PAGE_SIZE < total:
        page, total = reader.gallery(run_id, q)
        if len(page):
            pages.append(page)
        q = replace(q, page=q.page + 1)
    rows = (
        pd.concat(pages, ignore_index=True)
        if pages
        else pd.DataFrame(columns=[c for c in GALLERY_EXPORT_COLUMNS if c != "source"])
    )
    info = reader.run(run_id)
    sources = reader.sql(
        "SELECT DISTINCT image_id, source FROM images WHERE dataset_fingerprint = ? AND split = 'val'",
        [info.dataset_fingerprint if info else ""],
    )
    source_of = dict(zip(sources["image_id"], sources["source"], strict=True))
    rows["source"] = [source_of.get(i) for i in rows["image_id"]]
    return rows[GALLERY_EXPORT_COLUMNS].reset_index(drop=True)


def resolve_run(reader: StoreReader, run: str | None) -> RunInfo:
    """``run`` (an id, ``latest`` or None = the latest) as a RunInfo; UserError naming the runs there are."""
    run_id = reader.latest_run_id() if run in (None, "", "latest") else str(run)
    info = reader.run(run_id) if run_id else None
    if info is None:
        ids = [str(r) for r in reader.runs()["run_id"]][:5] if run_id else []
        raise UserError(
            f"no run {run!r} in the store {reader.path}"
            + (f"; runs: {', '.join(ids)} (or 'latest')" if ids else " (the store has no runs)")
        )
    return info


def table_rows(reader: StoreReader, run: str | None, table: str, filters: Mapping[str, Any]) -> pd.DataFrame:
    """The rows of ``table`` of ``run`` the filters select (all of them without filters)."""
    if table not in table_names():
        raise UserError(f"unknown table {table!r}; tables: {', '.join(table_names())}")
    info = resolve_run(reader, run)
    q = gallery_query(info, filters)
    if table == GALLERY:
        return gallery_rows(reader, info.run_id, q)
    if filters and table not in _PER_IMAGE:
        raise UserError(
            f"table {table!r} has no images to filter; filters apply to: "
            f"{', '.join(sorted([GALLERY, *_PER_IMAGE]))}"
        )
    params: list[object]
    if table == "images":
        sql, params = "SELECT * FROM images WHERE dataset_fingerprint = ?", [info.dataset_fingerprint]
    else:
        sql, params = f"SELECT * FROM {table} WHERE run_id = ?", [info.run_id]  # table: from TABLES
    if filters:
        ids = gallery_rows(reader, info.run_id, q)["image_id"].tolist()
        sql += " AND list_contains(?, image_id)"
        params.append(ids)
    order = [c for c in TABLES[table].sort_by if c in TABLES[table].schema.names]
    if order:
        sql += " ORDER BY " + ", ".join(f'"{c}"' for c in order)
    return reader.sql(sql, params)


def check_out(out: Path, flag: str = "--out") -> None:
    """UserError unless ``out`` can be written: a file name in an existing, writable folder."""
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise UserError(f"{flag} {out} is a directory; give a file name")
    if not parent.is_dir():
        raise UserError(f"{flag} {out}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {out}: the folder {parent} is not writable")


def write_atomic(out: Path, write: Callable[[str], object]) -> None:
    """``write(tmp_path)`` then rename onto ``out``, so a reader never sees half a file; the file
    gets the permissions open() would give it (mkstemp makes it 0600)."""
    check_out(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent if str(out.parent) else ".")
    os.close(fd)
    try:
        os.chmod(tmp, _umasked(0o666))
        write(tmp)
        os.replace(tmp, out)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_rows(df: pd.DataFrame, out: Path, fmt: str) -> None:
    """``df`` to ``out`` as ``fmt``, atomically; UserError when the folder is missing or not writable."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    check_out(out)
    if fmt != "parquet":
        df = df.drop(columns=[c for c in df.columns if c in _BINARY])
    if fmt == "csv":  # a list cell (probabilities, a map) as JSON text: numpy's repr elides long ones
        df = df.copy()
        for c in df.columns:
            if df[c].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
                df[c] = df[c].map(lambda v: json.dumps(np.asarray(v).tolist()) if v is not None else None)
    if fmt == "csv":
        write_atomic(out, lambda tmp: df.to_csv(tmp, index=False))
    elif fmt == "jsonl":
        write_atomic(out, lambda tmp: df.to_json(tmp, orient="records", lines=True, date_format="iso"))
    else:
        write_atomic(out, lambda tmp: df.to_parquet(tmp, index=False))


def export_table(
    reader: StoreReader, run: str | None, table: str, out: Path, fmt: str | None = None, **filters: Any
) -> int:
    """Write the selected rows of ``table`` to ``out`` (format from ``fmt`` or the suffix); the
    number of rows written."""
    fmt = fmt or out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise UserError(f"cannot tell the format of {out}: give --format {'|'.join(FORMATS)}")
    df = table_rows(reader, run, table, {k: v for k, v in filters.items() if v is not None})
    write_rows(df, out, fmt)
    return len(df)


def _umasked(mode: int) -> int:
    """``mode`` as the process's umask would let open() create it."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask
