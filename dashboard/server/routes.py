"""Flask routes on the Dash server: theme CSS, thumbnails and CAM overlays.

Every path segment from the client is validated against a regex or allow-list before use;
the client never names a file. Runs are immutable, so image responses carry a long
``Cache-Control`` and an ``ETag`` derived from everything that determines the pixels.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import Flask, Response, abort, request

from xaidash.constants import ATTRIBUTION_METHODS, IMAGE_ID_RE, METHODS, RUN_ID_RE, TARGET_KINDS
from xaidash.dashboard import overlays, theme

if TYPE_CHECKING:
    from xaidash.dashboard.data import DashData

log = logging.getLogger(__name__)

Renderer = Callable[[], "tuple[bytes, str] | None"]

ONE_YEAR = 365 * 24 * 3600


def overlay_url(
    run_id: str,
    image_id: str,
    method: str,
    target: str = "pred",
    cmap: str = overlays.DEFAULT_CMAP,
    alpha: float = overlays.DEFAULT_ALPHA,
    size: int | None = None,
) -> str:
    """URL of one overlay PNG (defaults omitted so identical overlays share one cache entry)."""
    q = []
    if target != "pred":
        q.append(f"target={target}")
    if cmap != overlays.DEFAULT_CMAP:
        q.append(f"cmap={cmap}")
    if alpha != overlays.DEFAULT_ALPHA:
        q.append(f"alpha={alpha:g}")
    if size is not None:
        q.append(f"size={size}")
    return f"/overlay/{run_id}/{image_id}/{method}.png" + ("?" + "&".join(q) if q else "")


def image_url(run_id: str, image_id: str, size: int | None = None) -> str:
    """URL of an image's thumbnail (optionally rescaled so its longer side is ``size``)."""
    return f"/img/{run_id}/{image_id}.png" + (f"?size={size}" if size else "")


def _etag(*parts: object) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:20]


def _image_response(data: bytes | None, mime: str, etag: str) -> Response:
    """A cacheable image response; ``data`` None answers 304 (the client has this ETag)."""
    resp = Response(status=304) if data is None else Response(data, mimetype=mime)
    resp.set_etag(etag)
    resp.headers["Cache-Control"] = f"public, max-age={ONE_YEAR}, immutable"
    return resp


def register_routes(
    server: Flask, data: DashData, cache: overlays.BytesLRU | None = None
) -> overlays.BytesLRU:
    """Attach the theme, thumbnail and overlay routes to ``server``; returns the PNG cache."""
    png_cache = cache if cache is not None else overlays.BytesLRU()

    @server.route("/_xaidash/theme/<name>.css")
    def theme_css(name: str) -> Response:
        try:
            css, etag = theme.theme_css(name)
        except (KeyError, OSError):
            abort(404)
        resp = Response(status=304) if etag in request.if_none_match else Response(css, mimetype="text/css")
        resp.set_etag(etag)
        resp.headers["Cache-Control"] = "public, max-age=86400"
        return resp

    def serve(key: tuple[object, ...], render: Renderer, what: str) -> Response:
        """The image under ``key``: 304 when the client has it, else from the PNG cache or rendered.

        A missing or unreadable run, map or thumbnail is a 404, never a 500 (and not cached).
        """
        etag = _etag(*key)
        if etag in request.if_none_match:
            return _image_response(None, "image/png", etag)

        def guarded() -> tuple[bytes, str] | None:
            try:
                return render()
            except Exception:  # an unreadable run/file, a run deleted meanwhile, a corrupt PNG
                log.warning("could not render %s", what, exc_info=True)
                return None

        out = png_cache.get_or_render(key, guarded)
        if out is None:
            abort(404)
        return _image_response(out[0], out[1], etag)

    @server.route("/img/<run_id>/<image_id>.png")
    def thumbnail(run_id: str, image_id: str) -> Response:
        if not RUN_ID_RE.match(run_id) or not IMAGE_ID_RE.match(image_id):
            abort(404)
        size = overlays.parse_size(request.args.get("size"))

        def render() -> tuple[bytes, str] | None:
            thumb = data.thumbnail(run_id, image_id)
            if thumb is None:
                return None
            return overlays.render_resized(thumb, size)

        return serve(("img", run_id, image_id, size), render, f"thumbnail {run_id}/{image_id}")

    @server.route("/overlay/<run_id>/<image_id>/<method>.png")
    def overlay(run_id: str, image_id: str, method: str) -> Response:
        known = method in METHODS or method in ATTRIBUTION_METHODS  # CAMs and the sampled attributions
        if not RUN_ID_RE.match(run_id) or not IMAGE_ID_RE.match(image_id) or not known:
            abort(404)
        target = request.args.get("target", "pred")
        if target not in TARGET_KINDS:
            abort(404)
        cmap = overlays.parse_cmap(request.args.get("cmap"))
        alpha = overlays.parse_alpha(request.args.get("alpha"))
        size = overlays.parse_size(request.args.get("size"))

        def render() -> tuple[bytes, str] | None:
            cam = data.cam(run_id, image_id, method, target)
            if cam is None:
                return None
            thumb = data.thumbnail(run_id, image_id)
            if thumb is None:  # no thumbnail stored: show the heatmap alone
                return overlays.render_heatmap(cam, cmap, size or 96), "image/png"
            return overlays.render_overlay(thumb, cam, cmap, alpha, size), "image/png"

        key = ("ov", run_id, image_id, method, target, cmap, alpha, size)
        return serve(key, render, f"overlay {run_id}/{image_id}/{method}")

    return png_cache
