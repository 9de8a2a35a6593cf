"""The dashboard's downloads: the gallery's CSV holds exactly the rows its filter shows (every
page, the page's order), and the overview's report is the file ``xaidash report`` writes."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import pandas as pd

from xaidash.dashboard.pages.gallery.page import gallery_query
from xaidash.dashboard.params import parse_query
from xaidash.dashboard.report.build import SECTIONS
from xaidash.dashboard.report.downloads import gallery_file, report_file


def _shown(state: Any, search: str) -> list[str]:
    """The image ids the gallery shows for ``search``, page after page."""
    f = parse_query(search)
    run = f.run or state.data.run_ids()[0]
    ids: list[str] = []
    page = 0
    while True:
        df, total = state.data.gallery(run, gallery_query(replace(f, page=page), None))
        ids += [str(i) for i in df["image_id"]]
        page += 1
        if page * f.size >= total:
            return ids


def test_gallery_download_equals_the_filtered_rows(state: Any) -> None:
    for search in (
        "?outcome=wrong&sort=confidence&desc=1",
        "?true=3",
        "?flag=mislabelled&sort=label_quality",
        "?cmin=0.5&cmax=0.9&size=12",
        "",
    ):
        got = gallery_file(state, search)
        assert got is not None and got["filename"].endswith(".csv") and got["type"] == "text/csv"
        df = pd.read_csv(io.StringIO(got["content"]))
        assert df["image_id"].tolist() == _shown(state, search), search
        assert {"source", "label_name", "pred_name", "confidence", "flags"} <= set(df.columns)


def test_report_download_is_the_report(state: Any) -> None:
    run = state.data.run_ids()[-1]  # an older run, named in the URL
    got = report_file(state, f"?run={run}")
    assert got is not None and got["filename"] == f"xaidash-report-{run}.html"
    assert all(f'<section id="section-{s}">' in got["content"] for s in SECTIONS) and run in got["content"]
