"""The image page's data-quality block: likely label error, leak (the pair side by side), look-alike,
outlier, its near-duplicate group inside val, its image issues.

Reads the run's ``quality`` row of the image (:meth:`xaidash.store.read.quality.QualityQueries.
image_quality`); a run without that table, or an image without any flag, shows nothing.
"""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
from dash import dcc, html

from xaidash.dashboard.components import card, fmt_num, thumb_img
from xaidash.dashboard.params import FLAG_LABELS, image_href
from xaidash.dashboard.state import PageContext
from xaidash.store import RunInfo

PREFIX = "image-quality"
PAIR_SIZE = 160


def _class_name(info: RunInfo, index: object) -> str:
    if isinstance(index, (int, float)) and 0 <= int(index) < len(info.class_names):
        return info.class_names[int(index)]
    return "?"


def _pair(info: RunInfo, image_id: str, other: str, caption: str, id_: str) -> html.Div:
    return html.Div(
        [
            html.Div([thumb_img(info.run_id, image_id, size=PAIR_SIZE),
                      html.Div("this val image", className="small")], className="text-center"),
            html.Div([thumb_img(info.run_id, other, size=PAIR_SIZE),
                      html.Div(caption, className="small")], className="text-center"),
        ],
        className="d-flex gap-3",
        id=id_,
    )


def _leak(info: RunInfo, image_id: str, q: dict[str, Any]) -> Any:
    """The leak and its pair: the train image it copies (older runs: the nearest train image)."""
    train = q.get("leak_train_id") or q.get("nearest_train_id")
    if not isinstance(train, str):
        return None
    match = q.get("leak_match")
    if match == "pixels":
        how = "the model's input is pixel-identical to the training image's"
    elif match == "copy":
        how = ("the same picture after re-encoding, resizing, a small shift or crop: pixel distance "
               f"{fmt_num(q.get('leak_distance'), 4)} at 16x16 after alignment")
    else:  # older runs: an embedding similarity, which may be a look-alike
        how = f"near-duplicate embeddings, centred cosine {fmt_num(q.get('nearest_train_similarity'), 4)}"
    return html.Div(
        [
            html.P([html.B("Leak: "), f"this validation image is a copy of a training image ({how}). "
                    "Its prediction says little about generalisation; the overview shows accuracy "
                    "without leaks."],
                   className="small mb-2"),
            _pair(info, image_id, train, f"train image {train}", f"{PREFIX}-leak-pair"),
        ]
    )


def quality_block(ctx: PageContext, info: RunInfo, image_id: str, label_name: str | None) -> Any:
    """The block for ``image_id`` in the run of ``info``, or None when nothing is flagged."""
    q = ctx.data.quality.image_quality(info.run_id, image_id)
    raw = (q or {}).get("image_issues")
    issues = [str(i) for i in raw] if raw is not None else []  # a numpy array from the row
    if q is None or not (q.get("mislabelled") or q.get("leak") or q.get("outlier") or q.get("lookalike")
                         or q.get("duplicate_group") is not None or issues):
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
        score = q.get("outlier_score")
        # new runs: the share of train images less close to their nearest (in [0, 1]); older
        # runs: a robust z-score, flagged below -3.5
        detail = (f"fewer than {fmt_num(100 * score, 1)} % of training images are this far from "
                  "their nearest one" if isinstance(score, float) and 0 <= score <= 1 and "leak_train_id" in q
                  else f"robust z-score {fmt_num(score, 1)} (flagged below -3.5)")
        items.append(
            dbc.Alert(
                [html.B("Outlier. "), "Far from every training image: ", detail, "."],
                color="secondary",
                className="py-2 small",
                id=f"{PREFIX}-outlier",
            )
        )
    if issues:
        items.append(dbc.Alert([html.B("Image issues: "), ", ".join(FLAG_LABELS.get(i, i) for i in issues),
                                " (relative to the data set's typical image)."],
                               color="secondary", className="py-2 small", id=f"{PREFIX}-issues"))
    if q.get("leak"):
        items.append(_leak(info, image_id, q))
    nearest = q.get("nearest_train_id")
    if q.get("lookalike") and isinstance(nearest, str):
        items.append(html.Div(
            [html.P([html.B("Look-alike: "), "closer to this training image than almost any training "
                     "image is to another (centred cosine "
                     f"{fmt_num(q.get('nearest_train_similarity'), 4)}); a similar item, not a copy."],
                    className="small mb-2"),
             _pair(info, image_id, nearest, f"train image {nearest}", f"{PREFIX}-lookalike-pair")]))
    if q.get("duplicate_group") is not None:
        others = ctx.data.quality.duplicate_group(info.run_id, image_id)
        items.append(html.Div(
            [html.P([html.B("Near-duplicates in val: "),
                     f"{len(others)} other validation image{'s' if len(others) != 1 else ''} "
                     "are copies of this one."], className="small mb-2"),
             html.Div([dcc.Link(thumb_img(info.run_id, o, size=72),
                                href=image_href(info.run_id, o, ctx.filters)) for o in others[:24]],
                      className="d-flex flex-wrap gap-2")],
            id=f"{PREFIX}-duplicates"))
    return card("Data quality", items, className="border-warning", id=f"{PREFIX}-card")
