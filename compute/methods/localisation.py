"""Localisation against ground truth, when the dataset has it.

Ground truth (:func:`open_ground_truth`, decided in the plan, checked before any heavy work):

* ``--masks MDIR``, for any dataset: the mask of an image whose source (as the dashboard shows
  it) is ``S`` is ``MDIR/S`` with the suffix ``.png``, or the same without ``S``'s first folder
  when that is the split's or (images in arrays) the dataset's name (``val/cat/x.jpg``:
  ``MDIR/val/cat/x.png`` or ``MDIR/cat/x.png``; ``fashion-mnist/t10k#7``: ``MDIR/t10k#7.png``).
  A mask that two images would share is an error. Without the option, ``imagefolder:DIR`` uses
  ``DIR/masks/val/<class>/<stem>.png`` for ``DIR/val/<class>/<stem>.<ext>`` when that folder
  exists. Any non-zero pixel is object. An image without a mask file has no localisation rows;
  a mask whose size differs from its image's is an error naming both.
* ``--boxes FILE.csv`` with a header ``path,x0,y0,x1,y1``: ``path`` is the image's source as the
  run shows it (``val/<class>/<name>``), or relative to the split folder, or absolute; several
  rows for one image are a union of boxes. Coordinates are pixels of the original image,
  ``x0 <= x < x1``, ``y0 <= y < y1`` (clipped to the image).

The object mask goes through the same resize and centre crop as the image (nearest neighbour),
and the map is bilinearly upsampled to the input (as for faithfulness), so both live on the
network's input grid. Per (image, method), for the predicted-class map ``S``:

* **pointing game** (Zhang et al. 2016): 1 when the map's maximum (the first in row-major
  order) lies within ``--pointing-tolerance`` pixels (Euclidean) of an object pixel, else 0.
  The paper's tolerance is 15 px (TorchRay's default too); it is given for a 224-px input and
  scaled to the network's input (:func:`pointing_radius`), so 15 means 2.1 px at 32 px; 0 =
  the maximum must be inside the object;
* **energy-based pointing game** (Score-CAM paper §5.2): ``Σ_{object} S / Σ S``;
* **IoU of the top k %** (``--localisation-topk``, default 20): the ``ceil(k/100·n)`` pixels of
  highest ``S`` (ties by row-major index) against the object: ``|T ∩ O| / |T ∪ O|``.

An image whose mask has no object pixel inside the crop has no rows; an all-zero map (nothing
to point with) has null scores.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from xaidash.compute.datasets.decoding import ImageLoadError, image_size, load_image
from xaidash.compute.datasets.sources import Dataset, FileDataset, Item
from xaidash.compute.methods.ranks import pixel_ranks, upsample_maps
from xaidash.errors import UserError

if TYPE_CHECKING:
    from xaidash.compute.datasets.sources import Dataset, Item
    from xaidash.compute.model.preprocessing import Preprocessing

DEFAULT_TOPK = 20.0
MASK_DIR = "masks"


@dataclass(frozen=True)
class GroundTruth:
    """Where each val image's object is: a mask file, or boxes in original pixels."""

    masks: dict[str, Path] = field(default_factory=dict)
    boxes: dict[str, tuple[tuple[float, float, float, float], ...]] = field(default_factory=dict)
    source: str = ""  #: what it came from, for logs

    def __len__(self) -> int:
        return len(self.masks) + len(self.boxes)

    def has(self, image_id: str) -> bool:
        return image_id in self.masks or image_id in self.boxes

    def object_mask(self, image_id: str, size: tuple[int, int]) -> np.ndarray | None:
        """``[H, W]`` bool at the original size ``(width, height)``; None without ground truth."""
        w, h = size
        if image_id in self.masks:
            path = self.masks[image_id]
            img = load_image(path, name=str(path)).convert("L")
            if img.size != (w, h):
                raise UserError(f"mask {path} is {img.width}x{img.height} px, its image {w}x{h} px: "
                                "masks must have the size of their image")
            return np.asarray(img) > 0
        if image_id in self.boxes:
            m = np.zeros((h, w), dtype=bool)
            for x0, y0, x1, y1 in self.boxes[image_id]:
                rows = slice(max(0, math.floor(y0)), max(0, math.ceil(y1)))
                m[rows, max(0, math.floor(x0)):max(0, math.ceil(x1))] = True
            return m
        return None


def ground_truth_digest(gt: GroundTruth | None) -> str | None:
    """A stable digest of the ground truth (part of the job key: other masks, other results)."""
    if gt is None:
        return None
    h = hashlib.sha1()
    for iid, p in sorted(gt.masks.items()):
        st = p.stat()
        h.update(f"{iid}:{p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    for iid, boxes in sorted(gt.boxes.items()):
        h.update(f"{iid}:{np.round(np.array(boxes), 3).tolist()}\n".encode())
    return h.hexdigest()


def to_input_grid(mask: np.ndarray, pre: Preprocessing) -> Tensor:
    """An original-size object mask through the image's resize (+ centre crop), nearest: ``[S, S]`` bool."""
    from PIL import Image

    out = pre.geometry(Image.fromarray(mask.astype(np.uint8) * 255, mode="L"), nearest=True)
    return torch.from_numpy(np.asarray(out) > 0)


def open_ground_truth(dataset: Dataset, data_spec: str, boxes: str | None, val: list[Item],
                      masks: str | None = None) -> GroundTruth | None:
    """The ground truth of the run's val images, or None when there is none. UserError naming
    the file for a bad boxes file or a mask that does not fit its image."""
    if boxes and masks:
        raise UserError("--boxes and --masks are two kinds of ground truth: give one of them")
    if boxes:
        return _read_boxes(Path(boxes).expanduser(), dataset, val)
    if masks:
        mdir = Path(masks).expanduser()
        if not mdir.is_dir():
            raise UserError(f"--masks folder not found: {mdir}")
        files = isinstance(dataset, FileDataset)
        gt = _find_masks(mdir, dataset, val, lambda it: _mask_names(it, files))
        if gt is None:
            example = _mask_names(val[0], files)[-1] if val else "<class>/<name>.png"
            raise UserError(f"--masks {mdir}: no mask for any of the {len(val):,} validation images "
                            f"(the first would be {mdir / example}: the image's source with .png)")
        return gt
    if dataset.kind != "imagefolder" or not data_spec.startswith("imagefolder:"):
        return None
    root = Path(data_spec.split(":", 1)[1]).expanduser()
    mdir = root / MASK_DIR / "val"
    if not mdir.is_dir():
        return None
    assert isinstance(dataset, FileDataset)

    def under_val(it: Item) -> list[Path]:
        try:
            return [dataset.path(it).relative_to(root / "val").with_suffix(".png")]
        except ValueError:
            return []

    return _find_masks(mdir, dataset, val, under_val)


def _mask_names(item: Item, files: bool) -> list[Path]:
    """Where ``--masks`` looks for the mask of ``item``, relative to the folder: its source with
    ``.png``, then without the source's first folder when that folder is the split's (``val/``)
    or, for images held in arrays, the dataset's name. A class or sub-folder is never dropped:
    two images of different folders must not share one mask."""
    rel = Path(item.source)
    names = [rel.with_name(rel.stem + ".png")]
    if len(rel.parts) > 1 and (rel.parts[0] == item.split or not files):
        names.append(Path(*rel.parts[1:]).with_name(rel.stem + ".png"))
    return names


def _find_masks(mdir: Path, dataset: Dataset, val: list[Item],
                names: Callable[[Item], list[Path]]) -> GroundTruth | None:
    """The masks of ``val`` under ``mdir`` (the first of ``names(item)`` that exists), each
    checked to have its image's size."""
    masks: dict[str, Path] = {}
    owner: dict[Path, str] = {}
    for it in val:
        mpath = next((mdir / n for n in names(it) if (mdir / n).is_file()), None)
        if mpath is None:
            continue
        if mpath in owner:
            raise UserError(f"mask {mpath} would be the mask of two images, {owner[mpath]} and {it.source}: "
                            "name each mask after its image's source (with its folders)")
        owner[mpath] = it.source
        try:
            msize = image_size(mpath)
            if isinstance(dataset, FileDataset):
                shown, isize = dataset.path(it), image_size(dataset.path(it))
            else:  # images in arrays: their size is the array's
                shown, isize = Path(it.source), dataset.load(it).size
        except ImageLoadError as exc:
            raise UserError(f"cannot read mask {mpath} or its image: {exc.reason}") from None
        if msize != isize:
            raise UserError(f"mask {mpath} is {msize[0]}x{msize[1]} px, its image {shown} "
                            f"{isize[0]}x{isize[1]} px: masks must have the size of their image")
        masks[it.image_id] = mpath
    return GroundTruth(masks=masks, source=str(mdir)) if masks else None


def _read_boxes(path: Path, dataset: Dataset, val: list[Item]) -> GroundTruth:
    if not path.is_file():
        raise UserError(f"--boxes file not found: {path}")
    keys: dict[str, str] = {}
    for it in val:
        keys[it.source] = it.image_id
        if "/" in it.source:
            keys[it.source.split("/", 1)[1]] = it.image_id
        if isinstance(dataset, FileDataset):
            keys[str(dataset.path(it))] = it.image_id
    out: dict[str, list[tuple[float, float, float, float]]] = {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            need = ("path", "x0", "y0", "x1", "y1")
            if reader.fieldnames is None or any(c not in reader.fieldnames for c in need):
                raise UserError(f"--boxes {path}: the header must be path,x0,y0,x1,y1, got "
                                f"{','.join(reader.fieldnames or []) or 'nothing'}")
            for line, row in enumerate(reader, start=2):
                try:
                    x0, y0, x1, y1 = (float(row[c] or "") for c in need[1:])
                except ValueError:
                    raise UserError(f"--boxes {path} line {line}: x0,y0,x1,y1 must be numbers") from None
                if not all(map(math.isfinite, (x0, y0, x1, y1))) or not (x0 < x1 and y0 < y1):
                    raise UserError(f"--boxes {path} line {line}: need finite x0 < x1 and y0 < y1")
                iid = keys.get(str(row["path"]).strip())
                if iid is None:
                    raise UserError(f"--boxes {path} line {line}: {row['path']!r} is not a validation "
                                    "image of this dataset (use the path the dashboard shows as source)")
                out.setdefault(iid, []).append((x0, y0, x1, y1))
    except UnicodeDecodeError:
        raise UserError(f"--boxes {path} is not a UTF-8 CSV file") from None
    if not out:
        raise UserError(f"--boxes {path} has no boxes")
    return GroundTruth(boxes={k: tuple(v) for k, v in out.items()}, source=str(path))


def pointing_radius(tolerance: float, size: tuple[int, int]) -> float:
    """The pointing game's tolerance on an ``H x W`` input grid: ``tolerance`` is in pixels of a
    224-px input, scaled by ``min(H, W) / 224``."""
    return tolerance * min(size) / 224.0


def _hits(objects: Tensor, points: Tensor, radius: float) -> Tensor:
    """``[B]`` float: 1 where the row-major pixel ``points[b]`` lies within ``radius`` (Euclidean)
    of an object pixel of ``objects[b]`` (``[B, H, W]`` bool), else 0. O(H·W) per image."""
    _, hgt, wid = objects.shape
    py, px = (points // wid).float(), (points % wid).float()
    ys = torch.arange(hgt, dtype=torch.float32, device=objects.device).view(1, hgt, 1)
    xs = torch.arange(wid, dtype=torch.float32, device=objects.device).view(1, 1, wid)
    d2 = (ys - py.view(-1, 1, 1)) ** 2 + (xs - px.view(-1, 1, 1)) ** 2
    nearest = torch.where(objects, d2, torch.full_like(d2, float("inf"))).flatten(1).amin(dim=1)
    return (nearest <= radius**2).float()


def localisation_scores(maps: Tensor, objects: Tensor, topk: float = DEFAULT_TOPK,
                        radius: float = 0.0) -> dict[str, Tensor]:
    """``pointing``, ``energy`` and ``iou`` per image, each ``[B]`` (NaN for an all-zero map).

    ``maps`` ``[B, h, w]`` (upsampled bilinearly to the objects' grid), ``objects`` ``[B, H, W]`` bool;
    ``radius``: the pointing game's tolerance in pixels of this grid (:func:`pointing_radius`).
    """
    _, hgt, wid = objects.shape
    s = upsample_maps(maps.float(), (hgt, wid)).flatten(1)  # [B, n]
    o = objects.flatten(1).to(s.device)
    pointing = _hits(objects.to(s.device), s.argmax(dim=1), radius)
    total = s.sum(dim=1)
    inside = (s * o).sum(dim=1)
    energy = torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)),
                         torch.full_like(total, float("nan")))
    k = max(1, math.ceil(topk / 100.0 * s.shape[1]))
    top = pixel_ranks(s) < k
    inter = (top & o).sum(dim=1).float()
    union = (top | o).sum(dim=1).float()
    iou = inter / union.clamp_min(1)
    # an all-zero map points nowhere: its maximum and top pixels are only the row-major order
    nan = torch.full_like(total, float("nan"))
    return {"pointing": torch.where(total > 0, pointing, nan), "energy": energy,
            "iou": torch.where(total > 0, iou, nan)}
