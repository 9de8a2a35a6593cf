"""What a callback receives from the browser, typed: one coercion per kind of component value.

Dash hands a callback whatever JSON the request carried. The browser sends a dropdown's value as
a number or a string and the URL's ``search`` as a string; a script can send a list, an object,
``NaN`` or ``true`` instead, and none of it may become a 500. Two layers answer it:

- :mod:`xaidash.dashboard.guard` checks the request's shape before Dash reads it (400 when it is
  not a callback request of this app);
- here, every callback declares the kind of each argument with :func:`typed`. A value of the
  wrong *type* (one no component of the page could hold) makes the callback answer "no update"
  (HTTP 204): it is not a user action we understand. A value of the right type but outside the
  allowed range or set is left to the URL parser (:mod:`xaidash.dashboard.params`), which
  defaults it exactly as it defaults a hand-typed query string.

Plotly events (hover, click, selection) are objects of many optional parts; callbacks read them
with the total helpers at the bottom (:func:`first_point`, :func:`numbers`), which return None
instead of raising on anything unexpected.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from dash import no_update

#: the longest string a control value (not an upload) may be: a URL's query string is far shorter
MAX_TEXT = 8192
#: the most items a list-valued control (checklist, range slider, lasso polygon) may carry
MAX_ITEMS = 100_000


class Invalid(ValueError):
    """A callback argument of a type its component never sends."""


Coercer = Callable[[object], Any]


def text(max_len: int | None = MAX_TEXT) -> Coercer:
    """None, or a string of at most ``max_len`` characters (``None``: unbounded, e.g. an upload).

    The string must be valid Unicode: JSON can carry a lone surrogate (``"\\ud800"``), which no
    component holds and which would fail later, when a URL or a page is encoded as UTF-8.
    """

    def coerce(value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or (max_len is not None and len(value) > max_len):
            raise Invalid(f"expected a string, got {type(value).__name__}")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Invalid("a string with a lone surrogate") from None
        return value

    return coerce


def raw_text() -> Coercer:
    """None, or a string of any length and content, for a value whose problems the callback
    explains to the user itself (an upload's file name) instead of ignoring the event."""

    def coerce(value: object) -> str | None:
        if value is not None and not isinstance(value, str):
            raise Invalid(f"expected a string, got {type(value).__name__}")
        return value

    return coerce


def integer() -> Coercer:
    """None, or an integer (a JSON number with no fraction; ``true``/``false`` are not numbers)."""

    def coerce(value: object) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool):
            raise Invalid("expected an integer, got a boolean")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():  # NaN and infinities are not
            return int(value)
        raise Invalid(f"expected an integer, got {type(value).__name__}")

    return coerce


def number() -> Coercer:
    """None, or a finite number as a float."""

    def coerce(value: object) -> float | None:
        if value is None:
            return None
        f = finite(value)
        if f is None:
            raise Invalid(f"expected a finite number, got {value!r:.40}")
        return f

    return coerce


def number_pair() -> Coercer:
    """None, or two finite numbers (a range slider's ``[low, high]``)."""

    def coerce(value: object) -> tuple[float, float] | None:
        if value is None:
            return None
        pair = numbers(value, 2, 2)
        if pair is None:
            raise Invalid("expected two finite numbers")
        return pair[0], pair[1]

    return coerce


def str_list(max_items: int = 64) -> Coercer:
    """None, or a list of strings (a checklist's value)."""
    item = text()

    def coerce(value: object) -> list[str] | None:
        if value is None:
            return None
        if not isinstance(value, list) or len(value) > max_items:
            raise Invalid("expected a list of strings")
        if any(not isinstance(v, str) for v in value):
            raise Invalid("expected a list of strings")
        return [item(v) for v in value]

    return coerce


def record() -> Coercer:
    """None, or a JSON object (a plotly event, a ``dcc.Store``'s data)."""

    def coerce(value: object) -> dict[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise Invalid(f"expected an object, got {type(value).__name__}")
        return value

    return coerce


def anything() -> Coercer:
    """Any JSON value, unchanged (for arguments whose every value is meaningful, e.g. a toggle)."""
    return lambda value: value


#: the browser URL's ``pathname`` and ``search`` (``dcc.Location``)
URL_PART = text()


def typed(*coercers: Coercer) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Coerce a callback's positional arguments; a wrongly typed one answers ``no_update``.

    Put it under ``@app.callback(...)``, one coercer per Input and State, in their order.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def checked(*args: object) -> Any:
            if len(args) != len(coercers):  # the guard already checked the count; be safe anyway
                return no_update
            try:
                values = [coerce(arg) for coerce, arg in zip(coercers, args, strict=True)]
            except Invalid:
                return no_update
            return fn(*values)

        return checked

    return wrap


# ---------------------------------------------------------------- total readers of JSON values


def finite(value: object) -> float | None:
    """``value`` as a float when it is a finite JSON number (not a boolean), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        f = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return f if math.isfinite(f) else None


def numbers(value: object, min_len: int = 0, max_len: int = MAX_ITEMS) -> list[float] | None:
    """``value`` as a list of finite floats of length in [min_len, max_len], else None."""
    if not isinstance(value, list | tuple) or not min_len <= len(value) <= max_len:
        return None
    out = [finite(v) for v in value]
    return None if any(v is None for v in out) else [v for v in out if v is not None]


def first_point(event: object) -> dict[str, Any] | None:
    """The first point of a plotly click/hover event (``{"points": [{...}, ...]}``), else None."""
    if not isinstance(event, dict):
        return None
    points = event.get("points")
    if not isinstance(points, list) or not points or not isinstance(points[0], dict):
        return None
    return points[0]


def point_dicts(event: object) -> Sequence[dict[str, Any]]:
    """Every point of a plotly event that is an object (the others are ignored)."""
    points = event.get("points") if isinstance(event, dict) else None
    if not isinstance(points, list):
        return []
    return [p for p in points if isinstance(p, dict)]
