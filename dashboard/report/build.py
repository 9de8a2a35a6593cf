"""The self-contained run report: one HTML file a reviewer can mail, attach to a model card or keep
with a release, that opens offline and makes no network request.

Its sections are the overview's own blocks (rendered to static HTML by
:mod:`xaidash.dashboard.report.static_html`) plus the most confident errors with their maps and
twins:

* ``run``: model, data, device, precision and its measured deviation;
* ``metrics``: headline numbers, confusion matrix, confidence histogram, per-class table;
* ``calibration``: reliability diagram, ECE / MCE, top-k, ROC / PR per class;
* ``faithfulness``: which method to trust (the ranking card), faithfulness and cost per method;
* ``trust``: sanity check, baselines, ROAD, localisation;
* ``quality``: likely label errors, leaks, outliers;
* ``errors``: the N most confident errors, each with its four maps and its twins.

Everything is inlined: the Bootstrap theme CSS (its font imports stripped, see
:mod:`xaidash.dashboard.theme`), one copy of plotly.js, and every image as a ``data:`` URI.
Plotly figures stay interactive: one plotly.js (4.8 MB) is smaller than static images of every
figure would be at a readable resolution, and needs no image renderer installed.
"""

from __future__ import annotations

import base64
import html as html_lib
import io
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dash_bootstrap_components as dbc
from dash import html
from PIL import Image

import xaidash
from xaidash.constants import METHODS, method_label
from xaidash.dashboard import figures
from xaidash.dashboard.components import card, empty_state
from xaidash.dashboard.data import DashData, SelectionStore
from xaidash.dashboard.overlays import DEFAULT_CMAP, blend, colorize, decode_image, resize_image, upsample_map
from xaidash.dashboard.pages.overview import trust as overview_trust
from xaidash.dashboard.pages.overview.page import class_table, faithfulness_block, headline_cards
from xaidash.dashboard.pages.overview.quality import accuracy_without_leaks, quality_card
from xaidash.dashboard.pages.overview.ranking import ranking_section
from xaidash.dashboard.pages.overview.recommendation import recommendation_card
from xaidash.dashboard.params import Filters
from xaidash.dashboard.paths import path_label, spec_label
from xaidash.dashboard.report.pdf import html_to_pdf
from xaidash.dashboard.report.static_html import Renderer
from xaidash.dashboard.state import AppState, PageContext
from xaidash.dashboard.theme import THEME, theme_css
from xaidash.errors import UserError
from xaidash.store import GalleryQuery
from xaidash.store.export import check_out, resolve_run, write_atomic

if TYPE_CHECKING:
    from xaidash.store import RunInfo, StoreReader

#: The errors section's default length (the issue's N).
TOP_ERRORS = 24
MAX_TOP_ERRORS = 500
#: Section ids in order; the tests check that every one is present.
SECTIONS: tuple[str, ...] = ("run", "metrics", "calibration", "faithfulness", "trust", "quality", "errors")
OVERLAY_PX = 112
JPEG_QUALITY = 85

_REPORT_CSS = """
body{background:#f5f6f7}
.xd-report{max-width:1280px;margin:0 auto;padding:1.5rem}
.xd-report section{margin-bottom:2rem}
.xd-report h2{font-size:1.35rem;margin:1.5rem 0 .75rem;border-bottom:1px solid #dee2e6;padding-bottom:.3rem}
.xd-report nav a{margin-right:1rem}
.xd-error{display:flex;gap:1rem;align-items:flex-start;padding:.75rem 0;border-bottom:1px solid #e5e8ea}
.xd-error figure{margin:0;text-align:center;font-size:.75rem}
.xd-error img{display:block;border-radius:4px;image-rendering:auto}
.xd-twins{display:flex;gap:.4rem;flex-wrap:wrap}
.xd-error-caption{flex:0 0 24rem}
.xd-kv th{width:14rem;font-weight:600}
@media print{.xd-report nav{display:none}.card{break-inside:avoid}}
"""


@dataclass(frozen=True)
class Report:
    """A built report: the HTML and what went into it."""

    html: str
    run_id: str
    sections: tuple[str, ...]
    errors_shown: int
    seconds: float


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _mime(data: bytes) -> str:
    return "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"


def run_header(info: RunInfo, show_paths: bool = False) -> Any:
    """Model, data, device, precision and its deviation, as a key/value table (the checkpoint and
    the data by name unless ``show_paths``: a report travels further than the server's pages)."""
    model = info.config.get("model")
    spec = model.get("spec") or model.get("arch") if isinstance(model, dict) else None
    precision = info.precision
    prec = str(precision.get("precision") or "fp32")
    if precision.get("tf32") is not None:
        prec += f", TF32 {'on' if precision.get('tf32') else 'off'}"
    rows: list[tuple[str, Any]] = [
        ("Run", info.run_id),
        ("Created", info.created.strftime("%Y-%m-%d %H:%M UTC")),
        ("Model", spec_label(info.arch or "?", show_paths)
         + (f" ({spec_label(str(spec), show_paths)})" if spec and spec != info.arch else "")),
        (
            "Checkpoint",
            path_label(info.checkpoint_path, show_paths, info.checkpoint_sha256)
            if info.checkpoint_path
            else "—",
        ),
        ("Target layer", info.target_layer or "—"),
        (
            "Data",
            f"{spec_label(info.dataset_spec or '?', show_paths)} · {int(info.num_val or 0):,} val images, "
            f"{int(info.num_train or 0):,} train (reference) images, {int(info.num_failed or 0):,} failed",
        ),
        (
            "Classes",
            f"{len(info.class_names)}: "
            + ", ".join(info.class_names[:20])
            + (" …" if len(info.class_names) > 20 else ""),
        ),
        ("Methods", ", ".join(method_label(m) for m in info.methods)),
        ("Device", info.device or "?"),
        ("Precision", prec),
        (
            "Measured deviation",
            info.precision_note or ("none: fp32 throughout" if prec.startswith("fp32") else "not measured"),
        ),
        ("Versions", ", ".join(f"{k} {v}" for k, v in sorted(info.versions.items()))),
    ]
    if info.scorecam_note:
        rows.append(("Score-CAM", info.scorecam_note))
    table = html.Table(
        html.Tbody([html.Tr([html.Th(k), html.Td(v)]) for k, v in rows]),
        className="table table-sm xd-kv mb-0",
    )
    return card("Model, data and device", table, id="report-run-card")


def errors_section(data: DashData, info: RunInfo, n: int) -> tuple[Any, int]:
    """The ``n`` most confident errors: the image, its map per method and its twins."""
    run_id = info.run_id
    if not info.labeled:
        return empty_state("Unlabeled run", "Without labels there are no errors to show."), 0
    page, total = data.gallery(
        run_id,
        GalleryQuery(
            outcome="wrong", sort="confidence", descending=True, page_size=max(1, min(n, MAX_TOP_ERRORS))
        ),
    )
    if n <= 0 or not len(page):
        return html.P("No errors in this run." if not total else "No errors requested (--errors 0)."), 0
    ids = [str(i) for i in page["image_id"]]
    methods = [m for m in METHODS if m in info.methods]
    reader = data.reader
    maps = reader.cams_batch(run_id, ids, methods)
    twins = {i: reader.neighbors(run_id, i) for i in ids}
    want = set(ids) | {str(t) for df in twins.values() for t in df["neighbor_id"]}
    thumbs = reader.thumbnails(run_id, sorted(want))
    items = []
    for rec in page.to_dict("records"):
        iid = str(rec["image_id"])
        thumb = thumbs.get(iid)
        figs: list[Any] = []
        if thumb:
            figs.append(_figure(_data_uri(thumb, _mime(thumb)), "image", OVERLAY_PX))
        for m in methods:
            cam = maps.get((iid, m))
            if cam is None:
                continue
            figs.append(
                _figure(_data_uri(overlay_jpeg(thumb, cam), "image/jpeg"), method_label(m), OVERLAY_PX)
            )
        tw = twins[iid]
        tw = tw[tw["kind"] == "twin"]
        twin_figs = [
            _figure(
                _data_uri(thumbs[str(t["neighbor_id"])], _mime(thumbs[str(t["neighbor_id"])])),
                f"{t['neighbor_class_name'] or ''} {float(t['similarity']):.2f}",
                56,
            )
            for t in tw.to_dict("records")
            if str(t["neighbor_id"]) in thumbs
        ]
        caption = html.Div(
            [
                html.B(f"true {rec['label_name']} → predicted {rec['pred_name']}"),
                html.Div(f"confidence {float(rec['confidence']):.3f}", className="small"),
                html.Div(iid, className="small text-muted"),
                html.Div(
                    "Twins (nearest train images of the predicted class, cosine):", className="small mt-2"
                )
                if twin_figs
                else None,
                html.Div(twin_figs, className="xd-twins"),
            ],
            className="xd-error-caption",
        )
        items.append(html.Div([caption, html.Div(figs, className="xd-twins")], className="xd-error"))
    intro = html.P(
        f"The {len(items)} most confident of {total:,} errors (highest confidence first): the "
        "image, each method's map of the predicted class, and the twins that the prediction "
        "resembles.",
        className="small text-muted",
    )
    return card(f"The {len(items)} most confident errors", [intro, *items], id="report-errors"), len(items)


def overlay_jpeg(thumbnail: bytes | None, cam: Any, px: int = OVERLAY_PX) -> bytes:
    """The map over the image (or alone, without a thumbnail) as a JPEG: a fifth of the PNG's
    bytes for these photographic overlays (measured: 24 errors x 4 maps 2.4 MB as PNG)."""
    if thumbnail:
        img = blend(resize_image(decode_image(thumbnail), px), cam)
    else:
        img = Image.fromarray(colorize(upsample_map(cam, px, px), DEFAULT_CMAP), mode="RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _figure(src: str, caption: str, px: int) -> Any:
    return html.Figure(
        [
            html.Img(src=src, alt=caption, style={"width": f"{px}px", "height": f"{px}px"}),
            html.Figcaption(caption),
        ]
    )


def _section(sid: str, title: str, body: Any, renderer: Renderer) -> str:
    return f'<section id="section-{sid}"><h2>{html_lib.escape(title)}</h2>{renderer.render(body)}</section>'


def _xaidash_css() -> str:
    return files("xaidash.assets").joinpath("xaidash.css").read_text(encoding="utf-8")


def build_report(
    reader: StoreReader, run: str | None = "latest", top_errors: int = TOP_ERRORS, show_paths: bool = False
) -> Report:
    """Build the report of ``run`` (an id or ``latest``) in the store ``reader`` reads."""
    t0 = time.perf_counter()
    if not 0 <= int(top_errors) <= MAX_TOP_ERRORS:
        raise UserError(f"the number of errors must be between 0 and {MAX_TOP_ERRORS}, got {top_errors}")
    info = resolve_run(reader, run)
    run_id = info.run_id
    data = DashData(reader)
    ctx = PageContext(
        AppState(data=data, selections=SelectionStore(), store_path=str(reader.path), show_paths=show_paths),
        Filters(run=run_id),
        info,
    )
    f = ctx.filters
    h = data.headline(run_id)
    labeled = info.labeled and h.get("accuracy") is not None
    quality = data.quality.quality_summary(run_id)
    r = Renderer()
    parts: list[str] = [_section("run", "Run", run_header(info, show_paths), r)]

    metrics: list[Any] = [headline_cards(h, f, labeled, accuracy_without_leaks(quality))]
    if labeled:
        metrics.append(
            dbc.Row(
                [
                    dbc.Col(
                        card(
                            "Confusion matrix",
                            _graph(figures.plot_confusion(data.confusion(run_id), info.class_names)),
                        ),
                        lg=7,
                    ),
                    dbc.Col(
                        [
                            card(
                                "Confidence: correct vs wrong",
                                _graph(figures.plot_confidence_histogram(data.confidence_histogram(run_id))),
                            ),
                            card("Per-class metrics", class_table(data.class_metrics(run_id), f)),
                        ],
                        lg=5,
                    ),
                ]
            )
        )
    else:
        metrics.append(empty_state("Unlabeled run", "No accuracy, confusion matrix or per-class metrics."))
    parts.append(_section("metrics", "Headline metrics", metrics, r))

    ranking = ranking_section(reader.ranking, run_id, info.class_names)
    parts.append(
        _section(
            "calibration",
            "Calibration and ranking",
            ranking
            or empty_state(
                "No calibration or ranking scores",
                "This run was computed before they existed, or is unlabeled.",
            ),
            r,
        )
    )

    summary = data.faithfulness_summary(run_id)
    method_ranking = reader.ranking.method_ranking(run_id)
    parts.append(
        _section(
            "faithfulness",
            "Which method should I trust? Faithfulness and cost per method",
            [
                recommendation_card(reader.ranking.method_stats(run_id), method_ranking, len(summary) > 0),
                *faithfulness_block(summary, _method_cost(info), method_ranking),
                overview_trust.trust_cost(info),
            ],
            r,
        )
    )
    trust = overview_trust.trust_sections(ctx)
    parts.append(
        _section(
            "trust",
            "Trust verdicts: sanity check, baselines, ROAD, localisation",
            trust
            or empty_state(
                "No trust checks in this run",
                "Computed without the sanity check, baselines, ROAD and localisation.",
            ),
            r,
        )
    )
    parts.append(
        _section(
            "quality",
            "Data quality",
            quality_card(ctx, info, f, quality)
            or empty_state(
                "No data-quality table",
                "This run was computed before label issues, leaks and outliers existed.",
            ),
            r,
        )
    )
    errors, shown = errors_section(data, info, int(top_errors))
    parts.append(_section("errors", "Most confident errors", errors, r))

    doc = _page(info, "".join(parts), show_paths)
    return Report(doc, run_id, SECTIONS, shown, time.perf_counter() - t0)


def _graph(fig: Any) -> Any:
    from dash import dcc

    return dcc.Graph(figure=fig)


def _method_cost(info: RunInfo) -> dict[str, float]:
    cost = info.timings.get("method_ms_per_image")
    return {str(k): float(v) for k, v in cost.items()} if isinstance(cost, dict) else {}


def _page(info: RunInfo, body: str, show_paths: bool) -> str:
    from plotly.offline import get_plotlyjs

    css = theme_css(THEME)[0].decode("utf-8") + _xaidash_css() + _REPORT_CSS
    spec = spec_label(info.dataset_spec or "", show_paths)
    title = f"xaidash report · {spec} · {spec_label(info.arch or '', show_paths)} · run {info.run_id}"
    nav = " ".join(f'<a href="#section-{s}">{s}</a>' for s in SECTIONS)
    # </script> cannot occur inside plotly.js's source, but guard the inline copy anyway
    plotly_js = get_plotlyjs().replace("</script", "<\\/script")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # the page may load nothing from anywhere but itself: a CSP that says so, to the browser
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline' 'unsafe-eval'; font-src data:\">"
        f"<title>{html_lib.escape(title)}</title><style>{css}</style>"
        f"<script>{plotly_js}</script></head>"
        f'<body><div class="xd-report"><h1 class="h3">{html_lib.escape(title)}</h1>'
        f'<p class="small text-muted">Written by xaidash {xaidash.__version__}; '
        "self-contained, opens offline.</p>"
        f'<nav class="small mb-3">{nav}</nav>{body}</div></body></html>\n'
    )


def write_report(
    reader: StoreReader,
    run: str | None,
    out: Path,
    pdf: bool = False,
    top_errors: int = TOP_ERRORS,
    show_paths: bool = False,
) -> list[Path]:
    """Build the report and write it to ``out`` (atomically) and, with ``pdf``, print it to ``out``
    with the suffix ``.pdf``; returns the paths written. The output is checked before the work."""
    check_out(out)
    report = build_report(reader, run, top_errors=top_errors, show_paths=show_paths)
    data = report.html.encode("utf-8")
    write_atomic(out, lambda tmp: Path(tmp).write_bytes(data))
    written = [out]
    if pdf:
        pdf_path = out.with_suffix(".pdf")
        html_to_pdf(out, pdf_path)
        written.append(pdf_path)
    return written
