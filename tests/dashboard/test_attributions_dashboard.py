"""The pixel attributions in the dashboard, over a real tiny run: the image page shows them next to
the CAMs for a sampled image (and only there), the overlay route serves them, and the overview's
faithfulness, ROAD and sanity sections show how many images each method covers instead of ranking a
sample against the whole set."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pandas as pd
import plotly
import pytest

from tests.support.imagegen import make_imagefolder
from tests.support.models import save_tiny_checkpoint
from xaidash.compute.pipeline.config import JobConfig
from xaidash.compute.pipeline.job import run_job
from xaidash.dashboard.app import create_app, render
from xaidash.dashboard.data import most_faithful


def text_of(component: Any) -> str:
    return json.dumps(component, cls=plotly.utils.PlotlyJSONEncoder, ensure_ascii=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, str, list[str], list[str]]:
    """(app, state, run id, sampled image ids, other val image ids) of a run with 2 attribution images."""
    root = tmp_path_factory.mktemp("attr")
    data = make_imagefolder(root / "d", n_train=2, n_val=3, size=32)
    ckpt = save_tiny_checkpoint(root / "m.pt")
    store = root / "s"
    res = run_job(JobConfig(data=f"imagefolder:{data}", store=str(store), checkpoint=str(ckpt),
                            methods=("cam", "gradcam"), workers=0, projection="pca", twins=1, sanity_images=1,
                            faithfulness_steps=4, road_fractions=(0.5,), attribution_images=2, ig_steps=4,
                            smoothgrad_samples=2, attribution_sanity_images=1))
    assert res.ok and res.run_id is not None
    cams = duckdb.sql(f"SELECT image_id, method FROM '{store}/runs/{res.run_id}/cams.parquet'").df()
    preds = duckdb.sql(f"SELECT image_id FROM '{store}/runs/{res.run_id}/predictions.parquet'").df()
    sampled = sorted(set(cams[cams["method"] == "ig_black"]["image_id"]))
    others = sorted(set(preds["image_id"]) - set(sampled))
    app = create_app(store, selections_dir=root / "sel")
    return app, app.server.config["XAIDASH_STATE"], res.run_id, sampled, others


def test_image_page_shows_the_attributions_of_a_sampled_image(run: tuple[Any, Any, str, list[str],
                                                                         list[str]]) -> None:
    app, state, run_id, sampled, others = run
    assert len(sampled) == 2 and others
    page = text_of(render(state, "/image", f"?run={run_id}&id={sampled[0]}"))
    assert "image-attributions" in page
    for label in ("IG (black)", "IG (blur)", "SmoothGrad"):
        assert label in page
    assert f"/overlay/{run_id}/{sampled[0]}/ig_blur.png" in page
    assert "4 points" in page  # how they were made, from the run's record
    # the faithfulness table of the image lists them with the CAMs
    assert "image-faithfulness" in page and page.count("IG (black)") >= 2
    # an image outside the sample has no attribution card
    other = text_of(render(state, "/image", f"?run={run_id}&id={others[0]}"))
    assert "image-attributions" not in other and "Grad-CAM" in other
    # the overlay route serves the attribution maps, and still refuses unknown methods
    client = app.server.test_client()
    ok = client.get(f"/overlay/{run_id}/{sampled[0]}/smoothgrad.png")
    assert ok.status_code == 200 and ok.data[:4] == b"\x89PNG"
    assert client.get(f"/overlay/{run_id}/{sampled[0]}/lime.png").status_code == 404
    assert client.get(f"/overlay/{run_id}/{others[0]}/smoothgrad.png").status_code == 404


def test_overview_says_how_many_images_each_method_covers(run: tuple[Any, Any, str, list[str],
                                                                     list[str]]) -> None:
    _, state, run_id, _, _ = run
    page = text_of(render(state, "/", f"?run={run_id}"))
    assert "listed without a rank" in page  # the faithfulness table
    assert "are not named best" in page  # ROAD
    summary = state.data.faithfulness_summary(run_id)
    assert set(summary["n"]) == {6, 2}


def test_most_faithful_ranks_only_the_methods_scored_on_every_image() -> None:
    """A method scored on a sample must not win (or lose) against means over all images."""
    summary = pd.DataFrame({"method": ["gradcam", "cam", "ig_blur"], "drop": [0.3, 0.2, 0.0],
                            "increase": [0.1, 0.2, 0.9], "deletion_auc": [0.3, 0.2, 0.0],
                            "insertion_auc": [0.6, 0.7, 1.0], "n": [100, 100, 8]})
    best, ranked = most_faithful(summary)
    assert best == "cam"
    r = ranked.set_index("method")["mean_rank"]
    assert r["cam"] == 1.0 and r["gradcam"] == 2.0 and pd.isna(r["ig_blur"])
    # without n (older callers): every row is ranked
    best2, _ = most_faithful(summary.drop(columns="n"))
    assert best2 == "ig_blur"
