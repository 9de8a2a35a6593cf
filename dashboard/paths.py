"""What pages show of the server's file system: names, not absolute paths.

A dashboard served to a team tells every browser whatever its pages print, so by default a store,
a checkpoint or an image folder is shown by its name (and a checkpoint by its sha256 prefix,
which identifies the file without saying where it lives). ``xaidash serve --show-paths`` shows
the full paths again, for a single user on localhost.
"""

from __future__ import annotations

import os

#: hex digits of a sha256 shown next to a file's name: enough to tell two checkpoints apart
SHA_PREFIX = 12


def path_label(path: str | os.PathLike[str], show_paths: bool, sha256: str | None = None) -> str:
    """``path`` as a page shows it: its last component (plus the sha256 prefix, if known), or the
    whole path when ``show_paths``."""
    text = os.fspath(path)
    if show_paths:
        return text
    name = os.path.basename(os.path.normpath(text)) or text
    return f"{name} (sha256 {sha256[:SHA_PREFIX]})" if sha256 else name


def spec_label(spec: str, show_paths: bool) -> str:
    """A dataset SPEC as a page shows it: ``imagefolder:/data/pets`` becomes ``imagefolder:pets``.

    Only an absolute location is shortened; a relative one (or class names such as
    ``fashion-mnist:T-shirt/top``) says nothing about the server and is kept.
    """
    kind, sep, rest = spec.partition(":")
    if show_paths or not sep or not os.path.isabs(rest):
        return spec
    return f"{kind}:{path_label(rest, show_paths)}"


def redact(text: str, paths: list[str], show_paths: bool) -> str:
    """``text`` (e.g. an error message) with each of ``paths`` replaced by its label."""
    if show_paths:
        return text
    for p in sorted((p for p in paths if p), key=len, reverse=True):
        text = text.replace(p, path_label(p, show_paths))
    return text
