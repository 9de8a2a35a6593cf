"""The overview's data-quality parts: accuracy without leaked images (beside the headline
accuracy) and a card counting likely label errors, leaks and outliers, overall and per class,
each linking to the gallery filtered to them.

From the run's ``quality`` table; a run without it shows neither.
"""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
from dash import dcc, html

from xaidash.dashboard.components import card, df_table, fmt_pct, stat
from xaidash.dashboard.params import Filters, gallery_href
from xaidash.dashboard.state import PageContext
from xaidash.store import RunInfo

PREFIX = "overview-quality"


def accuracy_without_leaks(summary: dict[str, Any]) -> str | None:
    """The line under the headline accuracy when the run has leaked images."""
    acc, leaks = summary.get("accuracy_without_leaks"), int(summary.get("leaks") or 0)
    if not leaks or acc is None:
        return None
    pixels = int(summary.get("pixel_leaks") or 0)
    s = "s" if leaks != 1 else ""
    # say which kind: a pixel copy is certain, a near-duplicate embedding may be a look-alike
    # (the quality card below says how each kind is found)
    if pixels == leaks:
        what = f"pixel cop{'ies' if leaks != 1 else 'y'} of training images"
    elif pixels == 0:
        what = f"near-duplicate{s} of training images"
    else:
        what = f"leaks ({pixels:,} pixel cop{'ies' if pixels != 1 else 'y'})"
    return f"{fmt_pct(acc)} without {leaks:,} {what}"


def quality_card(ctx: PageContext, info: RunInfo, f: Filters, summary: dict[str, Any]) -> Any:
    """Counts of label issues, leaks and outliers, overall and per class; None without a table."""
    if not summary:
        return None

    def link(flag: str, **kw: Any) -> str:
        sort = {"sort": "label_quality"} if flag == "mislabelled" else {}
        return gallery_href(f, flag=flag, outcome="all", **sort, **kw)

    def count_link(v: Any, flag: str, r: dict[str, Any]) -> Any:
        return dcc.Link(f"{int(v):,}", href=link(flag, true=int(r["class"]))) if v else "0"

    leaks, pixel = int(summary["leaks"]), int(summary["pixel_leaks"])
    stats = [
        stat("Likely mislabelled", f"{summary['mislabelled']:,}", "confident learning (cleanlab) →",
             href=link("mislabelled"), color="text-warning" if summary["mislabelled"] else ""),
        stat("Leaks", f"{leaks:,}", f"{pixel:,} pixel-identical to a train image →", href=link("leak"),
             color="text-danger" if leaks else ""),
        stat("Outliers", f"{summary['outliers']:,}", "far from every training image →", href=link("outlier")),
        stat("Clustered cells", f"{summary['clustered_cells']:,}",
             "confusion cells whose errors are grouped: click a cell"),
    ]
    row = dbc.Row([dbc.Col(s, xs=6, md=3, className="mb-2") for s in stats], className="g-2")
    by_class = ctx.data.quality.quality_by_class(info.run_id)
    body: list[Any] = [row]
    if len(by_class):
        body.append(
            df_table(
                by_class,
                [("class_name", "True class"), ("images", "Images"), ("mislabelled", "Likely mislabelled"),
                 ("leaks", "Leaks"), ("outliers", "Outliers")],
                formats={
                    "class_name": lambda v, r: dcc.Link(str(v), href=gallery_href(f, true=int(r["class"]))),
                    "mislabelled": lambda v, r: count_link(v, "mislabelled", r),
                    "leaks": lambda v, r: count_link(v, "leak", r),
                    "outliers": lambda v, r: count_link(v, "outlier", r),
                },
                max_rows=200,
                className="xd-scroll",
                id=f"{PREFIX}-by-class",
            )
        )
    body.append(
        html.P(
            "Label issues: confident learning on the stored validation probabilities. Leaks: the same "
            "model input as a training image, or a cosine similarity of the mean-centred embeddings ≥ "
            "the run's threshold to the nearest one. Outliers: robust z-score of the log distance to "
            "the nearest training image below −3.5. See docs/METHODS.md.",
            className="small text-muted mb-0",
        )
    )
    return card("Data quality: label errors, leaks, outliers", body, id=f"{PREFIX}-card")
