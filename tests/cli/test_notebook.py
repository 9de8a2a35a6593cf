"""The example notebook runs top to bottom in a Jupyter kernel against a tiny store (so it cannot
rot), and ``show`` refuses to run outside a notebook."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.synthetic import build_synthetic_store
from xaidash.errors import UserError

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebook.ipynb"
pytestmark = pytest.mark.slow


def test_example_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    store = tmp_path / "store"
    build_synthetic_store(store, n_val=80, n_train=40, runs=1, seed=9, emb_dim=8)
    monkeypatch.setenv("XAIDASH_STORE", str(store))
    monkeypatch.setenv("XAIDASH_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(cwd=str(tmp_path), env=dict(os.environ))
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert errors == []
    assert (tmp_path / "report.html").stat().st_size > 1_000_000 and (tmp_path / "errors.csv").is_file()
    shown = nb.cells[-1].outputs  # show(mode="inline"): Dash's IFrame of the running app
    assert any("IFrame" in str(o.get("data", {})) or "iframe" in str(o.get("data", {})) for o in shown), shown


def test_show_outside_a_notebook(tmp_path: Path) -> None:
    import xaidash

    with pytest.raises(UserError, match="inside a Jupyter notebook"):
        xaidash.show(tmp_path)
    with pytest.raises(UserError, match="valid modes"):
        xaidash.show(tmp_path, mode="popup")  # type: ignore[arg-type]
