"""Image page: one image in depth.

The image large; the picked methods' maps (the classic four CAMs by default) for the predicted
class (and for the true class when the prediction is wrong: "why not the right class?"); the pixel
attributions (Integrated Gradients, SmoothGrad) when the image is in the run's attribution sample;
top-k probabilities; twins and counterfactual neighbours from the train set with similarity and
their own Grad-CAM; faithfulness per method; this image's prediction in every run of the same
dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import dash
import dash_bootstrap_components as dbc
import pandas as pd
from dash import dcc, html

from xaidash.constants import ATTRIBUTION_METHODS, method_label
from xaidash.dashboard import figures, inputs
from xaidash.dashboard.components import (
    available_methods,
    card,
    correctness_badge,
    df_table,
    display_controls,
    empty_state,
    fmt_num,
    fmt_pct,
    method_picker,
    missing_map,
    neighbor_tile,
    overlay_img,
    picked_from_control,
    picked_methods,
    thumb_img,
    warning_alert,
)
from xaidash.dashboard.pages.image import trust as image_trust
from xaidash.dashboard.pages.image.quality import quality_block
from xaidash.dashboard.params import Filters, changed_query, gallery_href, image_href, parse_query
from xaidash.dashboard.state import AppState, PageContext
from xaidash.dashboard.url_sync import controls_to_url
from xaidash.store import RunInfo

PREFIX = "image"
LARGE = 288  # px: the stored thumbnails are <= 96 px, upscaled smoothly for the big view
CAM_SIZE = 224


def cam_grid(
    run_id: str,
    image_id: str,
    methods: list[str],
    f: Filters,
    target: str,
    cams: Mapping[tuple[str, str], object],
    notes: Mapping[str, str] | None = None,
    img_class: str = "xd-cam-large",
) -> Any:
    """The picked methods side by side for one target (missing ones say why; ``notes`` say how a
    method's maps were approximated, e.g. Score-CAM in bf16 and its measured deviation)."""
    if not methods:
        return html.P("No method picked: pick some under Display to see their maps.",
                      className="text-muted small mb-0", id=f"{PREFIX}-no-methods-{target}")
    cols = []
    for m in methods:
        if (m, target) in cams:
            body: Any = overlay_img(
                run_id, image_id, m, f, target=target, size=CAM_SIZE, className=img_class
            )
        else:
            body = missing_map(
                "not applicable to this model's head" if m == "cam" else "not computed for this image"
            )
        cols.append(
            dbc.Col(
                html.Div(
                    [html.Div(method_label(m), className="fw-semibold small mb-1"), body,
                     *([html.Div(notes[m], className="text-muted small xd-cam-note")] if notes and m in notes
                       else [])],
                    className="text-center",
                ),
                xs=6,
                md=3,
                className="mb-2",
            )
        )
    return dbc.Row(cols, className="g-2")


def attribution_card(run_id: str, image_id: str, f: Filters, cams: Mapping[tuple[str, str], object],
                     info: RunInfo, wrong: bool) -> Any:
    """The pixel attributions of a sampled image (Integrated Gradients, SmoothGrad), beside the CAMs;
    None for an image outside the run's attribution sample (or a run without them)."""
    present = [m for m in ATTRIBUTION_METHODS if (m, "pred") in cams]
    if not present:
        return None
    rec = info.config.get("attribution")
    how = ""
    if isinstance(rec, dict):
        how = (f" Integrated Gradients with {rec.get('ig_steps')} points from a black image and from a "
               f"blurred copy; SmoothGrad over {rec.get('smoothgrad_samples')} noisy copies. Stored at "
               f"{rec.get('grid')}×{rec.get('grid')} at most and shown like the CAMs; this image is one "
               f"of the {rec.get('images')} of the run's attribution sample.")
    # their own image class: the CAM grids' images stay countable (and styled) on their own
    body = [cam_grid(run_id, image_id, present, f, "pred", cams, img_class="xd-attr-large")]
    if wrong and any((m, "true") in cams for m in present):
        body += [html.Div("…explaining the true class", className="small fw-semibold mt-2"),
                 cam_grid(run_id, image_id, present, f, "true", cams, img_class="xd-attr-large")]
    body.append(html.P("Pixel-level attributions through Captum: bright = evidence for the class, dark = "
                       "against it (IG) or no gradient (SmoothGrad)." + how,
                       className="small text-muted mb-0"))
    return card("Pixel attributions (sampled image)", body, id=f"{PREFIX}-attributions")


def scorecam_notes(info: RunInfo) -> dict[str, str]:
    """How this run's Score-CAM maps differ from exact fp32 Score-CAM, if they do."""
    parts = []
    if info.scorecam_note:
        parts.append(info.scorecam_note)
    cal = info.precision.get("calibration") if info.precision.get("precision") == "bf16" else None
    if isinstance(cal, dict):
        parts.append(f"bf16: within {cal['max_abs_dmap']:.3f} of fp32 (median {cal['median_abs_dmap']:.3f}, "
                     f"{cal['images']} images)")
    return {"scorecam": "; ".join(parts)} if parts else {}


def neighbor_strip(run_id: str, nbrs: pd.DataFrame, kind: str, f: Filters) -> Any:
    """Thumbnails of twins or counterfactuals, each with similarity and its own Grad-CAM."""
    part = nbrs[nbrs["kind"] == kind].sort_values("rank") if len(nbrs) else nbrs
    if len(part) == 0:
        return html.P("None stored for this image.", className="text-muted small mb-0")
    items = [
        neighbor_tile(
            run_id,
            str(rec["neighbor_id"]),
            f,
            [html.B(str(rec.get("neighbor_class_name") or "?")), f" · sim {fmt_num(rec['similarity'], 3)}"],
        )
        for rec in part.to_dict("records")
    ]
    return html.Div(items, className="d-flex flex-wrap gap-3", id=f"{PREFIX}-{kind}s")


def faithfulness_table(faith: pd.DataFrame) -> Any:
    if faith is None or len(faith) == 0:
        return html.P(
            "No faithfulness scores for this image (the run was computed without them).",
            className="text-muted small mb-0",
        )
    df = faith.copy()
    df["label"] = df["method"].map(method_label)
    return df_table(
        df,
        [
            ("label", "Method"),
            ("drop", "Drop ↓"),
            ("increase", "Increase ↑"),
            ("deletion_auc", "Deletion AUC ↓"),
            ("insertion_auc", "Insertion AUC ↑"),
        ],
        formats={
            "drop": lambda v, r: fmt_pct(v),
            "increase": lambda v, r: "yes" if v and v > 0.5 else "no",
            "deletion_auc": lambda v, r: fmt_num(v),
            "insertion_auc": lambda v, r: fmt_num(v),
        },
        id=f"{PREFIX}-faithfulness",
    )


def history_table(hist: pd.DataFrame, run_id: str, image_id: str, f: Filters) -> Any:
    if hist is None or len(hist) == 0:
        return html.P("No other runs.", className="text-muted small mb-0")

    def run_link(v: Any, r: dict[str, Any]) -> Any:
        label = str(v) + (" (this run)" if v == run_id else "")
        return dcc.Link(label, href=image_href(str(v), image_id, f)) if v != run_id else html.B(label)

    return df_table(
        hist,
        [
            ("run_id", "Run"),
            ("created", "Created"),
            ("pred_name", "Prediction"),
            ("confidence", "Confidence"),
            ("correct", ""),
        ],
        formats={
            "run_id": run_link,
            "created": lambda v, r: v.strftime("%Y-%m-%d %H:%M") if hasattr(v, "strftime") else str(v),
            "confidence": lambda v, r: fmt_pct(v),
            "correct": lambda v, r: correctness_badge(None if v is None or pd.isna(v) else bool(v)),
        },
        id=f"{PREFIX}-history",
    )


def layout(ctx: PageContext) -> Any:
    """Render the image page (plain function, unit-tested)."""
    info, f = ctx.info, ctx.filters
    run_id = info.run_id
    if f.id is None:
        return empty_state(
            "No image selected",
            ["Open an image from the ", dcc.Link("gallery", href=gallery_href(f)), " or the embedding map."],
        )
    detail = ctx.data.image(run_id, f.id)
    if detail is None:
        return empty_state(
            "Image not found in this run",
            [f"Run {run_id} has no image {f.id}. ", dcc.Link("Back to the gallery", href=gallery_href(f))],
            color="warning",
        )
    available = available_methods(info, ctx.data.map_methods(run_id))
    methods = picked_methods(f, available)
    pred = detail.prediction or {}
    correct = pred.get("correct")
    wrong = correct is False
    label_name = detail.label_name or pred.get("label_name")
    title = html.Div(
        [
            html.H4(
                [
                    correctness_badge(correct if pred else None),
                    f"predicted {pred.get('pred_name', '—')}",
                    html.Small(f"  {fmt_pct(pred.get('confidence'))}", className="text-muted"),
                ],
                className="mb-1",
            ),
            html.Div(
                [
                    html.Span(f"true class: {label_name or 'unknown'}", className="me-3"),
                    html.Span(f"source: {detail.source or '—'}", className="me-3 text-muted"),
                    html.Span(
                        f"{detail.width}×{detail.height} px · {detail.split or ''}",
                        className="text-muted me-3",
                    ),
                    html.Span(f"id {detail.image_id}", className="text-muted"),
                ],
                className="small",
            ),
        ],
        className="mb-3",
    )
    top = dbc.Row(
        [
            dbc.Col(
                card(
                    "Image",
                    html.Div(
                        thumb_img(run_id, detail.image_id, size=LARGE, className="xd-large"),
                        className="text-center",
                    ),
                ),
                md=4,
            ),
            dbc.Col(
                card(
                    "Top-k probabilities",
                    dcc.Graph(
                        id=f"{PREFIX}-topk",
                        figure=figures.plot_topk(detail.topk, detail.label),
                        config={"displayModeBar": False},
                    ),
                ),
                md=5,
            ),
            dbc.Col(card("Display", [method_picker(PREFIX, available, methods), display_controls(PREFIX, f)]),
                    md=3),
        ]
    )
    pred_name = pred.get("pred_name", "the predicted class")
    blocks: list[Any] = [
        warning_alert(ctx.warning),
        html.Div(
            dcc.Link("← back to the gallery", href=gallery_href(replace(f, id=None))), className="small mb-2"
        ),
        title,
        quality_block(ctx, info, detail.image_id, label_name),
        top,
        card(
            f"Where the model looked to predict “{pred_name}”",
            cam_grid(run_id, detail.image_id, methods, f, "pred", detail.cams, scorecam_notes(info)),
        ),
        attribution_card(run_id, detail.image_id, f, detail.cams, info, wrong),
    ]
    if wrong:
        blocks.append(
            card(
                f"Why not “{label_name}”? The same methods, explaining the true class",
                [
                    cam_grid(run_id, detail.image_id, methods, f, "true", detail.cams, scorecam_notes(info)),
                    html.P(
                        "If these maps light up the object while the predicted-class maps light up the "
                        "background "
                        "or another object, the model was distracted rather than blind.",
                        className="small text-muted mb-0",
                    ),
                ],
                className="border-danger",
            )
        )
    nbrs = ctx.data.neighbors(run_id, detail.image_id)
    blocks.append(
        dbc.Row(
            [
                dbc.Col(
                    card(
                        "Twins: most similar training images of the predicted class",
                        neighbor_strip(run_id, nbrs, "twin", f),
                    ),
                    lg=6,
                ),
                dbc.Col(
                    card(
                        "Counterfactuals: most similar training images of another class",
                        neighbor_strip(run_id, nbrs, "counterfactual", f),
                    ),
                    lg=6,
                ),
            ]
        )
    )
    blocks.append(
        dbc.Row(
            [
                dbc.Col(
                    card(
                        "Faithfulness of each method on this image", faithfulness_table(detail.faithfulness)
                    ),
                    lg=6,
                ),
                dbc.Col(
                    card(
                        "This image in every run of this dataset",
                        history_table(
                            ctx.data.image_history(run_id, detail.image_id), run_id, detail.image_id, f
                        ),
                    ),
                    lg=6,
                ),
            ]
        )
    )
    blocks.extend(image_trust.image_sections(ctx, detail.image_id))
    return html.Div([b for b in blocks if b is not None], id=f"{PREFIX}-page")


def register_callbacks(app: dash.Dash, state: AppState) -> None:
    """Methods / colormap / opacity -> URL."""

    def display(
        search: str | None, trigger: object, picked: list[str] | None, cmap: str | None, alpha: float | None
    ) -> str | None:
        f = parse_query(search)
        methods = picked_from_control(picked) if trigger == f"{PREFIX}-methods" else f.methods
        new = replace(f, methods=methods, cmap=cmap or f.cmap, alpha=alpha if alpha is not None else f.alpha)
        return changed_query(f, new)

    controls = [
        (f"{PREFIX}-methods", "value", inputs.str_list()),
        (f"{PREFIX}-cmap", "value", inputs.text()),
        (f"{PREFIX}-alpha", "value", inputs.number()),
    ]
    controls_to_url(app, controls, display)
