"""The overview's data-quality parts: accuracy without leaked images (beside the headline
accuracy) and a card counting likely label errors, leaks and outliers, overall and per class,
each linking to the gallery filtered to them.

From the run's ``quality`` table; a run without it shows neither.
"""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
from dash import dcc, html

from xaidash.constants import IMAGE_ISSUES
from xaidash.dashboard.components import card, df_table, fmt_pct, stat
from xaidash.dashboard.params import FLAG_LABELS, Filters, gallery_href
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
    # say which kind: a pixel copy is certain; older runs' embedding leaks may be look-alikes,
    # new runs' others are copies confirmed in pixel space (the quality card says how)
    if pixels == leaks:
        what = f"pixel cop{'ies' if leaks != 1 else 'y'} of training images"
    elif pixels == 0 and summary.get("lookalike_note") is not None:
        what = f"cop{'ies' if leaks != 1 else 'y'} of training images"
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
    new_rules = summary.get("outlier_note") is not None  # runs with quality_rules
    judged = bool(summary.get("outliers_judged")) or not new_rules
    stats = [
        stat("Likely mislabelled", f"{summary['mislabelled']:,}", "confident learning (cleanlab) →",
             href=link("mislabelled"), color="text-warning" if summary["mislabelled"] else ""),
        stat("Leaks", f"{leaks:,}", (f"copies of a train image, {pixel:,} pixel-identical →" if new_rules
                                     else f"{pixel:,} pixel-identical to a train image →"),
             href=link("leak"), color="text-danger" if leaks else ""),
        stat("Outliers", f"{summary['outliers']:,}" if judged else "—",
             "far from every training image →" if judged else "not enough images to judge outliers",
             href=link("outlier") if judged else None),
        stat("Clustered cells", f"{summary['clustered_cells']:,}",
             "confusion cells whose errors are grouped: click a cell"),
    ]
    if new_rules:
        issues = [(k, int(summary.get(k) or 0)) for k in IMAGE_ISSUES]
        worst = ", ".join(f"{n:,} {FLAG_LABELS[k]}" for k, n in issues if n) or "none"
        stats += [
            stat("Look-alikes", f"{summary.get('lookalikes', 0):,}", "of a train image, not copies →",
                 href=link("lookalike")),
            stat("Near-duplicates", f"{summary.get('duplicates', 0):,}",
                 f"val images in {summary.get('duplicate_groups', 0):,} groups; train: "
                 f"{summary.get('train_duplicate_groups', 0):,} groups →", href=link("duplicate")),
            stat("Image issues", f"{summary.get('image_issues', 0):,}", worst,
                 href=link(next(k for k, n in issues if n)) if any(n for _, n in issues) else None),
        ]
    row = dbc.Row([dbc.Col(s, xs=6, md=3, className="mb-2") for s in stats], className="g-2")
    by_class = ctx.data.quality.quality_by_class(info.run_id)
    body: list[Any] = [row]
    if len(by_class):
        body.append(
            df_table(
                by_class,
                [("class_name", "True class"), ("images", "Images"), ("mislabelled", "Likely mislabelled"),
                 ("leaks", "Leaks"), *([("lookalikes", "Look-alikes")] if new_rules else []),
                 ("outliers", "Outliers"), *([("duplicates", "Near-duplicates")] if new_rules else [])],
                formats={
                    "class_name": lambda v, r: dcc.Link(str(v), href=gallery_href(f, true=int(r["class"]))),
                    "mislabelled": lambda v, r: count_link(v, "mislabelled", r),
                    "leaks": lambda v, r: count_link(v, "leak", r),
                    "lookalikes": lambda v, r: count_link(v, "lookalike", r),
                    "outliers": lambda v, r: count_link(v, "outlier", r),
                    "duplicates": lambda v, r: count_link(v, "duplicate", r),
                },
                max_rows=200,
                className="xd-scroll",
                id=f"{PREFIX}-by-class",
            )
        )
    if new_rules:
        notes = [summary.get("lookalike_note"), summary.get("outlier_note")]
        text = ("Label issues: confident learning on the stored validation probabilities. Leaks: copies "
                "of a training image decided in pixel space (the same model input, or a perceptual hash "
                "and an aligned pixel distance), whatever the model. " + " ".join(
                    n[0].upper() + n[1:] + "." for n in notes if n) + " Image issues: thresholds relative "
                "to the data set's median. See docs/METHODS.md.")
    else:
        text = ("Label issues: confident learning on the stored validation probabilities. Leaks: the same "
                "model input as a training image, or a cosine similarity of the mean-centred embeddings ≥ "
                "the run's threshold to the nearest one. Outliers: robust z-score of the log distance to "
                "the nearest training image below −3.5. See docs/METHODS.md.")
    body.append(html.P(text, className="small text-muted mb-0", id=f"{PREFIX}-rules"))
    return card("Data quality: label errors, leaks, look-alikes, outliers, duplicates, image issues", body,
                id=f"{PREFIX}-card")
