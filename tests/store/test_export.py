"""Exports: the gallery's rows and stored tables through csv / parquet / jsonl, read back with
pandas and DuckDB; the filters are the gallery's; bad input is one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from tests.support.synthetic import build_synthetic_store
from xaidash.cli import main
from xaidash.errors import UserError
from xaidash.store import GalleryQuery, open_store
from xaidash.store.export import export_table, gallery_query, gallery_rows, parse_filters, table_rows


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export-store")
    build_synthetic_store(path, n_val=1300, n_train=50, runs=1, seed=8, emb_dim=8)
    return path


def _read(path: Path, fmt: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pandas, DuckDB) readings of an exported file."""
    if fmt == "csv":
        return pd.read_csv(path), duckdb.sql(f"SELECT * FROM read_csv_auto('{path}')").df()
    if fmt == "jsonl":
        return pd.read_json(path, lines=True), duckdb.sql(f"SELECT * FROM read_json_auto('{path}')").df()
    return pd.read_parquet(path), duckdb.sql(f"SELECT * FROM read_parquet('{path}')").df()


def test_gallery_rows_are_every_page_of_the_gallery(store: Path) -> None:
    with open_store(store) as r:
        run_id = str(r.latest_run_id())
        q = GalleryQuery(outcome="wrong", sort="confidence", descending=True)
        pages, total, page = [], None, 0
        while total is None or page * 24 < total:
            df, total = r.gallery(
                run_id, GalleryQuery(outcome="wrong", sort="confidence", descending=True, page=page)
            )
            pages.append(df)
            page += 1
        want = pd.concat(pages, ignore_index=True)
        got = gallery_rows(r, run_id, q)
        every = gallery_rows(r, run_id, GalleryQuery(sort="loss", descending=True))
    assert len(got) == total > 24
    assert len(every) == 1300 and every["image_id"].is_unique  # two of the export's own 1000-row pages
    assert every["loss"].is_monotonic_decreasing
    assert got["image_id"].tolist() == want["image_id"].tolist()
    assert got["flags"].tolist() == want["flags"].tolist()
    assert got["source"].notna().all() and got["source"].str.startswith("val/").all()


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_round_trip_pandas_and_duckdb(store: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"g.{fmt}"
    with open_store(store) as r:
        n = export_table(r, "latest", "gallery", out, fmt, true="cat", outcome="wrong")
        want = table_rows(r, "latest", "gallery", {"true": "cat", "outcome": "wrong"})
        preds = export_table(r, "latest", "predictions", tmp_path / f"p.{fmt}", fmt, flag="mislabelled")
        flagged = gallery_rows(r, str(r.latest_run_id()), GalleryQuery(flag="mislabelled"))
    assert n == len(want) > 0 and (want["label_name"] == "cat").all() and (~want["correct"]).all()
    for df in _read(out, fmt):
        assert df["image_id"].tolist() == want["image_id"].tolist()
        np.testing.assert_allclose(
            df["confidence"].astype(float), want["confidence"].astype(float), rtol=1e-6
        )
        assert df["pred_name"].tolist() == want["pred_name"].tolist()
    for df in _read(tmp_path / f"p.{fmt}", fmt):
        assert len(df) == preds == len(flagged) and set(df["image_id"]) == set(flagged["image_id"])
        probs = df["probabilities"].iloc[0]
        values = json.loads(probs) if isinstance(probs, str) else list(probs)
        assert len(values) == 10 and abs(sum(values) - 1) < 1e-4


def test_unfiltered_table_and_cli(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "cm.parquet"
    rc = main(["export", "latest", "--store", str(store), "--table", "class_metrics", "--out", str(out)])
    assert rc == 0 and len(pd.read_parquet(out)) == 10
    rc = main(
        [
            "export",
            "latest",
            "--store",
            str(store),
            "--table",
            "gallery",
            "--format",
            "csv",
            "--filter",
            "outcome=wrong",
            "--filter",
            "pred=3",
            "--out",
            str(tmp_path / "g.csv"),
        ]
    )
    df = pd.read_csv(tmp_path / "g.csv")
    assert rc == 0 and (df["pred"] == 3).all() and (~df["correct"]).all()


def test_overlays(store: Path, tmp_path: Path) -> None:
    rc = main(
        [
            "export",
            "latest",
            "--store",
            str(store),
            "--overlays",
            str(tmp_path / "ov"),
            "--filter",
            "true=cat",
            "--filter",
            "outcome=wrong",
            "--methods",
            "gradcam,cam",
            "--size",
            "64",
        ]
    )
    idx = pd.read_csv(tmp_path / "ov" / "images.csv")
    pngs = sorted(p.stem for p in (tmp_path / "ov" / "gradcam").glob("*.png"))
    assert rc == 0 and pngs == sorted(idx["image_id"]) and len(pngs) > 0
    assert len(list((tmp_path / "ov" / "cam").glob("*.png"))) == len(pngs)
    from PIL import Image

    with Image.open(tmp_path / "ov" / "gradcam" / f"{pngs[0]}.png") as im:
        assert max(im.size) == 64


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "--table", "gallery"], "no run 'nope'"),
        (["latest", "--table", "nosuch"], "unknown table 'nosuch'"),
        (["latest", "--table", "gallery", "--filter", "colour=red"], "unknown filter 'colour'"),
        (["latest", "--table", "gallery", "--filter", "true=giraffe"], "not a class of this run"),
        (["latest", "--table", "gallery", "--filter", "outcome"], "expected KEY=VALUE"),
        (["latest", "--table", "gallery", "--filter", "flag=ugly"], "valid flags"),
        (["latest", "--table", "confusion", "--filter", "outcome=wrong"], "has no images to filter"),
        (["latest", "--table", "gallery", "--out", "/nonexistent/dir/x.csv"], "does not exist"),
        (["latest", "--overlays", "OV", "--methods", "lime"], "has no method lime"),
    ],
)
def test_bad_input_is_one_line(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    args = [a.replace("OV", str(tmp_path / "ov")) for a in args]
    rc = main(["export", args[0], "--store", str(store), *args[1:]])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and message in err and len(err.splitlines()) == 1, err


def test_filter_parsing() -> None:
    assert parse_filters(["true=cat", " outcome = wrong "]) == {"true": "cat", "outcome": "wrong"}
    with pytest.raises(UserError, match="between 0 and 1"):
        from xaidash.store.read.records import RunInfo

        info = RunInfo.__new__(RunInfo)
        object.__setattr__(info, "class_names", ["a", "b"])
        gallery_query(info, {"cmin": "2"})
