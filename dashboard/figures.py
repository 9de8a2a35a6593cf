"""Pure figure builders: DataFrame in, ``plotly.graph_objects.Figure`` out.

No Dash, no store access, no global state besides the registered Plotly template - so every
builder is unit-testable with a hand-made DataFrame and reusable in a notebook.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from xaidash.dashboard.theme import COLOR_CORRECT, COLOR_WRONG, figure_template

# Beyond this many classes the per-cell numbers in heatmaps become unreadable.
MAX_ANNOTATED_CLASSES = 20
# Scattergl handles 100k points, but the JSON (and the browser's parse) for 100k ids costs
# ~1 s; above this the map shows a deterministic sample that always keeps every error.
MAX_MAP_POINTS = 20_000


def new_figure(*args: object, **kwargs: object) -> go.Figure:
    """``go.Figure(...)`` in the theme's template (registered first, then taken as the default)."""
    figure_template()
    return go.Figure(*args, **kwargs)


def _resolved_template() -> object:
    """The theme's template object itself (a figure built without validation does not resolve
    a template name)."""
    import plotly.io as pio

    return pio.templates[figure_template()]


@functools.cache
def template_json() -> dict[str, Any]:
    """The theme's template as plain JSON-ready data, for figures built as dicts (made once; the
    callers only read it)."""
    out: dict[str, Any] = _resolved_template().to_plotly_json()  # type: ignore[attr-defined]
    return out


def empty_figure(message: str, height: int = 300) -> go.Figure:
    """A blank figure carrying a centred message (used instead of an error or an empty axis)."""
    fig = new_figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(
        height=height,
        xaxis={"visible": False},
        yaxis={"visible": False},
    )
    return fig


def confusion_matrix(confusion: pd.DataFrame, n_classes: int) -> np.ndarray:
    """Long-form (true_class, pred_class, count) -> dense [n, n] int matrix (rows = true)."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    if len(confusion):
        t = confusion["true_class"].to_numpy(dtype=np.int64)
        p = confusion["pred_class"].to_numpy(dtype=np.int64)
        c = confusion["count"].to_numpy(dtype=np.int64)
        ok = (t >= 0) & (t < n_classes) & (p >= 0) & (p < n_classes)
        np.add.at(m, (t[ok], p[ok]), c[ok])
    return m


def plot_confusion(confusion: pd.DataFrame, class_names: Sequence[str], normalize: bool = False) -> go.Figure:
    """Confusion matrix heatmap, rows = true class, columns = predicted class.

    ``normalize`` divides each row by its support (recall on the diagonal). Each cell carries
    ``customdata = [true, pred, count]`` so a click can open the gallery on that pair.
    """
    n = len(class_names)
    if n == 0:
        return empty_figure("No classes")
    counts = confusion_matrix(confusion, n)
    row = counts.sum(axis=1, keepdims=True)
    shown = np.divide(counts, np.maximum(row, 1)) if normalize else counts.astype(float)
    ti, pi = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    custom = np.stack([ti, pi, counts], axis=-1)
    names = [str(c) for c in class_names]
    text = None
    if n <= MAX_ANNOTATED_CLASSES:
        text = [
            [(f"{v:.2f}" if normalize else f"{int(v)}") if counts[i, j] else "" for j, v in enumerate(r)]
            for i, r in enumerate(shown)
        ]
    fig = new_figure(
        go.Heatmap(
            z=shown,
            x=names,
            y=names,
            customdata=custom.tolist(),  # plain lists: typed arrays arrive as objects in clickData
            text=text,
            texttemplate="%{text}" if text is not None else None,
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalize else None,
            hovertemplate=(
                "true %{y}<br>predicted %{x}<br>%{customdata[2]} images"
                + ("<br>%{z:.1%} of the row" if normalize else "")
                + "<extra>click to open in the gallery</extra>"
            ),
            colorbar={"title": "share" if normalize else "count", "thickness": 12},
        )
    )
    side = max(360, min(720, 60 + 32 * n))
    fig.update_layout(
        height=side,
        xaxis={"title": "predicted class", "tickangle": -45 if n > 6 else 0, "constrain": "domain"},
        yaxis={"title": "true class", "autorange": "reversed", "scaleanchor": "x", "constrain": "domain"},
        clickmode="event",
    )
    return fig


def plot_confidence_histogram(hist: pd.DataFrame) -> go.Figure:
    """Confidence histogram of correct vs wrong predictions (overlaid bars).

    ``hist``: bin_start, bin_end, correct (bool), count.
    """
    if hist is None or len(hist) == 0:
        return empty_figure("No labeled predictions")
    fig = new_figure()
    for correct, name, color in ((True, "correct", COLOR_CORRECT), (False, "wrong", COLOR_WRONG)):
        part = hist[hist["correct"] == correct]
        if len(part) == 0:
            continue
        centers = (part["bin_start"].to_numpy(float) + part["bin_end"].to_numpy(float)) / 2
        widths = part["bin_end"].to_numpy(float) - part["bin_start"].to_numpy(float)
        fig.add_bar(
            x=centers,
            y=part["count"],
            width=widths,
            name=name,
            marker_color=color,
            opacity=0.75,
            hovertemplate=f"{name}<br>confidence %{{x:.2f}}<br>%{{y}} images<extra></extra>",
        )
    fig.update_layout(
        barmode="overlay",
        height=300,
        xaxis={"title": "confidence (probability of the predicted class)", "range": [0, 1]},
        yaxis={"title": "images"},
        legend={"orientation": "h", "y": 1.12, "x": 0},
    )
    return fig


def plot_topk(topk: Sequence[tuple[int, str, float]], true_class: int | None = None) -> dict[str, Any]:
    """Horizontal bar chart of the top-k class probabilities, the true class highlighted, as the
    figure dict ``dcc.Graph`` sends to plotly.js."""
    if not topk:
        return cast(dict[str, Any], empty_figure("No probabilities", height=200).to_plotly_json())
    rows = list(topk)[::-1]  # largest at the top
    names = [str(n) for _, n, _ in rows]
    probs = [float(p) for _, _, p in rows]
    colors = [
        COLOR_CORRECT if (true_class is not None and c == true_class) else "#95a5a6" for c, _, _ in rows
    ]
    if true_class is not None and rows[-1][0] != true_class:
        colors[-1] = COLOR_WRONG
    elif true_class is None:
        colors[-1] = "#3498db"
    # A plain dict, as plotly.js reads it: a go.Figure, even unvalidated, deep-copied the theme's
    # template three times on its way to JSON (~10 ms of every first image-page render)
    return {
        "data": [
            {
                "type": "bar",
                "x": probs,
                "y": names,
                "orientation": "h",
                "marker": {"color": colors},
                "text": [f"{p:.1%}" for p in probs],
                "textposition": "auto",
                "hovertemplate": "%{y}: %{x:.2%}<extra></extra>",
            }
        ],
        "layout": {
            "template": template_json(),
            "height": 60 + 34 * len(rows),
            "xaxis": {"range": [0, 1], "tickformat": ".0%"},
            "yaxis": {"automargin": True},
            "margin": {"l": 10, "r": 10, "t": 10, "b": 30},
        },
    }


def class_palette(n: int) -> list[str]:
    """Distinct colours for ``n`` classes: the theme's 5-colour colorway repeats too soon.

    Plotly's 10-colour qualitative palette up to 10 classes, then Dark24 and Alphabet; more
    classes than that repeat (the legend and hover still name them).
    """
    from plotly.express import colors

    if n <= 10:
        return list(colors.qualitative.Plotly)
    if n <= 24:
        return list(colors.qualitative.Dark24)
    return list(colors.qualitative.Alphabet) + list(colors.qualitative.Dark24)


def sample_points(points: pd.DataFrame, max_points: int = MAX_MAP_POINTS, seed: int = 0) -> pd.DataFrame:
    """Deterministic subsample for display that keeps every error (they are what users hunt)."""
    if len(points) <= max_points:
        return points
    wrong = points["correct"].eq(False) if "correct" in points else pd.Series(False, index=points.index)
    keep_wrong = points[wrong]
    rest = points[~wrong]
    budget = max(0, max_points - len(keep_wrong))
    if budget < len(rest):
        rest = rest.sample(n=budget, random_state=seed)
    return pd.concat([keep_wrong, rest]).sort_index()


def plot_embedding(
    points: pd.DataFrame,
    class_names: Sequence[str],
    color_by: str = "true",
    selected: str | None = None,
    twin_points: pd.DataFrame | None = None,
    max_points: int = MAX_MAP_POINTS,
) -> go.Figure:
    """WebGL scatter of the 2-D projection, one trace per class, errors drawn as ``x``.

    ``points``: image_id, split, x, y, label, label_name, pred, pred_name, correct.
    ``color_by``: "true" or "pred" (unlabeled runs always colour by prediction).
    ``selected`` + ``twin_points`` (x, y, similarity): draws lines from the selected point to its
    twins. ``customdata`` of each point is its image id (click/hover/selection read it).
    """
    if points is None or len(points) == 0:
        return empty_figure("No embeddings in this run", height=560)
    labeled = "label" in points and points["label"].notna().any()
    key = "label" if (color_by == "true" and labeled) else "pred"
    density = None
    if len(points) > max_points:
        density = density_layer(points, key, len(class_names))
        shown = points.iloc[density.sparse[:max_points]]  # isolated points, drawn one by one
    else:
        shown = points
    fig = go.Figure(_validate=False)  # fixed, tested properties: validating 1M-point maps cost ~1 s
    palette = class_palette(len(class_names))
    for cls, part in shown.groupby(shown[key].fillna(-1).astype(int), sort=True):
        name = class_names[cls] if 0 <= cls < len(class_names) else ("train" if cls < 0 else str(cls))
        color = palette[cls % len(palette)] if cls >= 0 else "#adb5bd"
        wrong = part["correct"].eq(False).to_numpy() if "correct" in part else np.zeros(len(part), bool)
        is_train = (part["split"] == "train").to_numpy() if "split" in part else np.zeros(len(part), bool)
        symbols = np.where(wrong, "x", np.where(is_train, "circle-open", "circle"))
        sizes = np.where(wrong, 8, 5)
        fig.add_trace(
            go.Scattergl(
                _validate=False,
                x=part["x"].round(4),
                y=part["y"].round(4),
                mode="markers",
                name=str(name),
                legendgroup=str(name),
                showlegend=False,
                customdata=part["image_id"],
                marker={
                    "symbol": symbols,
                    "size": sizes,
                    "opacity": 0.8,
                    "line": {"width": 0},
                    "color": color,
                },
                hovertemplate=f"{name}<extra></extra>",
            )
        )
        # Plotly draws a legend item with the trace's first marker symbol: a class whose first
        # point is an error would show the error cross. The class's legend item is its own empty
        # trace with the plain symbol, grouped with the points so a click still toggles them. One
        # null point: plotly.js leaves a trace with no data out of the legend.
        fig.add_trace(
            go.Scattergl(
                _validate=False,
                x=[None],
                y=[None],
                mode="markers",
                name=str(name),
                legendgroup=str(name),
                marker={"symbol": "circle", "size": 5, "color": color},
                hoverinfo="skip",
            )
        )
    # Traces 0 and 1 are always the twin lines and the selected star (empty until a point is
    # pinned), so a click can update just them with a Patch instead of resending every point.
    lines_x, lines_y, star_x, star_y = twin_line_coords(points, selected, twin_points)
    fig.add_trace(
        go.Scattergl(
            _validate=False,
            x=lines_x,
            y=lines_y,
            mode="lines",
            name="twins",
            line={"color": "#2c3e50", "width": 1.5},
            hoverinfo="skip",
            showlegend=False,
        )
    )
    fig.add_trace(
        go.Scattergl(
            _validate=False,
            x=star_x,
            y=star_y,
            mode="markers",
            name="selected",
            hoverinfo="skip",
            showlegend=False,
            marker={"symbol": "star", "size": 16, "color": "#f39c12", "line": {"width": 1, "color": "#000"}},
        )
    )
    # Move them to the front of the trace list (indices 0 and 1).
    fig.data = fig.data[-2:] + fig.data[:-2]
    note = ""
    if density is not None:
        _add_density(fig, density, class_names)
        note = (
            f"all {len(points):,} points: colour = class mix, brightness = how many overlap; "
            f"{len(shown):,} isolated points drawn one by one"
        )
    fig.update_layout(
        template=_resolved_template(),
        height=600,
        dragmode="lasso",
        clickmode="event+select",
        hovermode="closest",
        xaxis={"visible": False},
        yaxis={"visible": False, "scaleanchor": "x"},
        legend={"title": "true class" if key == "label" else "predicted class", "itemsizing": "constant"},
        title={"text": note, "font": {"size": 12}, "x": 0.01} if note else None,
        uirevision="embedding",
    )
    if density is not None:
        x0, x1, y0, y1 = density.extent
        fig.update_layout(xaxis={"range": [x0, x1]}, yaxis={"range": [y0, y1]})
    return fig


#: pixels of the density raster (the long side); the hover grid is coarser
DENSITY_PX = 512
HOVER_CELLS = 128
#: a point whose hover cell holds at most this many points (an outlier) is drawn as a marker too
SPARSE_MAX = 3


class Density:
    """Every point of a large map binned on a raster: per-pixel class mix and count."""

    def __init__(
        self, png: str, extent: tuple[float, float, float, float], hover: np.ndarray, sparse: np.ndarray
    ) -> None:
        self.png = png  # data: URI of the RGBA raster
        self.extent = extent  # x0, x1, y0, y1
        self.hover = hover  # counts per hover cell [rows (y up), cols]
        self.sparse = sparse  # positions in ``points`` of the outliers (near-empty hover cells)


def density_layer(points: pd.DataFrame, key: str, n_classes: int) -> Density:
    """Bin all ``points`` (x, y; class column ``key``) on a raster, in numpy: ~50 ms for 1M points.

    Each pixel's colour is the count-weighted mix of its classes' palette colours (the
    categorical shading of datashader) and its opacity grows with log(count), so dense regions
    read as density and single points stay visible.
    """
    import base64
    import io

    from PIL import Image

    x = points["x"].to_numpy(dtype=np.float32, na_value=np.nan)
    y = points["y"].to_numpy(dtype=np.float32, na_value=np.nan)
    ok = np.isfinite(x) & np.isfinite(y)
    xv, yv = x[ok], y[ok]
    x0, x1 = (float(xv.min()), float(xv.max())) if len(xv) else (0.0, 1.0)
    y0, y1 = (float(yv.min()), float(yv.max())) if len(yv) else (0.0, 1.0)
    pad_x, pad_y = max(x1 - x0, 1e-6) * 0.02, max(y1 - y0, 1e-6) * 0.02
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y
    aspect = (y1 - y0) / (x1 - x0)
    w = DENSITY_PX if aspect <= 1 else max(16, int(DENSITY_PX / aspect))
    h = max(16, int(w * aspect)) if aspect <= 1 else DENSITY_PX
    fx = (xv - np.float32(x0)) * np.float32(1 / (x1 - x0))  # in [0, 1)
    fy = (yv - np.float32(y0)) * np.float32(1 / (y1 - y0))
    pix = np.minimum((fy * h).astype(np.int32), h - 1) * w + np.minimum((fx * w).astype(np.int32), w - 1)
    cls = points[key].to_numpy(dtype=np.float32, na_value=-1)[ok]
    cls = np.where(np.isfinite(cls) & (cls >= 0), cls, n_classes).astype(np.int32)  # unknown: last
    palette = class_palette(max(n_classes, 1))
    rgb = np.array([_hex_rgb(palette[c % len(palette)]) for c in range(n_classes)] + [(173, 181, 189)], float)
    # three weighted bincounts give each pixel's summed class colour, one more its count
    total = np.bincount(pix, minlength=w * h).astype(np.float64)
    sums = np.stack([np.bincount(pix, weights=rgb[cls, c], minlength=w * h) for c in range(3)], 1)
    colour = sums.astype(np.float64) / np.maximum(total, 1)[:, None]
    alpha = np.where(total > 0, 90 + 165 * np.log1p(total) / np.log1p(max(total.max(), 1)), 0.0)
    img = np.concatenate([colour, alpha[:, None]], 1).astype(np.uint8).reshape(h, w, 4)[::-1]  # row 0 = top
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img), "RGBA").save(buf, format="PNG", compress_level=1)
    png = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    hw = HOVER_CELLS if aspect <= 1 else max(1, round(HOVER_CELLS / aspect))
    hh = max(1, round(HOVER_CELLS * aspect)) if aspect <= 1 else HOVER_CELLS
    cell = np.minimum((fy * hh).astype(np.int32), hh - 1) * hw + np.minimum(
        (fx * hw).astype(np.int32), hw - 1
    )
    hover = np.bincount(cell, minlength=hw * hh)
    sparse_rows = np.flatnonzero(ok)[hover[cell] <= SPARSE_MAX]
    hover = hover.reshape(hh, hw)
    return Density(png, (x0, x1, y0, y1), hover, sparse_rows)


def _hex_rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def _add_density(fig: go.Figure, d: Density, class_names: Sequence[str]) -> None:
    """The raster under the markers, and an invisible heatmap over it that answers hover/click
    with its cell (the callbacks map the cell to its nearest point)."""
    x0, x1, y0, y1 = d.extent
    fig.add_layout_image(
        source=d.png,
        xref="x",
        yref="y",
        x=x0,
        y=y1,
        sizex=x1 - x0,
        sizey=y1 - y0,
        sizing="stretch",
        xanchor="left",
        yanchor="top",
        layer="below",
    )
    hh, hw = d.hover.shape
    z = np.where(d.hover > 0, d.hover, np.nan)
    fig.add_trace(
        go.Heatmap(
            _validate=False,
            z=z,
            x0=x0 + (x1 - x0) / hw / 2,
            dx=(x1 - x0) / hw,
            y0=y0 + (y1 - y0) / hh / 2,
            dy=(y1 - y0) / hh,
            opacity=0,
            showscale=False,
            hoverongaps=False,
            name="density",
            hovertemplate="%{z:,} points here<extra></extra>",
        )
    )
    palette = class_palette(len(class_names))
    shown = {t.name for t in fig.data}
    for c, name in enumerate(class_names):  # legend entries of classes with no isolated point
        if str(name) not in shown:
            fig.add_trace(
                go.Scattergl(
                    _validate=False,
                    x=[None],  # plotly.js leaves a trace with no data out of the legend
                    y=[None],
                    mode="markers",
                    name=str(name),
                    marker={"color": palette[c % len(palette)], "size": 5},
                )
            )


def twin_line_coords(
    points: pd.DataFrame, selected: str | None, twin_points: pd.DataFrame | None
) -> tuple[list[float | None], list[float | None], list[float], list[float]]:
    """Line segments selected -> each twin (None-separated) and the selected point itself."""
    if selected is None or twin_points is None or points is None or not len(points):
        return [], [], [], []
    sel = points[points["image_id"] == selected]
    if not len(sel):
        return [], [], [], []
    x0, y0 = float(sel["x"].iloc[0]), float(sel["y"].iloc[0])
    xs: list[float | None] = []
    ys: list[float | None] = []
    for x1, y1 in zip(twin_points["x"], twin_points["y"], strict=False):
        xs += [x0, float(x1), None]
        ys += [y0, float(y1), None]
    return xs, ys, [x0], [y0]


def plot_confusion_delta(delta: pd.DataFrame, class_names: Sequence[str]) -> go.Figure:
    """Heatmap of count(b) - count(a) per (true, pred) cell, diverging around zero.

    On the diagonal positive is good (more correct); off the diagonal negative is good, so the
    hover text spells the direction out rather than relying on colour alone.
    """
    n = len(class_names)
    if n == 0 or delta is None or len(delta) == 0:
        return empty_figure("No confusion data")
    m = np.zeros((n, n))
    for t, p, d in zip(delta["true_class"], delta["pred_class"], delta["delta"], strict=False):
        if 0 <= int(t) < n and 0 <= int(p) < n:
            m[int(t), int(p)] = float(d)
    lim = max(1.0, float(np.abs(m).max()))
    # Colour by "better/worse", not by sign: +1 on the diagonal is good, +1 off it is bad.
    goodness = np.where(np.eye(n, dtype=bool), m, -m)
    names = [str(c) for c in class_names]
    text = [[f"{int(v):+d}" if v else "" for v in r] for r in m]
    fig = new_figure(
        go.Heatmap(
            z=goodness,
            x=names,
            y=names,
            customdata=m,
            text=text if n <= MAX_ANNOTATED_CLASSES else None,
            texttemplate="%{text}" if n <= MAX_ANNOTATED_CLASSES else None,
            colorscale="RdBu",
            zmid=0,
            zmin=-lim,
            zmax=lim,
            hovertemplate="true %{y}<br>predicted %{x}<br>change %{customdata:+d} images<extra></extra>",
            colorbar={
                "title": "better",
                "thickness": 12,
                "tickvals": [-lim, 0, lim],
                "ticktext": ["worse", "same", "better"],
            },
        )
    )
    fig.update_layout(
        height=max(360, min(720, 60 + 32 * n)),
        xaxis={"title": "predicted class", "tickangle": -45 if n > 6 else 0, "constrain": "domain"},
        yaxis={"title": "true class", "autorange": "reversed", "scaleanchor": "x", "constrain": "domain"},
    )
    return fig


def plot_class_f1_delta(metrics_a: pd.DataFrame, metrics_b: pd.DataFrame) -> go.Figure:
    """Per-class F1 of run A vs run B as grouped bars (which classes got better or worse)."""
    if metrics_a is None or metrics_b is None or len(metrics_a) == 0 or len(metrics_b) == 0:
        return empty_figure("No per-class metrics")
    m = metrics_a[["class", "class_name", "f1"]].merge(
        metrics_b[["class", "f1"]], on="class", suffixes=("_a", "_b"), how="outer"
    )
    fig = new_figure()
    fig.add_bar(x=m["class_name"], y=m["f1_a"], name="run A", marker_color="#95a5a6")
    fig.add_bar(x=m["class_name"], y=m["f1_b"], name="run B", marker_color="#3498db")
    fig.update_layout(
        barmode="group",
        height=300,
        yaxis={"title": "F1", "range": [0, 1]},
        legend={"orientation": "h", "y": 1.12, "x": 0},
    )
    return fig
