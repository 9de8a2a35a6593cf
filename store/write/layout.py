"""Where the writer side keeps things in a store directory: :class:`StoreLayout`.

The layout (the reader's :mod:`xaidash.store.read.catalog` finds runs and images by the same
names, :data:`~xaidash.store.files.RUNS_DIR` and :data:`~xaidash.store.files.IMAGES_DIR`)::

    STORE/
      .xaidash-store                 marker: this directory is a store (format + schema version)
      runs/<run_id>/                 one published, immutable run
        manifest.json                written last; a run without it does not exist
        runs.parquet predictions.parquet cams.parquet embeddings.parquet neighbors.parquet
        class_metrics.parquet confusion.parquet faithfulness.parquet failures.parquet
      images/<dataset_fingerprint>/  thumbnails + metadata, shared by every run over that data
        part-<ns>-<pid>.parquet      appended atomically, deduplicated by image_id
        .lock                        flock serializing appends
      _staging/<sha1(job_key)[:20]>/ a job being written; invisible to readers (see staging.py)
      _trash/                        runs being deleted (rename first, then rmtree)

:class:`~xaidash.store.write.writer.Store` is a layout with the operations on it (create, delete,
gc); :class:`~xaidash.store.write.staging.Staging` needs only the layout, so it does not depend on
the store that opens it.
"""

from __future__ import annotations

from pathlib import Path

from xaidash.constants import FINGERPRINT_RE, RUN_ID_RE
from xaidash.errors import UserError
from xaidash.store import files
from xaidash.store.files import IMAGES_DIR, MANIFEST, RUNS_DIR, read_manifest


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a well-formed run id, else raise UserError."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise UserError(f"invalid run id {run_id!r}: run ids match {RUN_ID_RE.pattern}")
    return run_id


def validate_fingerprint(fp: str) -> str:
    """Return ``fp`` if it can be used as a directory name, else raise UserError."""
    if not isinstance(fp, str) or not FINGERPRINT_RE.match(fp):
        raise UserError(f"invalid dataset fingerprint {fp!r}: must match {FINGERPRINT_RE.pattern}")
    return fp


class StoreLayout:
    """The directories of the store at ``path``, its published runs, and how durably to write."""

    def __init__(self, path: Path, durable: bool = True) -> None:
        self.path = path
        #: fsync files before renaming them (survive power loss, not only process death).
        self.durable = durable

    @property
    def runs_dir(self) -> Path:
        return self.path / RUNS_DIR

    @property
    def images_dir(self) -> Path:
        return self.path / IMAGES_DIR

    @property
    def staging_dir(self) -> Path:
        return self.path / "_staging"

    @property
    def trash_dir(self) -> Path:
        return self.path / "_trash"

    @property
    def inputs_dir(self) -> Path:
        """Models and datasets handed to ``xaidash.compute_run`` in memory, written as files so
        that the run can be recomputed and its model rebuilt by the explain page."""
        return self.path / "inputs"

    def image_parts(self, fp: str) -> list[Path]:
        """The images part files of a dataset fingerprint, oldest first."""
        return files.image_parts(self.path, fp)

    def run_dirs(self) -> list[Path]:
        """Directories of published runs (manifest present), sorted by name."""
        if not self.runs_dir.is_dir():
            return []
        return sorted(
            d for d in self.runs_dir.iterdir() if not d.name.startswith(".") and (d / MANIFEST).is_file()
        )

    def published_job(self, job_key: str) -> str | None:
        """run_id under which ``job_key`` was published, or None.

        Scans manifests (a few ms for hundreds of runs); the manifests are the single source of
        truth, so deleting a run also frees its job key.
        """
        for d in self.run_dirs():
            m = read_manifest(d)
            if m is not None and m.get("job_key") == job_key:
                return str(m.get("run_id", d.name))
        return None
