"""The data-quality parts of the pages over the synthetic store (which computes its quality
tables with the job's own code), and a run without them (older runs) showing the pages as before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import plotly
import pytest

from tests.support.dash_testing import post_callback
from tests.support.synthetic import build_synthetic_store
from xaidash.constants import QUALITY_FLAGS
from xaidash.dashboard.app import create_app, render
from xaidash.dashboard.pages.gallery.quality import flag_to_search
from xaidash.dashboard.pages.overview.quality import accuracy_without_leaks
from xaidash.dashboard.params import parse_query, to_query
from xaidash.store import GalleryQuery
from xaidash.store.read.reader import open_store


def text_of(component: Any) -> str:
    return json.dumps(component, cls=plotly.utils.PlotlyJSONEncoder, ensure_ascii=False)


def latest(state: Any) -> str:
    return str(state.data.run_ids()[0])


def test_flag_param_roundtrip_and_validation() -> None:
    assert parse_query("?flag=leak").flag == "leak"
    assert parse_query("?flag=evil").flag is None
    assert to_query(parse_query("?flag=outlier&page=3")) == "?page=3&flag=outlier"
    assert flag_to_search("mislabelled", "?page=4&true=1") == "?true=1&flag=mislabelled"
    assert flag_to_search(None, "?flag=leak") == ""
    assert flag_to_search("leak", "?flag=leak") is None
    with pytest.raises(Exception, match="unknown quality flag"):
        GalleryQuery(flag="nope").check()


@pytest.mark.parametrize("flag", ["mislabelled", "leak", "outlier", "duplicate", "dark", "blurry",
                                  "low_information"])
def test_gallery_flag_filter_matches_the_quality_table(state: Any, store_dir: Path, flag: str) -> None:
    run = latest(state)
    q = state.data.quality.quality_rows(state.data.reader._entry(run)).to_pandas()
    want = set(q.loc[q[flag], "image_id"])
    assert want, f"the synthetic store has {flag} images"
    rows, total = state.data.gallery(run, GalleryQuery(flag=flag, page_size=1000))
    assert total == len(want) and set(rows["image_id"]) == want
    out = text_of(render(state, "/gallery", f"?flag={flag}"))
    assert "gallery-flag-badge" in out and f"{total:,} images" in out


def test_gallery_rows_carry_their_flags(state: Any) -> None:
    run = latest(state)
    q = state.data.quality.quality_rows(state.data.reader._entry(run)).to_pandas().set_index("image_id")
    rows, _ = state.data.gallery(run, GalleryQuery(page_size=1000))
    for iid, flags in zip(rows["image_id"], rows["flags"], strict=True):
        want = [f for f in QUALITY_FLAGS if iid in q.index and bool(q.at[iid, f])]
        assert flags == ",".join(want), iid
    # the page shows each flagged row's badges, with the flag's meaning as the tooltip
    leaks, n = state.data.gallery(run, GalleryQuery(flag="leak", page_size=24))
    out = text_of(render(state, "/gallery", "?flag=leak&size=24"))
    assert out.count("xd-flag") >= min(n, 24) and "the image page shows the pair" in out
    plain = rows.loc[rows["flags"] == "", "image_id"]
    assert len(plain) and len(leaks)


def test_gallery_sorts_by_label_quality(state: Any) -> None:
    run = latest(state)
    rows, _ = state.data.gallery(run, GalleryQuery(sort="label_quality", page_size=50))
    vals = rows["sort_value"].to_numpy()
    assert np.all(np.diff(vals) >= 0)
    pred = state.data.reader.sql(
        "SELECT image_id, label, probabilities FROM predictions WHERE run_id = ?", [run])
    p_label = {i: float(p[lab]) for i, lab, p in zip(pred["image_id"], pred["label"], pred["probabilities"],
                                                      strict=True)}
    assert np.allclose(vals, [p_label[i] for i in rows["image_id"]], atol=1e-6)  # self-confidence
    assert "Label quality (cleanlab)" in text_of(render(state, "/gallery", "?sort=label_quality"))


def test_confusion_cell_shows_its_error_clusters(state: Any) -> None:
    run = latest(state)
    cl = state.data.reader.sql("SELECT * FROM error_clusters WHERE run_id = ?", [run])
    assert len(cl)
    t, p = int(cl["true_class"].iloc[0]), int(cl["pred_class"].iloc[0])
    cell = cl[(cl["true_class"] == t) & (cl["pred_class"] == p)]
    out = text_of(render(state, "/gallery", f"?true={t}&pred={p}"))
    assert "gallery-clusters" in out and "Error clusters" in out
    for c in sorted(set(cell["cluster"])):
        first = cell[cell["cluster"] == c].iloc[0]
        assert f"Cluster {c + 1}" in out and f"{int(first['size'])} errors" in out
        for rep in first["representative_ids"]:
            assert f"/img/{run}/{rep}.png" in out
    assert out.count("data:image/png;base64,") == len(cell)  # one mean map per (cluster, method)
    # a cell without clusters (the diagonal) shows none
    assert "gallery-clusters" not in text_of(render(state, "/gallery", f"?true={t}&pred={t}"))


def test_overview_image_and_compare_show_quality(state: Any) -> None:
    run = latest(state)
    summary = state.data.quality.quality_summary(run)
    out = text_of(render(state, "/", ""))
    assert "overview-quality-card" in out and "Likely mislabelled" in out
    assert accuracy_without_leaks(summary) in out and f"without {summary['leaks']:,} " in out
    assert "flag=leak" in out and "flag=mislabelled" in out
    q = state.data.quality.quality_rows(state.data.reader._entry(run)).to_pandas()
    leak_id = str(q.loc[q["leak"], "image_id"].iloc[0])
    detail = state.data.quality.image_quality(run, leak_id)
    page = text_of(render(state, "/image", f"?id={leak_id}"))
    assert "image-quality-leak-pair" in page and f"/img/{run}/{detail['leak_train_id']}.png" in page
    dup_id = str(q.loc[q["duplicate"], "image_id"].iloc[0])  # its near-duplicate group, linked
    others = state.data.quality.duplicate_group(run, dup_id)
    page = text_of(render(state, "/image", f"?id={dup_id}"))
    assert others and "image-quality-duplicates" in page
    assert all(f"/img/{run}/{o}.png" in page for o in others)
    assert "Near-duplicates" in out and "Image issues" in out
    bad = str(q.loc[q["mislabelled"], "image_id"].iloc[0])
    page = text_of(render(state, "/image", f"?id={bad}"))
    assert "the data suggests" in page
    runs = state.data.run_ids()
    cmp = text_of(render(state, "/compare", f"?a={runs[1]}&b={runs[0]}"))
    both = state.data.quality.quality_overlap(runs[1], runs[0])
    n = int(both.loc[both["flag"] == "mislabelled", "both"].iloc[0])
    assert f"{n:,} images flagged likely mislabelled in both runs" in cmp


def test_accuracy_without_leaks_names_the_kind_of_leak() -> None:
    base = {"accuracy_without_leaks": 0.66}
    assert accuracy_without_leaks({**base, "leaks": 17, "pixel_leaks": 0}) == (
        "66.0% without 17 near-duplicates of training images")
    assert accuracy_without_leaks({**base, "leaks": 2, "pixel_leaks": 2}) == (
        "66.0% without 2 pixel copies of training images")
    assert accuracy_without_leaks({**base, "leaks": 5, "pixel_leaks": 1}) == (
        "66.0% without 5 leaks (1 pixel copy)")
    assert accuracy_without_leaks({**base, "leaks": 0, "pixel_leaks": 0}) is None


def test_flag_callback_over_http(client: Any, app: Any) -> None:
    r = post_callback(client, app, "url.search", {"gallery-flag.value": "outlier", "url.search": "?page=2"},
                      "gallery-flag.value")
    assert r["response"]["url"] == {"search": "?flag=outlier"}


def test_old_run_without_quality_tables_shows_pages_as_before(tmp_path: Path) -> None:
    store = tmp_path / "store"
    build_synthetic_store(store, n_val=120, n_train=150, runs=2, seed=2)
    for name in ("quality.parquet", "error_clusters.parquet"):
        for f in (store / "runs").glob(f"*/{name}"):
            f.unlink()  # what a run published before these tables existed looks like
    app = create_app(store, selections_dir=tmp_path / "sel")
    state = app.server.config["XAIDASH_STATE"]
    run = latest(state)
    assert not state.data.quality.has_quality(run) and state.data.quality.quality_summary(run) == {}
    assert state.data.gallery(run, GalleryQuery(flag="leak"))[1] == 0
    assert state.data.gallery(run, GalleryQuery(sort="label_quality"))[1] == 120
    overview = text_of(render(state, "/", ""))
    assert "overview-quality-card" not in overview and "leaked" not in overview
    gallery = text_of(render(state, "/gallery", ""))
    assert "Label quality" not in gallery and "could not be rendered" not in gallery
    assert "xd-flag" not in gallery and set(state.data.gallery(run, GalleryQuery())[0]["flags"]) == {""}
    with open_store(store) as r:
        cl = r.confusion(run)
    t, p = int(cl["true_class"].iloc[1]), int(cl["pred_class"].iloc[1])
    assert "gallery-clusters" not in text_of(render(state, "/gallery", f"?true={t}&pred={p}"))
    runs = state.data.run_ids()
    assert "compare-quality-card" not in text_of(render(state, "/compare", f"?a={runs[1]}&b={runs[0]}"))
    shutil.rmtree(store)


def test_run_with_an_older_quality_table_renders_as_before(tmp_path: Path) -> None:
    """A quality table from before issue 23 (no look-alike, duplicate or image-issue columns, no
    quality_rules / duplicates tables): the pages show its flags and nothing of the new ones."""
    import pyarrow.parquet as pq

    store = tmp_path / "store"
    build_synthetic_store(store, n_val=120, n_train=150, runs=2, seed=3)
    old = ["run_id", "image_id", "label_quality", "mislabelled", "suggested_class", "nearest_train_id",
           "nearest_train_similarity", "leak", "leak_match", "outlier_score", "outlier", "error_cluster"]
    for f in (store / "runs").glob("*/quality.parquet"):
        pq.write_table(pq.read_table(f, columns=old), f)
        for extra in ("quality_rules", "duplicates", "image_facts"):
            (f.parent / f"{extra}.parquet").unlink(missing_ok=True)
    app = create_app(store, selections_dir=tmp_path / "sel")
    state = app.server.config["XAIDASH_STATE"]
    run = latest(state)
    s = state.data.quality.quality_summary(run)
    assert s["leaks"] > 0 and s["lookalikes"] == s["duplicates"] == s["image_issues"] == 0
    assert s["outlier_note"] is None
    assert state.data.gallery(run, GalleryQuery(flag="duplicate"))[1] == 0
    assert state.data.gallery(run, GalleryQuery(flag="leak"))[1] == s["leaks"]
    overview = text_of(render(state, "/", ""))
    assert "overview-quality-card" in overview and "Look-alikes" not in overview
    assert "not enough images" not in overview and "pixel-identical to a train image" in overview
    leak_id = str(state.data.gallery(run, GalleryQuery(flag="leak"))[0]["image_id"].iloc[0])
    page = text_of(render(state, "/image", f"?id={leak_id}"))
    assert "image-quality-leak-pair" in page and "could not be rendered" not in page
    runs = state.data.run_ids()
    cmp = text_of(render(state, "/compare", f"?a={runs[1]}&b={runs[0]}"))
    assert "compare-quality-card" in cmp and "could not be rendered" not in cmp
    shutil.rmtree(store)


@pytest.mark.parametrize("shuffled", [False, True])
def test_quality_counts_equal_pandas_whether_or_not_the_files_line_up(tmp_path: Path, shuffled: bool) -> None:
    """The overview's counts come from a positional join of quality and predictions (both written
    sorted by image_id); a quality file in another order is matched by id instead, with the
    same answer."""
    import pyarrow.parquet as pq

    store = tmp_path / "store"
    run, other = build_synthetic_store(store, n_val=90, n_train=60, runs=2, seed=5)
    qf = store / "runs" / run / "quality.parquet"
    if shuffled:
        t = pq.read_table(qf)
        pq.write_table(t.take(np.random.default_rng(0).permutation(t.num_rows)), qf)
    q = pq.read_table(qf).to_pandas()
    p = pq.read_table(store / "runs" / run / "predictions.parquet").to_pandas()
    both = q.merge(p, on="image_id")
    with open_store(store) as r:
        s = r.quality_summary(run)
        by_class = r.quality_by_class(run)
        overlap = r.quality.quality_overlap(run, other).set_index("flag")
    qo = pq.read_table(store / "runs" / other / "quality.parquet").to_pandas()
    pair = q.merge(qo, on="image_id", how="outer", suffixes=("_a", "_b"))
    for flag in ("mislabelled", "leak", "outlier"):
        a, b = pair[f"{flag}_a"].fillna(False).astype(bool), pair[f"{flag}_b"].fillna(False).astype(bool)
        got = tuple(int(x) for x in overlap.loc[flag, ["a", "b", "both"]])
        assert got == (a.sum(), b.sum(), (a & b).sum())
    assert "misaligned" not in overlap.index
    assert s["n"] == len(both) and s["leaks"] == int(both["leak"].sum())
    assert s["mislabelled"] == int(both["mislabelled"].sum()) and s["outliers"] == int(both["outlier"].sum())
    labelled = both[both["correct"].notna()]
    assert s["accuracy"] == pytest.approx(labelled["correct"].astype(float).mean(), abs=1e-12)
    if s["leaks"]:
        clean = labelled[~labelled["leak"].astype(bool)]
        assert s["accuracy_without_leaks"] == pytest.approx(clean["correct"].astype(float).mean(), abs=1e-12)
    want = both[both["mislabelled"]].groupby("label").size()
    got = by_class.set_index("class")["mislabelled"]
    assert {int(k): int(v) for k, v in want.items()} == {int(k): int(v) for k, v in got.items() if v}
