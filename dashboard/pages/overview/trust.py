"""Overview sections "Can I trust these maps?": sanity check, baselines, ROAD, localisation.

Hooked into :mod:`xaidash.dashboard.pages.overview.page`. Each section appears only when its table
has rows: a run computed without those checks shows no trust section, and a dataset without
masks shows no localisation section and no note that it is missing.
The rules behind the verdicts are in :mod:`xaidash.dashboard.trust_verdicts`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dash_bootstrap_components as dbc
import pandas as pd
from dash import dcc, html

from xaidash.constants import BASELINE_LABELS, BASELINES, METHODS, method_label
from xaidash.dashboard import figures_trust
from xaidash.dashboard.components import card, df_table, fmt_num, fmt_pct
from xaidash.dashboard.trust_verdicts import (
    PASS_CORRELATION,
    baseline_margins,
    in_method_order,
    road_scores,
    sanity_verdicts,
)

if TYPE_CHECKING:
    from xaidash.dashboard.state import PageContext
    from xaidash.store import RunInfo

PREFIX = "overview"
#: what each trust part is called in the cost table
PART_LABELS = {"sanity": "Sanity check (per sampled image, all steps and methods)",
               "attributions": "Pixel attributions (IG black + blur, SmoothGrad; per sampled image)",
               "attribution_scores": "Faithfulness + ROAD of the pixel attributions",
               "attribution_sanity": "Sanity check of the pixel attributions (all steps)",
               "baselines": "Baselines (two trivial maps, faithfulness)",
               "road": "ROAD (all methods, MoRF + LeRF)",
               "localisation": "Localisation (all methods)"}


def _flag(ok: bool, yes: str, no: str) -> dbc.Badge:
    return dbc.Badge(yes, color="success", className="me-1") if ok else dbc.Badge(no, color="danger",
                                                                                  className="me-1")


def sanity_section(curves: pd.DataFrame) -> Any:
    """The curves of mean correlation against randomised depth and one verdict per method."""
    verdicts = in_method_order(sanity_verdicts(curves))
    n = int(curves["n"].max()) if len(curves) else 0
    # the pixel attributions are checked on fewer images (--attribution-sanity-images): say so
    per_method = curves.groupby("method")["n"].max().to_dict() if len(curves) else {}
    items = [html.Li([_flag(bool(r["passes"]), "passes", "flagged"), html.B(method_label(r["method"])), " ",
                      r["verdict"],
                      *([f" (on {int(per_method[r['method']])} images)"]
                        if int(per_method.get(r["method"], n)) < n else [])],
                     id=f"{PREFIX}-sanity-{r['method']}")
             for r in verdicts.to_dict("records")]
    return card(
        "Sanity check: does the map depend on the model?",
        [
            dcc.Graph(id=f"{PREFIX}-sanity-curves", figure=figures_trust.plot_sanity_curves(curves),
                      config={"displayModeBar": False}),
            html.Ul(items, className="mb-1 list-unstyled", id=f"{PREFIX}-sanity-verdicts"),
            html.P(
                f"Model-parameter randomisation (Adebayo et al. 2018), on {n} sampled images: the "
                "weights are "
                "re-initialised from the head down, one block further at each step, and every map is "
                "recomputed for the same class. A map that explains the model changes once the blocks it "
                f"reads are random (mean Spearman ρ below {PASS_CORRELATION}: passes); a map that survives "
                "randomisation is flagged.",
                className="small text-muted mb-0",
            ),
        ],
        id=f"{PREFIX}-sanity",
    )


def baselines_section(summary: pd.DataFrame, baselines: pd.DataFrame) -> Any:
    """How far each method beats the random and the centre map, metric by metric."""
    margins = baseline_margins(summary, baselines)
    rows = []
    for m in [m for m in METHODS if m in set(margins["method"])]:
        rec: dict[str, Any] = {"method": m}
        for b in BASELINES:
            part = margins[(margins["method"] == m) & (margins["baseline"] == b)]
            if len(part):
                r = part.iloc[0]
                rec[f"{b}_ins"] = r["insertion_auc"]
                rec[f"{b}_del"] = r["deletion_auc"]
                rec[f"{b}_drop"] = r["drop"]
                rec[f"{b}_beats"] = bool(r["beats"])
        rows.append(rec)
    df = pd.DataFrame(rows)
    cols: list[tuple[str, str]] = [("method", "Method")]
    formats: dict[str, Any] = {"method": lambda v, r: method_label(v)}
    for b in BASELINES:
        if f"{b}_beats" not in df:
            continue
        cols += [(f"{b}_ins", f"Δ Insertion ({b})"), (f"{b}_del", f"Δ Deletion ({b})"),
                 (f"{b}_drop", f"Δ Avg Drop ({b})"), (f"{b}_beats", f"Beats {b}?")]
        formats[f"{b}_ins"] = formats[f"{b}_del"] = lambda v, r: fmt_num(v)
        formats[f"{b}_drop"] = lambda v, r: fmt_pct(v)
        formats[f"{b}_beats"] = lambda v, r: _flag(bool(v), "yes", "no")
    flagged = [method_label(str(r["method"])) for r in rows if r.get("centre_beats") is False]
    note = (html.P(["Flagged: ", html.B(", ".join(flagged)), " does not beat the centre Gaussian, a map that "
                    "knows nothing about the model or the image."], className="small text-danger mb-1",
                   id=f"{PREFIX}-baselines-flagged") if flagged else None)
    base_means = df_table(
        baselines.assign(label=baselines["baseline"].map(lambda b: BASELINE_LABELS.get(str(b), str(b)))),
        [("label", "Baseline"), ("drop", "Average Drop % ↓"), ("increase", "Increase in Confidence % ↑"),
         ("deletion_auc", "Deletion AUC ↓"), ("insertion_auc", "Insertion AUC ↑"), ("n", "Images")],
        formats={"drop": lambda v, r: fmt_pct(v), "increase": lambda v, r: fmt_pct(v),
                 "deletion_auc": lambda v, r: fmt_num(v), "insertion_auc": lambda v, r: fmt_num(v)},
        id=f"{PREFIX}-baselines-scores",
    )
    return card(
        "Better than a trivial map? Faithfulness margin over two baselines",
        [
            note,
            df_table(df, cols, formats=formats, id=f"{PREFIX}-baselines-table"),
            html.P(
                "Δ = how much better the method's mean is than the baseline's (positive = better; for "
                "Deletion AUC and Average Drop lower is better, so the sign is flipped). A method beats a "
                "baseline when it is better on more of the four faithfulness metrics than it is worse. "
                "Baselines: random = a random map (seeded per image), centre = a centred Gaussian; both "
                "scored by the same faithfulness code:",
                className="small text-muted mt-2 mb-1",
            ),
            base_means,
        ],
        id=f"{PREFIX}-baselines",
    )


def road_section(summary: pd.DataFrame) -> Any:
    """ROAD curves per method and the mean MoRF / LeRF scores."""
    scores = in_method_order(road_scores(summary))
    # images per method: the pixel attributions cover only their sample, so the best gap is named
    # among the methods scored on the most images
    per_method = summary.groupby("method")["n"].max()
    scores = scores.assign(n=scores["method"].map(per_method))
    full = scores[scores["n"] == scores["n"].max()] if len(scores) else scores
    best = full.sort_values("gap", ascending=False)["method"].iloc[0] if len(full) else None
    table = df_table(
        scores,
        [("method", "Method"), ("morf", "MoRF mean ↓"), ("lerf", "LeRF mean ↑"), ("gap", "LeRF − MoRF ↑"),
         ("n", "Images")],
        formats={"method": lambda v, r: html.B(method_label(v)) if v == best else method_label(v),
                 "morf": lambda v, r: fmt_num(v), "lerf": lambda v, r: fmt_num(v),
                 "gap": lambda v, r: fmt_num(v)},
        id=f"{PREFIX}-road-table",
    )
    n = int(summary["n"].max()) if len(summary) else 0
    return card(
        "ROAD: removal with noisy linear imputation",
        [
            dcc.Graph(id=f"{PREFIX}-road-curves", figure=figures_trust.plot_road(summary),
                      config={"displayModeBar": False}),
            table,
            html.P(
                f"ROAD (Rong et al. 2022), on {n} images: the most (MoRF) or least (LeRF) relevant "
                "pixels of each "
                "map are removed and filled in from their neighbours by noisy linear imputation, so "
                "the network "
                "sees no hole-shaped artefact; the curves show the probability of the predicted class. A "
                "faithful map makes it drop fast under MoRF and stay under LeRF."
                + (" Methods with fewer images (the pixel attributions, on their sample) are not "
                   "named best." if len(scores) and scores["n"].nunique() > 1 else ""),
                className="small text-muted mt-2 mb-0",
            ),
        ],
        id=f"{PREFIX}-road",
    )


def pointing_rule(info: RunInfo) -> str:
    """What counts as a pointing-game hit in this run: within the recorded tolerance (pixels of a
    224-px input) of the object, or inside it (a run that recorded no tolerance)."""
    tol = info.config.get("pointing_tolerance")
    if isinstance(tol, (int, float)) and tol > 0:
        return f"within {float(tol):g} px (of a 224-px input) of the object"
    return "inside the object"


def localisation_section(summary: pd.DataFrame, rule: str = "inside the object") -> Any:
    """Pointing game, energy-based pointing game and top-k IoU per method."""
    topk = summary["topk"].dropna()
    k = f"{float(topk.iloc[0]):g}" if len(topk) else "k"
    table = df_table(
        in_method_order(summary),
        [("method", "Method"), ("pointing", "Pointing game ↑"), ("energy", "Energy-based pointing ↑"),
         ("iou", f"IoU of the top {k} % ↑"), ("n", "Images")],
        formats={"method": lambda v, r: method_label(v), "pointing": lambda v, r: fmt_pct(v),
                 "energy": lambda v, r: fmt_pct(v), "iou": lambda v, r: fmt_num(v)},
        id=f"{PREFIX}-localisation-table",
    )
    return card(
        "Localisation against the ground-truth object",
        [
            table,
            html.P(
                f"Pointing game: share of images whose map maximum lies {rule}. Energy-based "
                "pointing game (Score-CAM §5.2): mean share of the map's mass inside the object. IoU: the "
                f"map's top {k} % pixels against the object. Maps explain the predicted class.",
                className="small text-muted mt-2 mb-0",
            ),
        ],
        id=f"{PREFIX}-localisation",
    )


def trust_cost(info: RunInfo) -> Any:
    """The measured extra cost per image of each trust part (shown with the method costs)."""
    cost = info.timings.get("trust_ms_per_image")
    images = info.timings.get("trust_images")
    if not isinstance(cost, dict) or not cost:
        return None
    counts = images if isinstance(images, dict) else {}
    df = pd.DataFrame([{"part": PART_LABELS.get(str(k), str(k)), "ms": v, "n": counts.get(k)}
                       for k, v in cost.items()])
    return html.Div(
        [
            html.H6("Cost of the trust checks", className="mt-3 mb-1"),
            df_table(df, [("part", "Check"), ("ms", "Extra ms/image"), ("n", "Images")],
                     formats={"ms": lambda v, r: fmt_num(v, 1)}, id=f"{PREFIX}-trust-cost"),
        ]
    )


def trust_sections(ctx: PageContext) -> list[Any]:
    """The sections that have data: sanity and ROAD side by side, baselines, localisation."""
    trust, run_id = ctx.data.trust, ctx.info.run_id
    out: list[tuple[Any, int]] = []  # (card, width of 12 on large screens)
    curves = trust.sanity_curves(run_id)
    if len(curves):
        out.append((sanity_section(curves), 6))
    road = trust.road_summary(run_id)
    if len(road):
        out.append((road_section(road), 6))
    baselines = trust.baseline_summary(run_id)
    summary = ctx.data.faithfulness_summary(run_id)
    if len(baselines) and len(summary):
        out.append((baselines_section(summary, baselines), 12))
    loc = trust.localisation_summary(run_id)
    if len(loc):
        out.append((localisation_section(loc, pointing_rule(ctx.info)), 6))
    if not out:
        return []
    return [html.Div([html.H5("Can I trust these maps?", className="mt-2 mb-2"),
                      dbc.Row([dbc.Col(c, lg=w) for c, w in out], className="g-3")], id=f"{PREFIX}-trust")]
