"""What the reader's queries take and return: :class:`GalleryQuery`, :class:`RunInfo`,
:class:`ImageDetail`, :class:`RunDiff`.

Plain dataclasses (numpy and pandas, no DuckDB), so code that only names them - the dashboard's
URL parser, type hints - does not load the query engine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from xaidash.constants import METHOD_RE, OUTCOMES, QUALITY_FLAGS, SORTS
from xaidash.errors import UserError

#: the bound parameters of one query: positional (``?``) or named (``$name``)
Params = Sequence[object] | Mapping[str, object] | None

#: The largest gallery page a query may ask for.
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class GalleryQuery:
    """Filters, sort and page of the gallery (see CONTRACTS.md)."""

    true_class: int | None = None
    pred_class: int | None = None
    outcome: str = "all"  # one of constants.OUTCOMES
    conf_min: float = 0.0
    conf_max: float = 1.0
    sort: str = "confidence"  # one of constants.SORTS
    descending: bool = False
    method: str = "gradcam"  # which method the "faithfulness" sort uses
    image_ids: tuple[str, ...] | None = None  # restrict to a selection (lasso in the map)
    page: int = 0
    page_size: int = 24
    flag: str | None = None  # one of constants.QUALITY_FLAGS: only images with that flag

    def check(self) -> None:
        """UserError for an unknown outcome or sort, or a page out of range."""
        if self.outcome not in OUTCOMES:
            raise UserError(f"unknown outcome {self.outcome!r}; valid outcomes: {', '.join(OUTCOMES)}")
        if self.sort not in SORTS:
            raise UserError(f"unknown sort {self.sort!r}; valid sorts: {', '.join(SORTS)}")
        if self.flag is not None and self.flag not in QUALITY_FLAGS:
            raise UserError(f"unknown quality flag {self.flag!r}; valid flags: {', '.join(QUALITY_FLAGS)}")
        if int(self.page) < 0 or not 1 <= int(self.page_size) <= MAX_PAGE_SIZE:
            raise UserError(f"page must be >= 0 and page_size in 1..{MAX_PAGE_SIZE}")

    def sort_key(self, methods: Sequence[str]) -> str:
        """The gallery index's key for :attr:`sort` in a run of ``methods``: ``faith_<method>``
        for the faithfulness sort, ``none`` (image order) when the run has no such method."""
        if self.sort != "faithfulness":
            return self.sort
        m = self.method
        return f"faith_{m}" if isinstance(m, str) and m in methods and METHOD_RE.match(m) else "none"


@dataclass(frozen=True)
class RunInfo:
    """One row of the runs table, with list columns as Python lists."""

    run_id: str
    created: pd.Timestamp
    status: str
    dataset_spec: str | None
    dataset_fingerprint: str
    dataset_kind: str | None
    checkpoint_path: str | None
    checkpoint_sha256: str | None
    arch: str | None
    class_names: list[str]
    methods: list[str]
    target_layer: str | None
    map_h: int | None
    map_w: int | None
    num_val: int | None
    num_train: int | None
    num_failed: int | None
    accuracy: float | None
    scorecam_note: str | None
    precision_json: str | None
    config_json: str | None
    versions_json: str | None
    timings_json: str | None
    device: str | None
    schema_version: int
    job_key: str | None
    labeled: bool

    @property
    def config(self) -> dict[str, Any]:
        """``config_json`` parsed ({} when absent)."""
        return _json_object(self.config_json)

    @property
    def versions(self) -> dict[str, Any]:
        return _json_object(self.versions_json)

    @property
    def timings(self) -> dict[str, Any]:
        return _json_object(self.timings_json)

    @property
    def precision(self) -> dict[str, Any]:
        """``precision_json`` parsed ({} for runs written before it existed)."""
        return _json_object(self.precision_json)

    @property
    def precision_note(self) -> str | None:
        """One line for the pages that show approximations: bf16 and its measured deviation."""
        p = self.precision
        if p.get("precision") != "bf16":
            return None
        cal = p.get("calibration") or {}
        if not cal:
            return "bf16 for Score-CAM and faithfulness (deviation not measured)"
        return (f"bf16 for Score-CAM and faithfulness: Score-CAM maps within {cal['max_abs_dmap']:.3f} "
                f"of fp32 (median {cal['median_abs_dmap']:.3f}), faithfulness scores within "
                f"{cal['max_abs_dscore']:.3f} (median {cal['median_abs_dscore']:.3f}), measured on "
                f"{cal['images']} images")


def _json_object(text: str | None) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(text) if text else {}
    return parsed


#: A raw map as the reader returns it: float32 [h, w] in [0, 1].
Map = npt.NDArray[np.float32]


@dataclass
class ImageDetail:
    """Everything the image page shows for one image of one run.

    For a train image (a twin) ``prediction`` is ``{}`` and ``topk`` is ``[]``; ``cams`` holds
    its Grad-CAM.
    """

    image_id: str
    prediction: dict[str, Any]
    topk: list[tuple[int, str, float]]
    cams: dict[tuple[str, str], tuple[int, Map]]
    faithfulness: pd.DataFrame
    split: str | None
    source: str | None
    width: int | None
    height: int | None
    label: int | None = None
    label_name: str | None = None


@dataclass
class RunDiff:
    """Comparison of two runs (a = before, b = after)."""

    metrics: pd.DataFrame  # metric, a, b, delta
    confusion_delta: pd.DataFrame  # true_class, pred_class, a, b, delta
    flips: pd.DataFrame  # image_id, label, label_name, pred_a, pred_b, conf_a, conf_b, change

    @classmethod
    def empty(cls) -> RunDiff:
        """The diff of an unknown run: every frame empty, with its columns."""
        return cls(
            pd.DataFrame(columns=["metric", "a", "b", "delta"]),
            pd.DataFrame(columns=["true_class", "pred_class", "a", "b", "delta"]),
            pd.DataFrame(
                columns=["image_id", "label", "label_name", "pred_a", "pred_b", "conf_a", "conf_b", "change"]
            ),
        )

    def copy(self) -> RunDiff:
        return RunDiff(self.metrics.copy(), self.confusion_delta.copy(), self.flips.copy())
