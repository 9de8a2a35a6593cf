"""The Python API, for notebooks and scripts: compute a run, open a store, look at a run, show the
dashboard inside Jupyter, write the report and the exports. The ``xaidash`` commands are thin
layers over these functions (``report`` and ``export`` call them; ``compute`` and this module both
build the job from the same argument parser), so a notebook and a shell get the same checks and
the same errors (:class:`xaidash.errors.UserError`, one line).

    import xaidash
    run_id = xaidash.compute_run(data="imagefolder:data/", checkpoint="model.pt", store="store/")
    store = xaidash.open_store("store/")
    run = xaidash.Run(store, "latest")
    run.predictions().head()
    run.maps(run.predictions().image_id[0])["gradcam"]      # float32 [h, w]
    run.report("report.html")
    xaidash.show(store, mode="inline")                     # the dashboard in the notebook

Heavy libraries (torch, Dash, DuckDB) are imported by the function that needs them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from xaidash.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pandas as pd
    from torch.utils.data import Dataset

    from xaidash.store import RunInfo, StoreReader

__all__ = [
    "SHOW_MODES",
    "Run",
    "compute_run",
    "export_overlays",
    "export_table",
    "open_store",
    "show",
    "write_report",
]

ShowMode = Literal["inline", "tab", "external", "jupyterlab"]
SHOW_MODES: tuple[str, ...] = ("inline", "tab", "external", "jupyterlab")


def open_store(path: str | Path) -> StoreReader:
    """The store at ``path`` for reading (:class:`xaidash.store.StoreReader`: typed queries and
    ``sql()``); UserError if it is not a store."""
    from xaidash.store import open_store as _open

    return _open(path)


def _reader(store: str | Path | StoreReader) -> StoreReader:
    return open_store(store) if isinstance(store, (str, Path)) else store


class _RaisingParser(argparse.ArgumentParser):
    """argparse that raises UserError instead of printing usage and exiting the notebook's kernel."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"compute_run: {message}")


def compute_run(data: str | Dataset[Any], store: str | Path, **options: Any) -> str:
    """Run a model over a dataset and publish one run; returns its id.

    Takes the options of ``xaidash compute`` with underscores for dashes (``checkpoint=``,
    ``model=``, ``weights=``, ``methods="gradcam,scorecam"``, ``device="cpu"``, ``limit_val=200``,
    ``projection="pca"``, ...); a list is accepted where the CLI takes a comma-separated one. An
    unknown option is a UserError naming the valid ones. An identical run already in the store is
    reused, as on the command line.

    In memory: ``model=`` may be an ``nn.Module`` (saved whole under the store's ``inputs/`` and
    run as ``module:FILE``, so the dashboard's explain page can rebuild it), and ``data=`` a torch
    ``Dataset`` of ``(image, label)`` pairs with ``train_data=`` its optional training set (written
    once as an image folder under ``inputs/``; :mod:`xaidash.compute.datasets.in_memory`). Class
    names come from ``classes=`` or the dataset's ``.classes``, in label order.
    """
    from xaidash.compute.cli.compute import add_arguments

    data, options = _materialise(data, Path(store), dict(options))

    parser = _RaisingParser(prog="xaidash.compute_run", add_help=False)
    add_arguments(parser)
    # argparse has no public list of its options; _actions is the documented-by-use way to read them
    flags = {a.dest: a for a in parser._actions if a.option_strings}
    unknown = sorted(set(options) - (set(flags) - {"data", "store"}))
    if unknown:
        valid = ", ".join(sorted(set(flags) - {"data", "store"}))
        raise UserError(f"compute_run: unknown option(s) {', '.join(unknown)}; valid: {valid}")
    # The keywords become the command line they stand for, so the command's own types, choices and
    # defaults apply (a typo'd device or a negative count fails exactly as it does in a shell).
    argv = ["--data", str(data), "--store", str(store)]
    for name, value in options.items():
        action = flags[name]
        if action.nargs == 0:  # a flag: given when true
            if value:
                argv.append(action.option_strings[0])
            continue
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        argv += [action.option_strings[0], str(value)]
    args = parser.parse_args(argv)
    from xaidash.compute.pipeline.job import JobConfig, run_job

    result = run_job(JobConfig.from_args(args))
    if not result.ok or result.run_id is None:
        raise UserError(
            "compute_run: the job did not publish a run (see the log: shards still missing "
            f"{result.chunks_missing} chunks?)"
        )
    return result.run_id


def write_report(
    store: str | Path | StoreReader,
    run: str | None,
    out: str | Path,
    pdf: bool = False,
    top_errors: int = 24,
    show_paths: bool = False,
) -> list[Path]:
    """Write the self-contained HTML report of ``run`` (id or ``latest``) to ``out`` and, with
    ``pdf``, ``out`` with the suffix ``.pdf`` next to it; returns the paths written. Paths (the
    checkpoint, an image folder) appear by name unless ``show_paths``
    (:func:`xaidash.dashboard.report.build.write_report`)."""
    from xaidash.dashboard.report.build import write_report as _write

    return _write(
        _reader(store), run, Path(out).expanduser(), pdf=pdf, top_errors=top_errors, show_paths=show_paths
    )


def export_table(
    store: str | Path | StoreReader,
    run: str | None,
    table: str,
    out: str | Path,
    fmt: str | None = None,
    **filters: Any,
) -> int:
    """Write one table of ``run`` to ``out`` as csv, parquet or jsonl (``fmt``, default: from the
    suffix), restricted to the images the gallery filters select (``true=``, ``pred=``, ``outcome=``,
    ``flag=``; class names or indices); returns the rows written. ``table="gallery"`` is the
    gallery's rows themselves (sources, labels, predictions, confidence, flags)."""
    from xaidash.store.export import export_table as _export

    return _export(_reader(store), run, table, Path(out).expanduser(), fmt, **filters)


def export_overlays(
    store: str | Path | StoreReader,
    run: str | None,
    out_dir: str | Path,
    methods: Sequence[str] | None = None,
    **filters: Any,
) -> int:
    """Write ``<out_dir>/<method>/<image_id>.png`` overlays of the images the filters select;
    returns the number of files written."""
    from xaidash.dashboard.report.overlays import export_overlays as _export

    return _export(_reader(store), run, Path(out_dir).expanduser(), methods, filters=filters)


def _materialise(data: str | Dataset[Any], store: Path, options: dict[str, Any]
                 ) -> tuple[str, dict[str, Any]]:
    """In-memory model and datasets -> the files and SPECs the command line would name."""
    import torch

    from xaidash.store import Store

    train = options.pop("train_data", None)
    in_memory = isinstance(options.get("model"), torch.nn.Module) or not isinstance(data, str)
    # the job's own checks of the store folder, before anything is written into it
    inputs = Store.create(store).inputs_dir if in_memory else store
    if isinstance(options.get("model"), torch.nn.Module):
        from xaidash.compute.model.external import save_module

        options["model"] = f"module:{save_module(options['model'], inputs / 'models')}"
    if isinstance(data, str):
        if train is not None:
            raise UserError("compute_run: train_data= goes with an in-memory data= Dataset; a SPEC "
                            "names its training split itself (imagefolder:DIR/train)")
        return data, options
    from xaidash.compute.datasets.in_memory import dataset_classes, write_imagefolder

    classes = options.get("classes")
    names = dataset_classes(data, classes.split(",") if isinstance(classes, str) else classes)
    folder = write_imagefolder(data, train, names, inputs / "datasets")
    options["classes"] = list(names)
    return f"imagefolder:{folder}", options


class Run:
    """One run of a store, as pandas and numpy: ``Run(store, "latest")`` or ``Run("store/", RUN_ID)``.

    ``store`` is a path or an open :class:`~xaidash.store.StoreReader`; ``info`` is the run's row of
    the runs table (:class:`~xaidash.store.RunInfo`: model, data, classes, methods, timings).
    """

    def __init__(self, store: str | Path | StoreReader, run: str | None = "latest") -> None:
        from xaidash.store.export import resolve_run

        self.store: StoreReader = _reader(store)
        self.info: RunInfo = resolve_run(self.store, run)

    def __repr__(self) -> str:
        return f"Run({self.id!r}, {self.info.dataset_spec!r}, {self.info.arch!r})"

    @property
    def id(self) -> str:
        """The run id."""
        return self.info.run_id

    def predictions(self) -> pd.DataFrame:
        """One row per val image: image_id, label(_name), pred(_name), confidence, probabilities,
        correct, loss, runner_up, cam_disagreement."""
        return self.store.sql(
            "SELECT * EXCLUDE (run_id) FROM predictions WHERE run_id = ? ORDER BY image_id", [self.id]
        )

    def maps(self, image_id: str, target: str = "pred") -> dict[str, npt.NDArray[np.float32]]:
        """method -> the image's map (float32 [h, w] in [0, 1]) for the predicted (``target="pred"``)
        or the true class (``"true"``, stored for errors); {} for an unknown image."""
        got = self.store.cams_batch(self.id, [image_id], self.info.methods, target)
        return {m: got[(image_id, m)] for m in self.info.methods if (image_id, m) in got}

    def scores(self) -> dict[str, float | None]:
        """ECE, MCE, macro ROC AUC / AP and top-k accuracy ({} for a run without them)."""
        return self.store.ranking.scores(self.id)

    def report(self, path: str | Path, pdf: bool = False, top_errors: int = 24) -> list[Path]:
        """Write the self-contained HTML report (see :func:`write_report`)."""
        return write_report(self.store, self.id, path, pdf=pdf, top_errors=top_errors)



def show(
    store: str | Path | StoreReader,
    run: str | None = None,
    mode: ShowMode = "inline",
    port: int | None = None,
    height: int = 800,
) -> None:
    """Open the dashboard inside Jupyter through Dash's own Jupyter mode: ``inline`` (in the cell's
    output), ``tab`` (a new browser tab), ``external`` (prints the URL) or ``jupyterlab``. ``run``
    opens that run (default: the latest). UserError outside a notebook kernel."""
    if mode not in SHOW_MODES:
        raise UserError(f"unknown mode {mode!r}; valid modes: {', '.join(SHOW_MODES)}")
    from dash import jupyter_dash

    if not jupyter_dash.in_ipython:
        raise UserError(
            "xaidash.show() opens the dashboard inside a Jupyter notebook; outside one, run "
            "`xaidash serve --store DIR`"
        )
    reader = _reader(store)
    run_id = None
    if run is not None:
        from xaidash.store.export import resolve_run

        run_id = resolve_run(reader, run).run_id
    from xaidash.dashboard.app import create_app
    from xaidash.dashboard.server.serving import free_port

    app = create_app(reader.path, reader=reader)
    if run_id is not None:
        from flask import redirect, request

        def open_run() -> Any:
            # Dash's Jupyter mode frames the app's root URL: send that one to the chosen run
            if request.path == "/" and not request.query_string:
                return redirect(f"/?run={run_id}")
            return None

        app.server.before_request(open_run)

    app.run(jupyter_mode=mode, jupyter_height=height, port=port or free_port(), debug=False)
