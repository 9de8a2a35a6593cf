"""URL query strings <-> validated filter objects.

Every dashboard view is a shareable link: filters live in the query string. Everything read
from it is validated here and defaulted when bad (unknown keys ignored, non-numeric pages
become 0, SQL-shaped strings fail the regexes), so nothing from the URL reaches SQL as text -
the reader gets typed values that it binds as parameters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import parse_qs, urlencode

from xaidash.constants import IMAGE_ID_RE, METHOD_RE, METHODS, OUTCOMES, QUALITY_FLAGS, RUN_ID_RE, SORTS
from xaidash.dashboard.overlays import COLORMAPS, DEFAULT_ALPHA, DEFAULT_CMAP, parse_alpha, parse_cmap

SELECTION_RE = re.compile(r"^[0-9a-f]{12}$")

SORT_LABELS: dict[str, str] = {
    "confidence": "Confidence",
    "loss": "Loss",
    "faithfulness": "Faithfulness (deletion AUC)",
    "disagreement": "Disagreement between methods",
    "label_quality": "Label quality (cleanlab)",
}
#: what the gallery's data-quality filter shows for each flag
FLAG_LABELS: dict[str, str] = {
    "mislabelled": "likely mislabelled", "leak": "leak", "lookalike": "look-alike", "outlier": "outlier",
    "duplicate": "near-duplicate", "dark": "dark", "overexposed": "overexposed", "blurry": "blurry",
    "low_information": "low information", "odd_size": "odd size", "odd_aspect": "odd aspect ratio",
    "grayscale": "grayscale",
}
PAGE_SIZES: tuple[int, ...] = (12, 24, 48, 96)
#: What the embedding map colours points by: their true or their predicted class.
COLOR_BY: tuple[str, ...] = ("true", "pred")
#: The groups of images whose prediction changed between two runs (``RunDiff.flips["change"]``).
CHANGES: tuple[str, ...] = ("broke", "fixed", "changed")
MAX_INLINE_IDS = 20  # selections this small travel as ids in the URL; larger ones as a hash
MAX_PAGE = 100_000
MAX_CLASS = 100_000  # the largest class index a URL may name


def _first(qs: dict[str, list[str]], key: str) -> str | None:
    values = qs.get(key)
    return values[0] if values else None


def valid_run_id(value: object) -> str | None:
    """``value`` if it looks like a run id, else None (existence is checked against the store)."""
    return value if isinstance(value, str) and RUN_ID_RE.match(value) else None


def valid_image_id(value: object) -> str | None:
    """``value`` if it looks like an image id (16 lowercase hex chars), else None."""
    return value if isinstance(value, str) and IMAGE_ID_RE.match(value) else None


def parse_int(
    value: str | None, default: int | None, lo: int | None = None, hi: int | None = None
) -> int | None:
    """Parse a non-negative decimal int within [lo, hi]; anything else gives ``default``."""
    if value is None or not re.fullmatch(r"-?\d{1,9}", value.strip()):
        return default
    n = int(value)
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        return default
    return n


def parse_float(value: str | None, default: float, lo: float = 0.0, hi: float = 1.0) -> float:
    """Parse a finite float within [lo, hi] (clamped); anything else gives ``default``."""
    if (
        value is None
        or not re.fullmatch(r"-?\d{0,6}(\.\d{1,6})?", value.strip())
        or value.strip() in ("", "-")
    ):
        return default
    f = float(value)
    if not math.isfinite(f):
        return default
    return min(max(f, lo), hi)


def parse_bool(value: str | None, default: bool = False) -> bool:
    """``1/true/yes`` -> True, ``0/false/no`` -> False, else ``default``."""
    if value is None:
        return default
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    return default


def parse_ids(value: str | None, limit: int = MAX_INLINE_IDS) -> tuple[str, ...] | None:
    """A comma-separated list of image ids; invalid entries dropped, at most ``limit``."""
    if not value:
        return None
    ids = [v for v in value.split(",")[:limit] if IMAGE_ID_RE.match(v)]
    return tuple(dict.fromkeys(ids)) or None


#: the URL's value of ``methods`` for "the user picked none" (an empty value would read as absent)
NO_METHODS = "-"
MAX_METHODS = 32  # more names than any run has methods


def parse_methods(value: str | None) -> tuple[str, ...] | None:
    """The picked methods: names that look like method names, deduplicated; None (the run's
    default) when the URL names none that could be one; ``()`` for :data:`NO_METHODS`.

    Whether a name is a method of the run is the page's check (it knows the run's methods).
    """
    if value is None:
        return None
    if value.strip() == NO_METHODS:
        return ()
    names = [v.strip() for v in value.split(",")[:MAX_METHODS] if METHOD_RE.match(v.strip())]
    return tuple(dict.fromkeys(names)) or None


def qs_of(search: object) -> dict[str, list[str]]:
    """Parse ``?a=1&b=2`` (leading '?' optional) into a dict of lists, tolerating garbage.

    Anything but a string (a script can post any JSON as ``url.search``) is no query at all.
    """
    if not search or not isinstance(search, str):
        return {}
    try:
        return parse_qs(search.lstrip("?"), keep_blank_values=False, max_num_fields=64)
    except ValueError:  # too many fields: treat as no query at all
        return {}


@dataclass(frozen=True)
class Filters:
    """Validated state of every page, parsed from the query string.

    One class for all pages keeps links between pages trivial (the run and display settings
    carry over) - each page reads only the fields it needs.
    """

    run: str | None = None
    # gallery
    true: int | None = None
    pred: int | None = None
    outcome: str = "all"
    cmin: float = 0.0
    cmax: float = 1.0
    sort: str = "confidence"
    desc: bool = False
    method: str = "gradcam"
    #: the methods the gallery, image and compare pages show; None: the classic ones the run has
    methods: tuple[str, ...] | None = None
    sel: str | None = None  # server-side selection key
    ids: tuple[str, ...] | None = None  # small inline selection
    page: int = 0
    size: int = 24
    flag: str | None = None  # data-quality flag (constants.QUALITY_FLAGS)
    # display
    cmap: str = DEFAULT_CMAP
    alpha: float = DEFAULT_ALPHA
    # image page
    id: str | None = None
    # embedding map
    color: str = "true"
    train: bool = False
    # overview
    norm: bool = False
    # compare
    a: str | None = None
    b: str | None = None
    #: which flips the compare page lists; None = not chosen: the first non-empty group
    change: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


_DEFAULTS = Filters()


def parse_query(search: object) -> Filters:
    """Parse and validate a query string into :class:`Filters`; bad values become defaults."""
    qs = qs_of(search)

    def g(key: str) -> str | None:
        return _first(qs, key)

    outcome = g("outcome")
    sort = g("sort")
    method = g("method")
    color = g("color")
    change = g("change")
    flag = g("flag")
    sel = g("sel")
    cmin = parse_float(g("cmin"), 0.0)
    cmax = parse_float(g("cmax"), 1.0)
    if cmin > cmax:
        cmin, cmax = cmax, cmin
    size = parse_int(g("size"), 24)
    return Filters(
        run=valid_run_id(g("run")),
        true=parse_int(g("true"), None, 0, MAX_CLASS),
        pred=parse_int(g("pred"), None, 0, MAX_CLASS),
        outcome=outcome if outcome in OUTCOMES else "all",
        cmin=cmin,
        cmax=cmax,
        sort=sort if sort in SORTS else "confidence",
        desc=parse_bool(g("desc")),
        method=method if method in METHODS else "gradcam",
        methods=parse_methods(g("methods")),
        sel=sel if sel and SELECTION_RE.match(sel) else None,
        ids=parse_ids(g("ids")),
        page=parse_int(g("page"), 0, 0, MAX_PAGE) or 0,
        size=size if size in PAGE_SIZES else 24,
        flag=flag if flag in QUALITY_FLAGS else None,
        cmap=parse_cmap(g("cmap")),
        alpha=parse_alpha(g("alpha")),
        id=valid_image_id(g("id")),
        color=color if color in COLOR_BY else "true",
        train=parse_bool(g("train")),
        norm=parse_bool(g("norm")),
        a=valid_run_id(g("a")),
        b=valid_run_id(g("b")),
        change=change if change in CHANGES else None,
    )


def to_query(f: Filters, keys: tuple[str, ...] | None = None) -> str:
    """Serialise :class:`Filters` back to ``?k=v`` with defaults omitted (short, stable links).

    ``keys`` restricts which fields are written (e.g. the image page drops gallery filters).
    """
    out: list[tuple[str, str]] = []
    for fld in fields(Filters):
        name = fld.name
        if name == "extra" or (keys is not None and name not in keys):
            continue
        value = getattr(f, name)
        if value == getattr(_DEFAULTS, name) or value is None:
            continue
        if isinstance(value, bool):
            out.append((name, "1" if value else "0"))
        elif isinstance(value, tuple):
            out.append((name, ",".join(value) or NO_METHODS))  # only ``methods`` can be empty
        elif isinstance(value, float):
            out.append((name, f"{value:g}"))
        else:
            out.append((name, str(value)))
    return "?" + urlencode(out, safe=",") if out else ""


def changed_query(old: Filters, candidate: Filters, keys: tuple[str, ...] | None = None) -> str | None:
    """``candidate``'s query string, validated as a typed URL is; None when it equals ``old``'s.

    Control values go through the same ranges and allow-lists as a hand-typed query string, and
    an unchanged URL is reported as None so that the page is not rendered again.
    """
    new = to_query(parse_query(to_query(candidate, keys)), keys)
    return None if new == to_query(old, keys) else new


GALLERY_KEYS = (
    "run",
    "true",
    "pred",
    "outcome",
    "cmin",
    "cmax",
    "sort",
    "desc",
    "method",
    "methods",
    "sel",
    "ids",
    "page",
    "size",
    "cmap",
    "alpha",
    "flag",
)
DISPLAY_KEYS = ("run", "methods", "cmap", "alpha")


def gallery_href(f: Filters, **changes: Any) -> str:
    """Link to the gallery with ``changes`` (fields of :class:`Filters`) applied; page 0 unless given."""
    return "/gallery" + to_query(replace(f, **{"page": 0, **changes}), GALLERY_KEYS)


def image_href(run_id: str | None, image_id: str, f: Filters | None = None) -> str:
    """Link to the image page of ``image_id`` in ``run_id`` (display settings carried over)."""
    base = f if f is not None else _DEFAULTS
    return "/image" + to_query(replace(base, run=run_id, id=image_id), (*DISPLAY_KEYS, "id"))


__all__ = [
    "COLORMAPS",
    "Filters",
    "gallery_href",
    "image_href",
    "parse_query",
    "to_query",
]
