"""The method ranking through the compute job: written by the global phase, seeded and recorded,
reproducible from the run's own per-image tables, with the dashboard's sanity verdicts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tests.support.imagegen import make_imagefolder
from tests.support.jobs import run_table, small_job
from xaidash.compute.analysis.method_ranking import RESAMPLES, SEED
from xaidash.compute.pipeline.config import JobConfig
from xaidash.compute.pipeline.job import run_job
from xaidash.compute.pipeline.method_ranking_phase import ranking_frames
from xaidash.dashboard.trust_verdicts import sanity_verdicts
from xaidash.store import open_store


def _cfg(data: Path, ckpt: Path, store: Path, **kw: object) -> JobConfig:
    return small_job(data, store, ckpt, **{"methods": ("cam", "gradcam", "gradcampp"), "sanity_images": 4,
                                           "road_fractions": (0.2, 0.6), "chunk_size": 4, **kw})


def test_job_writes_a_reproducible_ranking_with_the_dashboards_sanity_verdict(ckpt: Path,
                                                                              tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "d", n_train=2, n_val=6, size=16)
    res = run_job(_cfg(data, ckpt, tmp_path / "s"))
    assert res.ok and res.published
    st = run_table(tmp_path / "s", res.run_id, "method_stats")
    rk = run_table(tmp_path / "s", res.run_id, "method_ranking")
    assert set(st["run_id"]) == set(rk["run_id"]) == {res.run_id}
    assert sorted(rk["method"]) == ["cam", "gradcam", "gradcampp"]
    assert sorted(rk["position"]) == [1, 2, 3]
    assert set(st["resamples"]) == {RESAMPLES} and set(st["seed"]) == {SEED}
    assert {"road_gap", "ins_del", "drop"} <= set(st["metric"])
    assert {"random", "centre"} <= set(st["method"])  # the baselines' own means, for the card
    assert set(rk["primary"]) == {"road_gap"}

    # the same numbers again from the run's own per-image tables: seeded, nothing else involved
    faith = run_table(tmp_path / "s", res.run_id, "faithfulness")
    again_st, again_rk = ranking_frames(
        faith, run_table(tmp_path / "s", res.run_id, "baseline_faithfulness"),
        run_table(tmp_path / "s", res.run_id, "road"), run_table(tmp_path / "s", res.run_id, "sanity"),
        ["cam", "gradcam", "gradcampp"])
    got = rk.sort_values("position").reset_index(drop=True)
    assert list(got["method"]) == list(again_rk["method"])
    assert list(got["tier"]) == list(again_rk["tier"])
    key = ["metric", "method", "other"]
    a = st.drop(columns="run_id").sort_values(key, na_position="first").reset_index(drop=True)
    b = again_st.sort_values(key, na_position="first").reset_index(drop=True)
    pd.testing.assert_series_equal(a["mean"], b["mean"].astype(float), check_exact=False, atol=1e-9)
    pd.testing.assert_series_equal(a["ci_low"], b["ci_low"].astype(float), check_exact=False, atol=1e-9)

    # one sanity rule: the ranking's verdict is the overview sanity card's
    with open_store(tmp_path / "s") as reader:
        verdicts = sanity_verdicts(reader.trust.sanity_curves(str(res.run_id))).set_index("method")
    for r in rk.itertuples():
        assert bool(r.passes_sanity) == bool(verdicts.loc[r.method, "passes"]), r.method


def test_run_without_faithfulness_has_no_ranking(ckpt: Path, tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "d", n_train=2, n_val=2, size=16)
    res = run_job(_cfg(data, ckpt, tmp_path / "s", sanity_images=0, road_fractions=(), faithfulness=False))
    assert run_table(tmp_path / "s", res.run_id, "method_ranking").empty
    assert run_table(tmp_path / "s", res.run_id, "method_stats").empty
