"""Image page: ROAD and localisation of this one image, per method (hooked into
:mod:`xaidash.dashboard.pages.image.page`). Nothing is shown when the run has no such rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dash_bootstrap_components as dbc
import pandas as pd
from dash import dcc, html

from xaidash.constants import method_label
from xaidash.dashboard import figures_trust
from xaidash.dashboard.components import card, df_table, fmt_num, fmt_pct
from xaidash.dashboard.pages.overview.trust import pointing_rule
from xaidash.dashboard.trust_verdicts import in_method_order, road_scores

if TYPE_CHECKING:
    from xaidash.dashboard.state import PageContext

PREFIX = "image"


def road_card(rows: pd.DataFrame) -> Any:
    scores = in_method_order(road_scores(rows.assign(n=1)))
    return card(
        "ROAD on this image",
        [
            dcc.Graph(id=f"{PREFIX}-road-curves", figure=figures_trust.plot_road(rows.assign(n=1)),
                      config={"displayModeBar": False}),
            df_table(scores, [("method", "Method"), ("morf", "MoRF mean ↓"), ("lerf", "LeRF mean ↑"),
                              ("gap", "LeRF − MoRF ↑")],
                     formats={"method": lambda v, r: method_label(v), "morf": lambda v, r: fmt_num(v),
                              "lerf": lambda v, r: fmt_num(v), "gap": lambda v, r: fmt_num(v)},
                     id=f"{PREFIX}-road-table"),
        ],
    )


def localisation_card(rows: pd.DataFrame, rule: str = "inside the object") -> Any:
    topk = rows["topk"].dropna()
    k = f"{float(topk.iloc[0]):g}" if len(topk) else "k"
    return card(
        "Localisation on this image",
        [df_table(
            in_method_order(rows),
            [("method", "Method"), ("pointing", "Max on the object?"), ("energy", "Energy inside ↑"),
             ("iou", f"IoU top {k} % ↑")],
            formats={"method": lambda v, r: method_label(v),
                     "pointing": lambda v, r: "—" if pd.isna(v) else ("yes" if float(v) > 0 else "no"),
                     "energy": lambda v, r: fmt_pct(v), "iou": lambda v, r: fmt_num(v)},
            id=f"{PREFIX}-localisation-table",
        ),
         html.P(f"Max on the object: is the map's maximum {rule} (pointing game)? Energy inside: the "
                "share of the map's mass inside the object. IoU: the map's top pixels against the object.",
                className="small text-muted mt-2 mb-0")],
    )


def image_sections(ctx: PageContext, image_id: str) -> list[Any]:
    """The row of trust cards this image has data for (none: an empty list)."""
    trust, run_id = ctx.data.trust, ctx.info.run_id
    cols = []
    road = trust.image_road(run_id, image_id)
    if len(road):
        cols.append(dbc.Col(road_card(road), lg=7))
    loc = trust.image_localisation(run_id, image_id)
    if len(loc):
        cols.append(dbc.Col(localisation_card(loc, pointing_rule(ctx.info)), lg=5))
    return [dbc.Row(cols, id=f"{PREFIX}-trust")] if cols else []
