"""Look and feel: a Bootswatch theme served from the installed ``bootstrap-flask`` package.

dash-bootstrap-components' theme constants are CDN URLs and render an unstyled page
offline, so the Bootstrap CSS is served by our own Flask route from the ``bootstrap-flask``
wheel (which ships Bootstrap 5 and the Bootswatch themes). Bootswatch themes start with an
``@import`` of Google Fonts; that line is stripped so the page never reaches outside the
server (the CSS font stacks fall back to system fonts). Plotly figures use the matching
``dash-bootstrap-templates`` template.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

THEME = "flatly"
THEMES: tuple[str, ...] = ("flatly", "cosmo", "lumen", "sandstone", "yeti", "zephyr", "litera", "spacelab")
CSS_ROUTE = "/_xaidash/theme/{name}.css"

# Colours used by figures for correct / wrong and for deltas (flatly's success / danger).
COLOR_CORRECT = "#18bc9c"
COLOR_WRONG = "#e74c3c"
COLOR_PRIMARY = "#2c3e50"

_IMPORT_RE = re.compile(r"@import\s+url\([^)]*\)\s*;?")
_EXTERNAL_URL_RE = re.compile(r"url\(\s*['\"]?https?://[^)]*\)")


def bootstrap_dir() -> Path:
    """The ``bootstrap5`` static folder of the installed bootstrap-flask package."""
    import flask_bootstrap

    return Path(flask_bootstrap.__file__).parent / "static" / "bootstrap5"


def theme_css_path(name: str) -> Path:
    """Path of a theme's minified CSS; plain Bootstrap for ``"bootstrap"``."""
    base = bootstrap_dir() / "css"
    if name == "bootstrap":
        return base / "bootstrap.min.css"
    return base / "bootswatch" / name / "bootstrap.min.css"


@lru_cache(maxsize=8)
def theme_css(name: str) -> tuple[bytes, str]:
    """The theme CSS with external font imports removed, and its ETag."""
    if name not in (*THEMES, "bootstrap"):
        raise KeyError(name)
    text = theme_css_path(name).read_text(encoding="utf-8")
    # Why: Bootswatch @imports Google Fonts; offline this is a failed request (and online a
    # third-party request the user did not ask for). System font fallbacks follow in the stack.
    text = _IMPORT_RE.sub("", text)
    text = _EXTERNAL_URL_RE.sub("none", text)
    data = text.encode("utf-8")
    return data, hashlib.sha1(data).hexdigest()[:16]


@lru_cache(maxsize=1)
def figure_template(name: str = THEME) -> str:
    """Register the dash-bootstrap-templates Plotly template for ``name``, make it Plotly's
    default, and return its name.

    The templates ship as JSON inside the package, so this works offline. As the default, a new
    figure takes the template when it is created, unvalidated; naming it in ``update_layout``
    instead would copy and validate the whole template for every figure (~10 ms each, most of a
    page render with five figures).
    """
    import plotly.io as pio
    from dash_bootstrap_templates import load_figure_template

    load_figure_template(name)
    tmpl = pio.templates[name]
    # Transparent backgrounds so figures sit on the card colour; tighter default margins.
    tmpl.layout.paper_bgcolor = "rgba(0,0,0,0)"
    tmpl.layout.margin = {"l": 50, "r": 20, "t": 40, "b": 40}
    pio.templates.default = name
    return name
