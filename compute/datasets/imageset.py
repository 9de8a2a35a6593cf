"""Decoding dataset items for the network: one failure-tolerant torch Dataset for ``train`` and
``compute``.

An unreadable image (corrupt file, decompression bomb, a decoder bug) must not kill a long job:
:class:`ImageSet` turns every failure into a record with its reason, :func:`collate` stacks the
good samples of a batch and keeps the failures aside, and the caller reports and counts them.
Decoding runs in DataLoader worker processes, which cannot log into the main process's counters,
hence records rather than side effects.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from xaidash.compute.datasets.decoding import display_name, thumbnail_png
from xaidash.compute.datasets.sources import Dataset, ImageLoadError, Item

Transform = Callable[[Image.Image], torch.Tensor]
#: what the per-chunk function measures on each decoded image besides the model input (its
#: data-quality facts); runs in the worker that decoded the image, so it costs no second decode
Describe = Callable[[Image.Image], object]


@dataclass(frozen=True)
class Sample:
    """One decoded item: ``x`` is None when it failed, with ``reason`` saying why."""

    index: int
    x: torch.Tensor | None
    reason: str | None = None
    width: int = 0
    height: int = 0
    thumbnail: bytes | None = None
    facts: object | None = None  #: ``describe(image)`` when the ImageSet was given one


@dataclass(frozen=True)
class Batch:
    """The decodable samples of a batch, stacked, and the failed ones as (index, reason)."""

    index: list[int]  # positions (in the ImageSet's items) of the rows of ``x``
    x: torch.Tensor | None  # [B, 3, H, W]; None when no sample of the batch could be decoded
    sizes: list[tuple[int, int]]  # original (width, height) per row
    thumbnails: list[bytes | None]  # per row; None when not asked for
    failed: list[tuple[int, str]]
    facts: list[object | None] = dataclasses.field(default_factory=list)  #: per row, see Sample.facts

    def pin_memory(self) -> Batch:
        """DataLoader(pin_memory=True) calls this: page-locked ``x`` for non_blocking copies."""
        return dataclasses.replace(self, x=None if self.x is None else self.x.pin_memory())


class ImageSet(torch.utils.data.Dataset[Sample]):
    """``items`` of ``dataset`` through ``transform``; thumbnails for the ids in ``thumbnails``."""

    def __init__(self, dataset: Dataset, items: Sequence[Item], transform: Transform,
                 thumbnails: frozenset[str] = frozenset(), describe: Describe | None = None) -> None:
        self.dataset = dataset
        self.describe = describe
        self.items = list(items)
        self.transform = transform
        self.thumbnails = thumbnails

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        item = self.items[i]
        try:
            img = self.dataset.load(item)
            x = self.transform(img)
        except ImageLoadError as exc:
            return Sample(i, None, exc.reason)
        except Exception as exc:  # a decoder/transform bug must not kill a long job either
            return Sample(i, None, display_name(f"{type(exc).__name__}: {exc}").splitlines()[0][:500])
        thumb = thumbnail_png(img) if item.image_id in self.thumbnails else None
        facts = self.describe(img) if self.describe is not None else None
        return Sample(i, x, None, img.width, img.height, thumb, facts)


def collate(samples: list[Sample]) -> Batch:
    """Stack the decodable samples; keep the failures aside."""
    good = [s for s in samples if s.x is not None]
    return Batch(
        index=[s.index for s in good],
        x=torch.stack([s.x for s in good if s.x is not None]) if good else None,
        sizes=[(s.width, s.height) for s in good],
        thumbnails=[s.thumbnail for s in good],
        failed=[(s.index, s.reason or "unreadable") for s in samples if s.x is None],
        facts=[s.facts for s in good],
    )


def input_hashes(x: torch.Tensor) -> list[str]:
    """One hash per image of a batch ``[B, ...]``: 16 hex chars of blake2b over the bytes of the
    model's input tensor (float32, CPU), so identical decoded pixels give identical hashes (the
    ``pixels`` leaks of :mod:`xaidash.compute.analysis.quality`)."""
    arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
    return [hashlib.blake2b(arr[i].tobytes(), digest_size=8).hexdigest() for i in range(arr.shape[0])]
