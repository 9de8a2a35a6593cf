"""Explain an image: upload a PNG/JPEG and see what the run's model makes of it, on the fly.

The only page that runs the model: ``xaidash.compute.pipeline.single_image`` (and with it torch) is
imported inside
the callback, so the rest of the dashboard starts without loading torch. Uploads are checked
before decoding: size limit, PNG/JPEG only, decompression bombs refused.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import warnings
from typing import TYPE_CHECKING, Any

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html, no_update
from PIL import Image, UnidentifiedImageError

from xaidash.constants import method_label
from xaidash.dashboard import figures, inputs, overlays
from xaidash.dashboard.components import (
    card,
    empty_state,
    fmt_num,
    neighbor_tile,
    no_runs_alert,
    run_methods,
    warning_alert,
)
from xaidash.dashboard.params import Filters, parse_query
from xaidash.dashboard.paths import path_label, redact, spec_label
from xaidash.dashboard.state import AppState, PageContext
from xaidash.errors import UserError

if TYPE_CHECKING:
    from xaidash.store import RunInfo

log = logging.getLogger(__name__)

PREFIX = "explain"
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000  # ~ a 7,000 x 5,700 photo; anything larger is refused before decoding
ALLOWED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG"}  # MPO: JPEGs from some cameras
#: the longest upload file name: common file systems allow 255 bytes, a browser sends no longer
MAX_FILENAME_CHARS = 255
SHOW_SIZE = 224


class UploadError(ValueError):
    """An upload we refuse; the message is shown to the user as is."""


def upload_name(filename: str | None) -> str | None:
    """The upload's file name as the page may print it, or :class:`UploadError` saying why not.

    The browser sends the name the user's file system gave the file; a script can send a name of
    any length, or one that is not valid Unicode (a lone surrogate), which no page can show.
    """
    if filename is None:
        return None
    if len(filename) > MAX_FILENAME_CHARS:
        raise UploadError(
            f"The file name is {len(filename):,} characters long, over the limit of {MAX_FILENAME_CHARS}; "
            "rename the file and upload it again."
        )
    try:
        filename.encode("utf-8")
    except UnicodeEncodeError:
        raise UploadError(
            "The file name is not valid text (it cannot be encoded as UTF-8); rename the file and "
            "upload it again."
        ) from None
    return filename


def decode_upload(contents: str | None, filename: str | None = None) -> Image.Image:
    """``dcc.Upload`` contents (a data URL) -> RGB image, or :class:`UploadError`.

    Checks, in order and before decoding pixels: base64 well-formed, size limit, recognised
    as PNG or JPEG by its bytes (not its name), pixel count (decompression bomb). Then decodes
    with compute's decoder (:func:`xaidash.compute.datasets.decoding.load_image`), so the page explains
    what ``xaidash compute`` sees in the same file: 16-bit images scaled (not clipped to white),
    EXIF orientation applied (a corrupt EXIF block ignored, not fatal), transparency on white,
    truncated files refused.
    """
    name = filename or "the file"
    if not contents or "," not in contents:
        raise UploadError("Nothing was uploaded.")
    _header, _, b64 = contents.partition(",")
    if len(b64) > (MAX_UPLOAD_BYTES * 4) // 3 + 8:
        raise UploadError(
            f"{name} is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB; upload a smaller image."
        )
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(f"{name} could not be read (malformed upload).") from None
    if len(raw) > MAX_UPLOAD_BYTES:
        raise UploadError(
            f"{name} is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB; upload a smaller image."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:  # the header only: no pixels decoded yet
                fmt, (w, h) = im.format or "", im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(f"{name} was refused as a decompression bomb (too many pixels).") from None
    except UnidentifiedImageError:
        raise UploadError(f"{name} is not an image Pillow can read; upload a PNG or JPEG.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UploadError(f"{name} could not be decoded ({exc}); is it truncated or corrupt?") from None
    if fmt not in ALLOWED_FORMATS:
        raise UploadError(f"{name} is not a PNG or JPEG image (detected: {fmt or 'unknown'}).")
    if w * h > MAX_PIXELS:
        raise UploadError(
            f"{name} is {w}×{h} = {w * h:,} pixels, over the {MAX_PIXELS:,} limit "
            "(refused as a possible decompression bomb); downscale it first."
        )
    # compute's decoder (numpy + Pillow only, no torch), imported here like compute.explain below
    from xaidash.compute.datasets.decoding import ImageLoadError, load_image

    try:
        return load_image(raw, name)
    except ImageLoadError as exc:
        why = exc.reason
        if why.startswith("cannot decode"):
            raise UploadError(f"{name} could not be decoded ({why}); is it truncated or corrupt?") from None
        # refused by compute's own limits, e.g. an aspect ratio its preprocessing would blow up
        raise UploadError(f"{name} cannot be explained: {why}.") from None


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def model_ref_of(info: RunInfo) -> dict[str, Any] | None:
    """The run's model reference (``config_json["model"]``), None when absent or unreadable."""
    try:
        ref = info.config.get("model")
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        return None
    return ref if isinstance(ref, dict) else None


def model_files(ref: dict[str, Any]) -> list[str]:
    """The server paths a model reference names (its checkpoint and weights files)."""
    return [str(ref[k]) for k in ("checkpoint", "weights") if isinstance(ref.get(k), str) and ref[k]]


def checkpoint_label(ref: dict[str, Any], show_paths: bool) -> str:
    """The model file as the page names it: the checkpoint (with its sha256 prefix) or the weights."""
    if ref.get("checkpoint"):
        sha = ref.get("sha256")
        return path_label(str(ref["checkpoint"]), show_paths, sha if isinstance(sha, str) else None)
    if ref.get("weights"):
        return path_label(str(ref["weights"]), show_paths)
    return "?"


def external_label(ref: dict[str, Any], show_paths: bool) -> str:
    """``timm:NAME``, ``hf:DIR``, ``module:FILE``, ``python:FILE.py:FUNC`` or ``python:pkg.mod:FUNC``, with
    the weights."""
    kind, _, rest = str(ref["external"]).partition(":")
    if kind in ("hf", "module"):
        shown = path_label(rest, show_paths)
    elif kind == "python" and ".py:" in rest:
        file, _, func = rest.rpartition(":")
        shown = f"{path_label(file, show_paths)}:{func}"
    else:
        shown = rest
    weights = ref.get("weights")
    extra = f" · weights {path_label(str(weights), show_paths)}" if weights and weights != "imagenet" else ""
    return f"{kind}:{shown}{extra}"


def layout(ctx: PageContext) -> Any:
    """Upload area + result container (the work happens in the callback)."""
    info = ctx.info
    ref = model_ref_of(info)
    if not ref:
        model_desc = "this run records no model reference"
    elif ref.get("external"):  # a model the user brought: its spec, paths shown as the page does
        model_desc = external_label(ref, ctx.state.show_paths)
    else:
        model_desc = (f"{spec_label(info.arch or '?', ctx.state.show_paths)} · checkpoint "
                      f"{checkpoint_label(ref, ctx.state.show_paths)}")
    upload = dcc.Upload(
        id=f"{PREFIX}-upload",
        children=html.Div(
            [
                html.Div("Drop a PNG or JPEG here, or click to choose one", className="fw-semibold"),
                html.Div(f"up to {MAX_UPLOAD_BYTES // (1024 * 1024)} MB", className="small text-muted"),
            ]
        ),
        className="xd-upload",
        multiple=False,
        accept="image/png,image/jpeg",
        max_size=MAX_UPLOAD_BYTES,
    )
    return html.Div(
        [
            warning_alert(ctx.warning),
            card(
                "Explain a new image with this run's model",
                [
                    html.P(["Model: ", html.Span(model_desc, className="text-muted")], className="small"),
                    upload,
                    html.P(
                        "Runs the model on this machine: top-3 classes, the run's maps for the predicted "
                        "class, and the most similar training images (twins).",
                        className="small text-muted mt-2 mb-0",
                    ),
                ],
            ),
            dcc.Loading(html.Div(id=f"{PREFIX}-result"), type="default"),
        ],
        id=f"{PREFIX}-page",
    )


def render_explanation(state: AppState, info: RunInfo, image: Image.Image, filename: str | None) -> Any:
    """Run ``xaidash.compute.pipeline.single_image.explain_image`` and lay out its result (or say why not)."""
    run_id = info.run_id
    ref = model_ref_of(info)
    if ref is None:
        return empty_state(
            "This run cannot explain new images",
            "Its configuration records no model reference. Recompute it with this version of xaidash.",
            color="warning",
        )
    from xaidash.compute.pipeline.single_image import explain_image  # here, not at the top: it imports torch

    try:
        ids, labels, vectors = state.data.train_embeddings(run_id)
        methods = run_methods(info)
        exp = explain_image(
            ref, image, methods=methods, train_ids=ids, train_labels=labels, train_vectors=vectors
        )
    except UserError as exc:
        return empty_state(
            "The model of this run is not available",
            [
                html.P(redact(str(exc), model_files(ref), state.show_paths)),
                html.P(
                    "Restore the checkpoint file at that path (unchanged), or compute a new run "
                    "and pick it in the navbar.",
                    className="mb-0",
                ),
            ],
            color="warning",
        )
    shown = exp.image.convert("RGB")
    base = overlays.resize_image(shown, SHOW_SIZE)
    cams = []
    for m in methods:
        if m in exp.maps:
            body: Any = html.Img(
                src=data_url(overlays.encode_png(overlays.blend(base, exp.maps[m]))), className="xd-cam-large"
            )
        else:
            body = html.Div(exp.notes.get(m, "not computed"), className="xd-cam-missing text-muted small p-2")
        note = exp.notes.get(m) if m in exp.maps else None
        if note is None and m in exp.maps and not exp.maps[m].any():
            # a constant map is all zeros after normalisation: say so, a flat overlay looks broken
            note = "all zero: no positive evidence for this class at the target layer"
        cams.append(
            dbc.Col(
                html.Div(
                    [
                        html.Div(method_label(m), className="fw-semibold small mb-1"),
                        body,
                        html.Div(note, className="small text-muted") if note else None,
                    ],
                    className="text-center",
                ),
                xs=6,
                md=3,
            )
        )
    twins = [neighbor_tile(run_id, tid, Filters(), f"sim {fmt_num(sim, 3)}") for tid, sim in exp.twins]
    pred_name = exp.topk[0][1] if exp.topk else "?"
    return html.Div(
        [
            dbc.Row(
                [
                    dbc.Col(
                        card(
                            f"Uploaded: {filename or 'image'} (as the network sees it)",
                            html.Img(
                                src=data_url(overlays.encode_png(overlays.resize_image(shown, 288))),
                                className="xd-large",
                            ),
                        ),
                        md=4,
                    ),
                    dbc.Col(
                        card(
                            "Top-3 classes",
                            dcc.Graph(
                                figure=figures.plot_topk(exp.topk[:3]), config={"displayModeBar": False}
                            ),
                        ),
                        md=8,
                    ),
                ]
            ),
            card(f"Where the model looked to predict “{pred_name}”", dbc.Row(cams, className="g-2")),
            card(
                "Twins: most similar training images of the predicted class",
                html.Div(twins, className="d-flex flex-wrap gap-3")
                if twins
                else html.P(
                    "No training embeddings in this run, so no twins.", className="text-muted small mb-0"
                ),
            ),
        ],
        id=f"{PREFIX}-output",
    )


def register_callbacks(app: dash.Dash, state: AppState) -> None:
    """Upload -> explanation (the only callback in the app that runs the model)."""

    @app.callback(
        Output(f"{PREFIX}-result", "children"),
        Input(f"{PREFIX}-upload", "contents"),
        State(f"{PREFIX}-upload", "filename"),
        State("url", "search"),
        prevent_initial_call=True,
    )
    @inputs.typed(inputs.text(max_len=None), inputs.raw_text(), inputs.URL_PART)
    def on_upload(contents: str | None, filename: str | None, search: str | None) -> Any:
        if not contents:
            return no_update
        info = state.data.resolve_run(parse_query(search).run).info
        if info is None:
            return no_runs_alert(state.store_label)
        try:
            name = upload_name(filename)
            image = decode_upload(contents, name)
        except UploadError as exc:
            return dbc.Alert(str(exc), color="danger", id=f"{PREFIX}-error")
        try:
            return render_explanation(state, info, image, name)
        except Exception as exc:
            log.exception("explaining an uploaded image failed")
            ref = model_ref_of(info)
            why = redact(f"{type(exc).__name__}: {exc}", model_files(ref) if ref else [], state.show_paths)
            return dbc.Alert(
                f"Explaining the image failed: {why}",
                color="danger",
                id=f"{PREFIX}-error",
            )
