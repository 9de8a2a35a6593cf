"""The trust sections of the overview and the image page, and their rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import plotly
import pytest

from tests.support.synthetic import build_synthetic_store
from xaidash.dashboard.app import create_app, render
from xaidash.dashboard.trust_verdicts import baseline_margins, road_scores, sanity_verdicts

TRUST_IDS = ("overview-trust", "overview-sanity", "overview-road", "overview-baselines",
             "overview-localisation")


def text_of(component: Any) -> str:
    return json.dumps(component, cls=plotly.utils.PlotlyJSONEncoder, ensure_ascii=False)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """(state with trust tables, state of the same data without them)."""
    out = []
    for trust in (True, False):
        path = tmp_path_factory.mktemp("trust" if trust else "plain")
        build_synthetic_store(path, n_val=60, n_train=40, runs=1, seed=3, emb_dim=16, trust=trust)
        app = create_app(path, selections_dir=tmp_path_factory.mktemp("sel"))
        out.append(app.server.config["XAIDASH_STATE"])
    return out[0], out[1]


def test_sanity_verdicts_name_the_first_random_block() -> None:
    curves = pd.DataFrame({
        "method": ["a"] * 3 + ["b"] * 3, "step": [1, 2, 3] * 2, "block": ["fc", "layer4", "layer3"] * 2,
        "spearman": [0.8, 0.1, 0.0, 0.9, 0.95, None], "n": [4] * 6,
    })
    v = sanity_verdicts(curves).set_index("method")
    assert v.loc["a", "passes"]
    assert v.loc["a", "verdict"] == "changes completely once layer4 is random: passes"
    assert not v.loc["b", "passes"] and v.loc["b", "verdict"] == "survives randomisation: flagged"
    assert v.loc["b", "last"] == pytest.approx(0.95)


def test_baseline_margins_are_signed_so_positive_is_better() -> None:
    methods = pd.DataFrame({"method": ["m"], "drop": [0.2], "increase": [0.1], "deletion_auc": [0.3],
                            "insertion_auc": [0.7]})
    base = pd.DataFrame({"baseline": ["centre", "random"], "drop": [0.1, 0.5], "increase": [0.1, 0.0],
                         "deletion_auc": [0.2, 0.5], "insertion_auc": [0.9, 0.5]})
    m = baseline_margins(methods, base).set_index("baseline")
    assert m.loc["random", "drop"] == pytest.approx(0.3)
    assert m.loc["random", "insertion_auc"] == pytest.approx(0.2)
    assert m.loc["random", "deletion_auc"] == pytest.approx(0.2) and bool(m.loc["random", "beats"])
    assert m.loc["centre", "drop"] == pytest.approx(-0.1) and not bool(m.loc["centre", "beats"])
    assert (m.loc["centre", "better"], m.loc["centre", "worse"]) == (0, 3)


def test_road_scores() -> None:
    s = pd.DataFrame({"method": ["m"] * 4, "order": ["morf", "morf", "lerf", "lerf"],
                      "fraction": [0.1, 0.5] * 2, "probability": [0.6, 0.2, 0.9, 0.7], "n": [3] * 4})
    r = road_scores(s).set_index("method")
    assert r.loc["m", "morf"] == pytest.approx(0.4) and r.loc["m", "lerf"] == pytest.approx(0.8)
    assert r.loc["m", "gap"] == pytest.approx(0.4)


def test_overview_shows_every_trust_section_with_verdicts(stores: tuple[Any, Any]) -> None:
    state, _ = stores
    out = text_of(render(state, "/", ""))
    for i in TRUST_IDS:
        assert f'"{i}"' in out, i
    assert "Grad-CAM" in out and "changes completely once layer4 is random: passes" in out
    assert "survives randomisation: flagged" in out  # the synthetic cam survives it
    assert "overview-baselines-flagged" in out and "does not beat the centre Gaussian" in out
    assert "Pointing game" in out and "IoU of the top 20 %" in out
    assert "map maximum lies within 15 px (of a 224-px input) of the object" in out


def test_pointing_rule_of_runs_with_and_without_a_tolerance() -> None:
    from types import SimpleNamespace

    from xaidash.dashboard.pages.overview.trust import pointing_rule

    def rule(config: dict[str, object]) -> str:
        return pointing_rule(SimpleNamespace(config=config))  # type: ignore[arg-type]

    assert rule({"pointing_tolerance": 7.5}) == "within 7.5 px (of a 224-px input) of the object"
    assert rule({"pointing_tolerance": 0.0}) == rule({}) == "inside the object"  # older runs: none


def test_image_page_shows_road_and_localisation(stores: tuple[Any, Any]) -> None:
    state, _ = stores
    run = state.data.run_ids()[0]
    iid = state.data.reader.sql("SELECT image_id FROM road LIMIT 1")["image_id"].iloc[0]
    out = text_of(render(state, "/image", f"?run={run}&id={iid}"))
    assert '"image-road-table"' in out and '"image-localisation-table"' in out and "ROAD on this image" in out
    assert "Max on the object" in out and "within 15 px" in out


def test_run_without_trust_tables_shows_the_dashboard_as_before(stores: tuple[Any, Any]) -> None:
    _, plain = stores
    out = text_of(render(plain, "/", ""))
    assert "overview-faithfulness-table" in out
    for i in (*TRUST_IDS, "overview-trust-cost"):
        assert f'"{i}"' not in out, i
    # nothing said missing; the method ranking card (faithfulness alone) says what it had no data for
    assert "can i trust these maps" not in out.lower() and "localisation" not in out.lower()
    assert "Which method should I trust?" in out and "sanity not checked" in out
    run = plain.data.run_ids()[0]
    iid = plain.data.reader.sql("SELECT image_id FROM predictions LIMIT 1")["image_id"].iloc[0]
    page = text_of(render(plain, "/image", f"?run={run}&id={iid}"))
    assert '"image-page"' in page and '"image-trust"' not in page and "ROAD" not in page


def test_bad_image_ids_read_nothing(stores: tuple[Any, Any], tmp_path: Path) -> None:
    state, _ = stores
    run = state.data.run_ids()[0]
    assert state.data.trust.image_road(run, "' OR 1=1 --").empty
    assert state.data.trust.image_localisation(run, "x" * 16).empty
    assert state.data.trust.sanity_curves("no-such-run").empty
