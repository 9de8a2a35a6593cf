"""Which runs a store holds, for the reader: :class:`Catalog` (run discovery from the manifests)
and :func:`build_views` (the cross-run views :meth:`StoreReader.sql` queries).

The run list comes from the manifests (JSON, cached per run directory and re-read only when its
mtime changes). New or deleted runs are noticed by the mtime of ``runs/`` (one ``stat`` per
check). A manifest of another schema version, or one that is not a valid run, makes that run a
*skipped* run with a message; the other runs stay readable.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from xaidash.constants import FINGERPRINT_RE, RUN_ID_RE
from xaidash.store.files import IMAGE_PARTS, IMAGES_DIR, MANIFEST, RUNS_DIR, image_parts, read_manifest
from xaidash.store.schema import RUN_TABLES, RUNS, SCHEMA_VERSION, TABLES

log = logging.getLogger(__name__)


@dataclass
class RunEntry:
    """One run directory as the reader knows it."""

    run_id: str
    dir: Path
    mtime_ns: int  # of its manifest: a changed manifest is read again
    manifest: dict[str, Any] | None
    error: str | None  # why the run cannot be read (schema version), None when fine
    row: dict[str, Any] = field(default_factory=dict)  # its runs row (manifest JSON values)

    def file(self, table: str) -> Path:
        """The run's Parquet file of ``table``."""
        return self.dir / f"{table}.parquet"

    @property
    def methods(self) -> list[str]:
        return list(self.row.get("methods") or [])

    @property
    def class_names(self) -> list[str]:
        return list(self.row.get("class_names") or [])


def manifest_row(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The runs row of a manifest, checked against the runs schema.

    Raises KeyError/ValueError/TypeError/ArrowException for a manifest that is valid JSON but not
    a valid run (no ``run.created``, a bad timestamp, a value of the wrong type), so one bad
    manifest becomes a skipped run instead of breaking the whole run list.
    """
    run = manifest.get("run")
    if not isinstance(run, dict):
        raise TypeError("'run' is not an object")
    row = {k: v for k, v in run.items() if k in RUNS.names}
    created = pd.Timestamp(row["created"])  # KeyError when absent, ValueError when unparsable
    if pd.isna(created):
        raise ValueError("'run.created' is empty")
    if created.tzinfo is None:
        created = created.tz_localize("UTC")
    row["created"] = created.to_pydatetime()
    missing = [f.name for f in RUNS if not f.nullable and row.get(f.name) is None]
    if missing:
        raise KeyError(f"required run fields missing: {', '.join(missing)}")
    pa.Table.from_pylist([row], schema=RUNS)  # every value has the documented type
    return row


def schema_message(run_id: str, version: object, manifest: Mapping[str, Any]) -> str:
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


def load_entry(name: str, d: Path, mtime_ns: int) -> RunEntry:
    """The entry of run directory ``d`` (named ``name``), readable or with its error."""
    manifest = read_manifest(d)
    if manifest is None:
        return RunEntry(name, d, mtime_ns, None, f"run {name} has an unreadable manifest; delete it")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        msg = schema_message(name, version, manifest)
        log.warning("%s", msg)
        return RunEntry(name, d, mtime_ns, manifest, msg)
    if not RUN_ID_RE.match(name) or manifest.get("run_id") != name:
        return RunEntry(name, d, mtime_ns, manifest, f"directory {name} does not match its manifest")
    try:
        row = manifest_row(manifest)
    except (KeyError, ValueError, TypeError, OverflowError, pa.ArrowException) as exc:
        msg = f"run {name} has a malformed manifest ({type(exc).__name__}: {exc}); delete it"
        log.warning("%s", msg)
        return RunEntry(name, d, mtime_ns, manifest, msg)
    return RunEntry(name, d, mtime_ns, manifest, None, row)


class Catalog:
    """The runs of a store: entries by run id, and the readable ones as the runs table.

    Not thread-safe by itself: the reader calls :meth:`scan` under its lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs_dir = path / RUNS_DIR
        self.entries: dict[str, RunEntry] = {}
        self.runs_df = pd.DataFrame()  # readable runs, newest first
        self.runs_table: pa.Table = RUNS.empty_table()
        self.readable: list[RunEntry] = []
        self._mtime: int | None = None

    def _runs_mtime(self) -> int:
        try:
            return self.runs_dir.stat().st_mtime_ns
        except OSError:
            return -1

    def changed(self) -> bool:
        """Whether ``runs/`` changed since the last scan (one stat)."""
        return self._runs_mtime() != self._mtime

    def forget(self) -> None:
        """Make the next :meth:`scan` look at ``runs/`` whatever its mtime."""
        self._mtime = None

    def scan(self) -> list[str] | None:
        """Read manifests of new run directories, drop vanished ones.

        Returns the run ids that vanished, or None when ``runs/`` did not change (nothing done).
        """
        try:
            mtime = self.runs_dir.stat().st_mtime_ns
            names = [d for d in os.listdir(self.runs_dir) if not d.startswith(".")]
        except OSError:
            mtime, names = -1, []
        if mtime == self._mtime:
            return None
        entries: dict[str, RunEntry] = {}
        for name in names:
            d = self.runs_dir / name
            try:
                st = (d / MANIFEST).stat()
            except OSError:
                continue  # not a run (no manifest)
            old = self.entries.get(name)
            if old is not None and old.mtime_ns == st.st_mtime_ns:
                entries[name] = old
                continue
            entries[name] = load_entry(name, d, st.st_mtime_ns)
        gone = sorted(set(self.entries) - set(entries))
        self.entries = entries
        self.readable = [e for e in entries.values() if e.error is None]
        self.runs_table = pa.Table.from_pylist([e.row for e in self.readable], schema=RUNS)
        df = self.runs_table.to_pandas()
        if len(df):
            df = df.sort_values(["created", "run_id"], ascending=False, kind="stable").reset_index(drop=True)
        self.runs_df = df
        self._mtime = mtime
        return gone

    def image_parts(self, e: RunEntry) -> list[Path]:
        """The images part files of the run's dataset fingerprint (sorted; [] when none)."""
        fp = e.row.get("dataset_fingerprint")
        if not fp or not FINGERPRINT_RE.match(fp):
            return []
        return image_parts(self.path, fp)

    def image_glob(self, e: RunEntry) -> str | None:
        """A ``read_parquet`` glob of the run's images parts, None when there are none."""
        parts = self.image_parts(e)
        return str(parts[0].parent / IMAGE_PARTS) if parts else None


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


def _arrow_to_table(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """Materialize an Arrow table as a DuckDB table visible to every cursor (name is ours)."""
    con.register("_arrow_in", table)
    try:
        con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _arrow_in")
    finally:
        con.unregister("_arrow_in")


def _view_of_files(con: duckdb.DuckDBPyConnection, name: str, files: list[str], schema: pa.Schema) -> None:
    """View ``name`` over Parquet ``files`` (an empty table of ``schema`` when there are none)."""
    if files:
        lst = "[" + ", ".join(_sql_str(f) for f in files) + "]"
        src = f"read_parquet({lst}, union_by_name = true)"
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {src}")
    else:
        _arrow_to_table(con, f"_empty_{name}", _duck_type_schema(schema).empty_table())
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM _empty_{name}")


def build_views(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> None:
    """(Re)create the cross-run views used by :meth:`StoreReader.sql`.

    DDL takes no bound parameters, so the file lists are quoted literals; they are paths we
    listed ourselves, never user input.
    """
    # Arrow registrations are visible only to the connection that made them, not to the
    # per-thread cursors, so they are copied into real (in-memory) tables.
    _arrow_to_table(con, "_runs_rows", catalog.runs_table)
    con.execute("CREATE OR REPLACE VIEW runs AS SELECT * FROM _runs_rows")
    for name in RUN_TABLES:
        if name != "runs":
            files = [str(e.file(name)) for e in catalog.readable if e.file(name).is_file()]
            _view_of_files(con, name, files, TABLES[name].schema)
    parts = sorted((catalog.path / IMAGES_DIR).glob(f"*/{IMAGE_PARTS}"))
    if parts:
        glob = _sql_str(str(catalog.path / IMAGES_DIR / "*" / IMAGE_PARTS))
        con.execute(
            f"CREATE OR REPLACE VIEW images AS SELECT * FROM read_parquet({glob}, union_by_name = true)"
        )
    else:
        _view_of_files(con, "images", [], TABLES["images"].schema)
