"""The image page's data-quality block: likely label error, leak (the pair side by side), outlier.

Reads the run's ``quality`` row of the image (:meth:`xaidash.store.read.quality.QualityQueries.
image_quality`); a run without that table, or an image without any flag, shows nothing.
"""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
from dash import html

from xaidash.dashboard.components import card, fmt_num, thumb_img
from xaidash.dashboard.state import PageContext
from xaidash.store import RunInfo

PREFIX = "image-quality"
PAIR_SIZE = 160


def _class_name(info: RunInfo, index: object) -> str:
    if isinstance(index, (int, float)) and 0 <= int(index) < len(info.class_names):
        return info.class_names[int(index)]
    return "?"


def quality_block(ctx: PageContext, info: RunInfo, image_id: str, label_name: str | None) -> Any:
    """The block for ``image_id`` in the run of ``info``, or None when nothing is flagged."""
    q = ctx.data.quality.image_quality(info.run_id, image_id)
    if q is None or not (q.get("mislabelled") or q.get("leak") or q.get("outlier")):
        return None
    items: list[Any] = []
    if q.get("mislabelled"):
        items.append(
            dbc.Alert(
                [
                    html.B("Likely mislabelled. "),
                    f"Labelled “{label_name or '?'}”, but the data suggests “"
                    f"{_class_name(info, q.get('suggested_class'))}” instead (label quality "
                    f"{fmt_num(q.get('label_quality'))}; confident learning on the stored probabilities).",
                ],
                color="warning",
                className="py-2 small",
                id=f"{PREFIX}-mislabelled",
            )
        )
    if q.get("outlier"):
        items.append(
            dbc.Alert(
                [
                    html.B("Outlier. "),
                    "Far from every training image: similarity to the nearest one "
                    f"{fmt_num(q.get('nearest_train_similarity'))}, robust z-score "
                    f"{fmt_num(q.get('outlier_score'), 1)} (flagged below -3.5).",
                ],
                color="secondary",
                className="py-2 small",
                id=f"{PREFIX}-outlier",
            )
        )
    nearest = q.get("nearest_train_id")
    if q.get("leak") and isinstance(nearest, str):
        how = (
            "the model's input is pixel-identical"
            if q.get("leak_match") == "pixels"
            else "near-duplicate embeddings"
        )
        pair = html.Div(
            [
                html.Div(
                    [
                        thumb_img(info.run_id, image_id, size=PAIR_SIZE),
                        html.Div("this val image", className="small"),
                    ],
                    className="text-center",
                ),
                html.Div(
                    [
                        thumb_img(info.run_id, nearest, size=PAIR_SIZE),
                        html.Div(f"train image {nearest}", className="small"),
                    ],
                    className="text-center",
                ),
            ],
            className="d-flex gap-3",
            id=f"{PREFIX}-leak-pair",
        )
        items.append(
            html.Div(
                [
                    html.P(
                        [
                            html.B("Leak: "),
                            ("this validation image is a copy of a training image"
                             if q.get("leak_match") == "pixels"
                             else "this validation image is a near-duplicate of a training image")
                            + f" ({how}, centred cosine {fmt_num(q.get('nearest_train_similarity'), 4)}). "
                            "Its prediction says little about generalisation; the overview shows "
                            "accuracy without leaks.",
                        ],
                        className="small mb-2",
                    ),
                    pair,
                ]
            )
        )
    return card("Data quality", items, className="border-warning", id=f"{PREFIX}-card")
