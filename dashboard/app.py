"""The Dash application: navbar, URL router and page registration.

The URL is the single source of truth: every control writes the query string, and the router
re-renders the page from the (validated) query. So every view is a shareable link, the back
button works, and pages are plain functions ``layout(PageContext) -> children`` that unit tests
call directly. Callbacks are registered per app (not with the global ``dash.callback``) so
several apps can live in one process (tests).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html, no_update
from plotly.io.json import to_json_plotly

import xaidash.assets
from xaidash.dashboard import theme
from xaidash.dashboard.components import no_runs_alert, run_label
from xaidash.dashboard.data import DashData, ResolvedRun, SelectionStore
from xaidash.dashboard.inputs import URL_PART, anything, record, text, typed
from xaidash.dashboard.pages import explain
from xaidash.dashboard.pages.compare import page as compare
from xaidash.dashboard.pages.embedding import page as embedding
from xaidash.dashboard.pages.gallery import page as gallery
from xaidash.dashboard.pages.gallery import quality as gallery_quality
from xaidash.dashboard.pages.image import page as image
from xaidash.dashboard.pages.overview import page as overview
from xaidash.dashboard.params import Filters, parse_query, qs_of, to_query, valid_run_id
from xaidash.dashboard.report import downloads
from xaidash.dashboard.server import guard
from xaidash.dashboard.server.routes import register_routes
from xaidash.dashboard.state import AppState, CachedPage, PageContext
from xaidash.dashboard.url_sync import controls_to_url
from xaidash.store import open_store

if TYPE_CHECKING:
    from xaidash.store import StoreReader

log = logging.getLogger(__name__)

ASSETS_DIR = Path(xaidash.assets.__file__).resolve().parent

# (module, path, nav label); the image page has no nav entry (opened from the other pages).
PAGES: tuple[tuple[ModuleType, str, str | None], ...] = (
    (overview, "/", "Overview"),
    (gallery, "/gallery", "Gallery"),
    (embedding, "/embedding", "Embedding map"),
    (compare, "/compare", "Compare runs"),
    (explain, "/explain", "Explain an image"),
    (image, "/image", None),
)
NAV_ITEMS = [(path, label) for _, path, label in PAGES if label]


#: the id of the alert a page that failed to render shows (such a page is never cached)
RENDER_FAILED = "page-render-failed"


def safe_render(fn: Callable[[PageContext], Any], ctx: PageContext) -> Any:
    """Render a page; an unexpected error becomes an alert, never a traceback in the page."""
    try:
        return fn(ctx)
    except Exception as exc:
        log.exception("error rendering page")
        return dbc.Alert(
            [
                html.H5("This view could not be rendered", className="alert-heading"),
                html.P(f"{type(exc).__name__}: {exc}"),
                html.P(
                    "The details are in the server log. Try another run or reset the filters.",
                    className="mb-0",
                ),
            ],
            color="danger",
            id=RENDER_FAILED,
        )


def navbar() -> dbc.Navbar:
    """Logo, page links and the run picker."""
    links = [
        dbc.NavItem(dbc.NavLink(label, href=path, id=f"nav-link-{i}", active="exact"))
        for i, (path, label) in enumerate(NAV_ITEMS)
    ]
    return dbc.Navbar(
        dbc.Container(
            [
                dcc.Link(
                    html.Div(
                        [
                            html.Img(src="/assets/logo.svg", height="30", className="me-2"),
                            html.Span("xaidash"),
                        ],
                        className="d-flex align-items-center navbar-brand",
                    ),
                    href="/",
                    id="nav-brand",
                    className="text-decoration-none",
                ),
                dbc.NavbarToggler(id="nav-toggler"),
                dbc.Collapse(
                    [
                        dbc.Nav(links, navbar=True, className="me-auto"),
                        html.Div(
                            [
                                html.Span("Run", className="text-white-50 small me-2"),
                                dcc.Dropdown(
                                    id="nav-run",
                                    clearable=False,
                                    searchable=True,
                                    placeholder="no runs",
                                    className="xd-run-picker",
                                ),
                            ],
                            className="d-flex align-items-center",
                        ),
                    ],
                    id="nav-collapse",
                    navbar=True,
                ),
            ],
            fluid=True,
        ),
        color="primary",
        dark=True,
        className="mb-3 xd-navbar",
        id="navbar",
    )


def run_options(state: AppState) -> list[dict[str, str]]:
    """Run picker entries: newest first, labelled with date, dataset, model and accuracy.

    Sent with every page, so kept per list of runs (runs are immutable; a new or deleted run
    changes the key)."""
    runs = state.data.runs()

    def build() -> list[dict[str, str]]:
        recs = runs.to_dict("records") if len(runs) else []
        return [{"label": run_label(rec, state.show_paths), "value": str(rec["run_id"])} for rec in recs]

    key = ("run_options", *(str(r) for r in runs["run_id"])) if len(runs) else ("run_options",)
    hit, cached = state.pages.lookup(key)
    if hit and cached is not None:
        return cast(list[dict[str, str]], json.loads(cached.text))
    options = build()
    state.pages.put(key, CachedPage(json.dumps(options), ()))
    return options


def render(state: AppState, pathname: str | None, search: str | None) -> Any:
    """The page for a URL (plain function: unit tests call it without a browser)."""
    filters = parse_query(search)
    return render_page(state, pathname, filters, state.data.resolve_run(filters.run))


def render_page(
    state: AppState,
    pathname: str | None,
    filters: Filters,
    resolved: ResolvedRun,
    effects: list[Callable[[], None]] | None = None,
) -> Any:
    """The page at ``pathname`` for an already parsed URL and resolved run (``effects`` collects
    what the render did besides building the page, see :meth:`PageContext.effect`)."""
    path = (pathname or "/").rstrip("/") or "/"
    layout = next((module.layout for module, page_path, _ in PAGES if path == page_path), None)
    if layout is None:
        return dbc.Alert(
            [html.H5("Page not found", className="alert-heading"), dcc.Link("Go to the overview", href="/")],
            color="warning",
            id="page-not-found",
        )
    if resolved.info is None:
        return no_runs_alert(state.store_label)
    ctx = PageContext(state, replace(filters, run=resolved.info.run_id), resolved.info, resolved.warning,
                      effects if effects is not None else [])
    return safe_render(layout, ctx)


# Query keys that a page's own callbacks update in place: a URL change touching only these
# does not re-render the page.
SOFT_KEYS: dict[str, frozenset[str]] = {"/embedding": frozenset({"id"})}


def is_soft_change(rendered: dict[str, Any] | None, pathname: str | None, search: str | None) -> bool:
    """True when the URL differs from the rendered one only in the page's soft keys."""
    if not rendered or rendered.get("path") != pathname or not isinstance(pathname, str):
        return False
    soft = SOFT_KEYS.get((pathname or "/").rstrip("/") or "/")
    if not soft:
        return False
    old, new = qs_of(rendered.get("search")), qs_of(search)
    if old == new:
        return False
    keys = set(old) | set(new)
    return all(k in soft for k in keys if old.get(k) != new.get(k))


def callback_failed(exc: Exception) -> None:
    """Last resort for an exception a callback did not handle: logged, answered "no update".

    Callbacks validate what they receive (:mod:`xaidash.dashboard.inputs`), so this runs only
    for a bug; the browser keeps its view instead of getting a 500 (the tests check that it
    never runs for any input).
    """
    log.error("callback %s failed", dash.callback_context.outputs_list, exc_info=exc)
    return None


#: pages whose render depends on more than the URL and the store's runs: the explain page looks
#: at the checkpoint file on disk (moved or changed since the run)
UNCACHED_PAGES = frozenset({"/explain"})


def cached_page(state: AppState, pathname: str | None, filters: Filters, resolved: ResolvedRun) -> Any:
    """:func:`render_page` as the router sends it, from the page cache when it was rendered before.

    Runs are immutable, so a page is a function of its URL and of which runs the store holds (the
    navbar, the compare page and an image's history list them): both are the key. The cached
    value is the page as JSON-ready dicts, so serving it again costs neither the render nor Dash's
    walk over the component tree; the effects of the render (the gallery's prefetch of its maps)
    are done again. Not cached: a page that failed to render, a selection (``sel=``: the server
    may drop it), the pages in :data:`UNCACHED_PAGES`, and the empty store's alert.
    """
    path = (pathname or "/").rstrip("/") or "/"
    if path in UNCACHED_PAGES or filters.sel is not None or resolved.info is None:
        return render_page(state, pathname, filters, resolved)
    key = ("page", path, to_query(filters), resolved.run_id, resolved.warning, *state.data.run_ids())
    hit, cached = state.pages.lookup(key)
    if hit and cached is not None:
        for effect in cached.effects:
            effect()
        return json.loads(cached.text)
    effects: list[Callable[[], None]] = []
    content = render_page(state, pathname, filters, resolved, effects)
    if getattr(content, "id", None) == RENDER_FAILED:
        return content
    text = to_json_plotly(content)  # what Dash would send
    state.pages.put(key, CachedPage(text, tuple(effects)))
    return json.loads(text)


def create_app(
    store_path: str | Path,
    reader: StoreReader | None = None,
    selections_dir: str | Path | None = None,
    show_paths: bool = False,
) -> dash.Dash:
    """Build the dashboard over the store at ``store_path``.

    ``reader`` may be passed to share one; otherwise ``open_store`` is called. Pages name the
    store, checkpoints and image folders without their absolute paths unless ``show_paths``.
    """
    if reader is None:
        reader = open_store(store_path)
    state = AppState(
        data=DashData(reader),
        selections=SelectionStore(selections_dir),
        store_path=str(store_path),
        show_paths=show_paths,
    )
    # The latest run's light columns and gallery index are read in the background (Arrow and
    # numpy only, ~1 s at 1M images), so the first gallery or image page does not wait for them.
    latest = reader.latest_run_id()
    if latest is not None:
        threading.Thread(target=reader.warm_light, args=(latest,), name="xaidash-warm", daemon=True).start()
    tmpl = theme.figure_template()
    log.debug("figure template %s", tmpl)

    app = dash.Dash(
        __name__,
        title="xaidash",
        assets_folder=str(ASSETS_DIR),
        # Served by our own route from the bootstrap-flask package: works offline.
        external_stylesheets=[theme.CSS_ROUTE.format(name=theme.THEME)],
        suppress_callback_exceptions=True,  # page components appear only after routing
        serve_locally=True,
        update_title="",  # keep the tab title while callbacks run
        on_error=callback_failed,
    )
    app.layout = html.Div(
        [
            dcc.Location(id="url", refresh="callback-nav"),
            dcc.Store(id="rendered"),
            navbar(),
            dbc.Container(
                dcc.Loading(html.Div(id="page-content"), type="default", delay_show=400),
                fluid=True,
                className="xd-main",
            ),
            html.Footer(
                html.Small(f"store: {state.store_label}", className="text-muted", id="footer-store"),
                className="container-fluid py-3",
            ),
        ]
    )
    app.server.config["XAIDASH_STATE"] = state
    guard.install(app)  # request-size limit; malformed callback requests answer 400
    register_routes(app.server, state.data)

    nav_outputs = [Output(f"nav-link-{i}", "href") for i in range(len(NAV_ITEMS))]

    @app.callback(
        Output("page-content", "children"),
        Output("nav-run", "options"),
        Output("nav-run", "value"),
        Output("rendered", "data"),
        *nav_outputs,
        Input("url", "pathname"),
        Input("url", "search"),
        State("rendered", "data"),
    )
    @typed(URL_PART, URL_PART, record())
    def route(pathname: str | None, search: str | None, rendered: dict[str, Any] | None) -> tuple[Any, ...]:
        if is_soft_change(rendered, pathname, search):
            # The page already shows this state (e.g. a pinned point written to the URL by the
            # embedding map's own callback): keep the URL shareable without a re-render.
            return (no_update,) * (4 + len(NAV_ITEMS))
        filters = parse_query(search)
        resolved = state.data.resolve_run(filters.run)
        content = cached_page(state, pathname, filters, resolved)
        run_q = "?" + urlencode({"run": resolved.run_id}) if resolved.run_id else ""
        hrefs = [path + run_q for path, _ in NAV_ITEMS]
        return (content, run_options(state), resolved.run_id, {"path": pathname, "search": search}, *hrefs)

    def pick_run(search: str | None, _trigger: object, run_id: str | None) -> str | None:
        """Switching run keeps the page but resets page-specific selections."""
        if valid_run_id(run_id) is None or run_id == state.data.resolve_run(parse_query(search).run).run_id:
            return None
        qs = qs_of(search)
        keep = {k: v[0] for k, v in qs.items() if k in ("cmap", "alpha", "color", "norm", "method", "sort")}
        return "?" + urlencode({"run": run_id, **keep})

    controls_to_url(app, [("nav-run", "value", text())], pick_run)

    @app.callback(
        Output("nav-collapse", "is_open"),
        Input("nav-toggler", "n_clicks"),
        State("nav-collapse", "is_open"),
        prevent_initial_call=True,
    )
    @typed(anything(), anything())
    def toggle_nav(n: object, is_open: object) -> bool:
        return not is_open

    for module, _, _ in PAGES:
        module.register_callbacks(app, state)
    gallery_quality.register_callbacks(app, state)  # the gallery's data-quality filter
    downloads.register_callbacks(app, state)  # "Download report" (overview), "Download" (gallery)
    return app
