"""The Compare page's data-quality card: how many images each run flags as likely mislabelled,
leaked or outlying, and how many both flag ("12 images flagged mislabelled in both runs").

From :meth:`xaidash.store.read.quality.QualityQueries.quality_overlap`; when either run has no
quality table the card is not shown.
"""

from __future__ import annotations

from typing import Any

from dash import dcc, html

from xaidash.dashboard.components import card, df_table
from xaidash.dashboard.params import FLAG_LABELS, Filters, gallery_href
from xaidash.dashboard.state import PageContext

PREFIX = "compare-quality"


def overlap_card(ctx: PageContext, run_a: str, run_b: str, f: Filters) -> Any:
    """The card, or None when a run lacks the quality table."""
    df = ctx.data.quality.quality_overlap(run_a, run_b)
    if df is None or not len(df):
        return None
    df = df.assign(label=[FLAG_LABELS.get(str(x), str(x)) for x in df["flag"]])
    sentences = [
        f"{int(r['both']):,} image{'s' if int(r['both']) != 1 else ''} flagged {r['label']} in both runs"
        for r in df.to_dict("records") if int(r["a"]) or int(r["b"]) or r["flag"] in ("mislabelled", "leak")
    ]
    # the flags neither run raised (an older run has no look-alike or image-issue columns) add
    # only zeros to the table: kept to those either run has
    df = df[[bool(int(a) or int(b)) or fl in ("mislabelled", "leak", "outlier")
             for a, b, fl in zip(df["a"], df["b"], df["flag"], strict=True)]]
    table = df_table(
        df,
        [("label", "Flag"), ("a", "Run A"), ("b", "Run B"), ("both", "Both")],
        formats={
            "a": lambda v, r: dcc.Link(f"{int(v):,}", href=gallery_href(f, run=run_a, flag=r["flag"])),
            "b": lambda v, r: dcc.Link(f"{int(v):,}", href=gallery_href(f, run=run_b, flag=r["flag"])),
            "both": lambda v, r: f"{int(v):,}",
        },
        id=f"{PREFIX}-table",
    )
    return card(
        "Data quality in both runs",
        [html.P("; ".join(sentences) + ".", className="small mb-2", id=f"{PREFIX}-sentence"), table,
         html.P("Images are matched by id. A label error flagged by two different models is the "
                "data's, not the model's.", className="small text-muted mb-0")],
        id=f"{PREFIX}-card",
    )
