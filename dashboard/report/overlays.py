"""``xaidash export --overlays DIR``: the overlay PNGs of the filtered images, one folder per method.

``DIR/<method>/<image_id>.png`` (the map of the predicted class over the stored thumbnail, the
dashboard's colormap and alpha) and ``DIR/images.csv`` with the gallery's rows of those images,
so a file can be traced back to its source, label and prediction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xaidash.dashboard.overlays import DEFAULT_ALPHA, DEFAULT_CMAP, render_heatmap, render_overlay
from xaidash.errors import UserError
from xaidash.store.export import gallery_query, gallery_rows, resolve_run, write_rows

if TYPE_CHECKING:
    from xaidash.store import StoreReader

#: images whose maps and thumbnails are read at once
BATCH = 256


def export_overlays(
    reader: StoreReader,
    run: str | None,
    out_dir: Path,
    methods: Sequence[str] | None = None,
    size: int | None = 224,
    cmap: str = DEFAULT_CMAP,
    alpha: float = DEFAULT_ALPHA,
    filters: Mapping[str, Any] | None = None,
) -> int:
    """Write the overlays of the images ``filters`` select (the gallery's: true, pred, outcome,
    flag, cmin, cmax); returns how many PNGs were written."""
    info = resolve_run(reader, run)
    wanted = list(methods) if methods else list(info.methods)
    bad = [m for m in wanted if m not in info.methods]
    if bad:
        raise UserError(
            f"run {info.run_id} has no method {', '.join(bad)}; its methods: {', '.join(info.methods)}"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--overlays {out_dir} is a file, not a folder")
    try:
        for m in wanted:
            (out_dir / m).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--overlays {out_dir}: cannot create it: {exc.strerror or exc}") from None
    rows = gallery_rows(
        reader, info.run_id, gallery_query(info, {k: v for k, v in (filters or {}).items() if v is not None})
    )
    ids = [str(i) for i in rows["image_id"]]
    written = 0
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        maps = reader.cams_batch(info.run_id, batch, wanted)
        thumbs = reader.thumbnails(info.run_id, batch)
        for iid in batch:
            for m in wanted:
                cam = maps.get((iid, m))
                if cam is None:
                    continue
                thumb = thumbs.get(iid)
                png = (
                    render_overlay(thumb, cam, cmap, alpha, size)
                    if thumb
                    else render_heatmap(cam, cmap, size or 96)
                )
                (out_dir / m / f"{iid}.png").write_bytes(png)
                written += 1
    write_rows(rows, out_dir / "images.csv", "csv")
    return written
