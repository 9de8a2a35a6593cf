"""The compute job's configuration, and every check on it that needs no heavy work.

:class:`JobConfig` is the CLI's arguments, typed (``xaidash compute`` builds it with
:meth:`JobConfig.from_args`; tests and other tools build it directly). :func:`validate` is the
one place its values are checked: it runs first, so a typo fails in milliseconds with a message
naming the option, never after an hour of compute. The options shared with ``xaidash train``
(data, limits, device, batch size, workers) are defined once in :mod:`xaidash.compute.cli.args`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from xaidash.compute.analysis.copies import COPY_DISTANCE
from xaidash.compute.analysis.quality import LOOKALIKE_QUANTILE, OUTLIER_QUANTILE
from xaidash.constants import (
    ATTRIBUTION_IG_STEPS,
    ATTRIBUTION_SMOOTHGRAD_SAMPLES,
    METHODS,
    POINTING_TOLERANCE,
    PRECISIONS,
    PROJECTIONS,
    ROAD_FRACTIONS,
    TARGET_KINDS,
)
from xaidash.errors import UserError, choices_error


@dataclass(frozen=True)
class JobConfig:
    """All inputs of one compute job."""

    data: str
    store: str
    checkpoint: str | None = None
    model: str | None = None
    weights: str | None = None
    classes: tuple[str, ...] | None = None
    #: models a user brings (compute/model/external.py): class names one a line, input side,
    #: normalisation "r,g,b" and the constructor's keyword arguments as JSON
    classes_file: str | None = None
    input_size: int | None = None
    mean: str | None = None
    std: str | None = None
    model_args: str | None = None
    data_root: str | None = None
    methods: tuple[str, ...] = METHODS
    explain: tuple[str, ...] = ("pred",)
    target_layer: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 64
    workers: int = 2
    limit_val: int | None = None
    limit_train: int | None = None
    twins: int = 5
    projection: str | None = None
    faithfulness_steps: int = 16
    faithfulness: bool = True
    scorecam_max_channels: int | None = None
    shard: str | None = None
    finalize: bool = False
    chunk_size: int = 256
    new_run: bool = False
    #: bf16 runs: images of the stratified sample whose maps are also computed in fp32
    calibration_images: int = 16
    #: run the per-image phase on Ray: "local", "auto" or a head's address (None: in this process)
    ray: str | None = None
    ray_workers: int | None = None
    gpus_per_worker: float | None = None
    threads_per_worker: int = 1
    #: "can I trust these maps?" (compute/pipeline/trust_step.py): sanity sample (0 = off), ROAD fractions
    #: (empty = off) and sample (None = all val images), ground-truth boxes, top-k % of the IoU
    sanity_images: int = 64
    road_fractions: tuple[float, ...] = ROAD_FRACTIONS
    road_images: int | None = None
    boxes: str | None = None
    masks: str | None = None
    localisation_topk: float = 20.0
    #: pixel attributions through Captum (compute/methods/attributions.py) on a stratified, seeded
    #: sample of val images (0 = off): Integrated Gradients' points, SmoothGrad's noisy copies, and the
    #: images of that sample whose attributions the sanity check recomputes (each costs every
    #: attribution again at every randomisation step)
    attribution_images: int = 64
    ig_steps: int = ATTRIBUTION_IG_STEPS
    smoothgrad_samples: int = ATTRIBUTION_SMOOTHGRAD_SAMPLES
    attribution_sanity_images: int = 8
    #: the pointing game's tolerance, pixels of a 224-px input (compute/methods/localisation.py)
    pointing_tolerance: float = POINTING_TOLERANCE
    #: data quality (compute/analysis/copies.py, quality.py): the pixel distance of a copy, and
    #: the quantiles of the train reference for look-alikes and outliers
    copy_distance: float = COPY_DISTANCE
    lookalike_quantile: float = LOOKALIKE_QUANTILE
    outlier_quantile: float = OUTLIER_QUANTILE
    #: data quality: fewest errors in a confusion cell for it to be clustered
    cluster_min_errors: int = 6

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> JobConfig:
        """Build from the ``xaidash compute`` Namespace (attributes it lacks take the defaults;
        0 is a value, rejected by :func:`validate` with a clear message, not "missing")."""
        a = vars(args)
        base = cls(data=str(a["data"]), store=str(a["store"]))

        def number(name: str, default: int) -> int:
            value = a.get(name)
            return default if value is None else int(value)

        def text(name: str) -> str | None:
            value = a.get(name)
            return None if value is None else str(value)

        def count(name: str) -> int | None:
            value = a.get(name)
            return None if value is None else int(value)

        classes = a.get("classes")
        return dataclasses.replace(
            base,
            checkpoint=text("checkpoint"), model=text("model"), weights=text("weights"),
            classes=None if classes is None else split_list(classes),
            classes_file=text("classes_file"), input_size=count("input_size"), mean=text("mean"),
            std=text("std"), model_args=text("model_args"),
            data_root=text("data_root"),
            methods=METHODS if a.get("methods") is None else split_list(a["methods"]),
            explain=split_list(a.get("explain") or "pred"),
            target_layer=text("target_layer"),
            device=str(a.get("device") or "auto"), precision=str(a.get("precision") or "fp32"),
            batch_size=number("batch_size", base.batch_size), workers=number("workers", base.workers),
            limit_val=count("limit_val"), limit_train=count("limit_train"),
            twins=number("twins", base.twins), projection=text("projection"),
            faithfulness_steps=number("faithfulness_steps", base.faithfulness_steps),
            faithfulness=not bool(a.get("no_faithfulness", False)),
            scorecam_max_channels=count("scorecam_max_channels"),
            shard=text("shard"), finalize=bool(a.get("finalize", False)),
            chunk_size=number("chunk_size", base.chunk_size), new_run=bool(a.get("new_run", False)),
            calibration_images=number("calibration_images", base.calibration_images),
            ray=text("ray"), ray_workers=count("ray_workers"),
            gpus_per_worker=None if a.get("gpus_per_worker") is None else float(a["gpus_per_worker"]),
            threads_per_worker=number("threads_per_worker", base.threads_per_worker),
            sanity_images=number("sanity_images", base.sanity_images),
            road_fractions=base.road_fractions if a.get("road_fractions") is None
            else parse_fractions(a["road_fractions"]),
            road_images=count("road_images"), boxes=text("boxes"), masks=text("masks"),
            attribution_images=number("attribution_images", base.attribution_images),
            ig_steps=number("ig_steps", base.ig_steps),
            smoothgrad_samples=number("smoothgrad_samples", base.smoothgrad_samples),
            attribution_sanity_images=number("attribution_sanity_images", base.attribution_sanity_images),
            localisation_topk=float(a["localisation_topk"]) if a.get("localisation_topk") is not None
            else base.localisation_topk,
            pointing_tolerance=float(a["pointing_tolerance"]) if a.get("pointing_tolerance") is not None
            else base.pointing_tolerance,
            copy_distance=base.copy_distance if a.get("copy_distance") is None else float(a["copy_distance"]),
            lookalike_quantile=base.lookalike_quantile if a.get("lookalike_quantile") is None
            else float(a["lookalike_quantile"]),
            outlier_quantile=base.outlier_quantile if a.get("outlier_quantile") is None
            else float(a["outlier_quantile"]),
            cluster_min_errors=number("cluster_min_errors", base.cluster_min_errors),
        )

    def model_options(self) -> dict[str, object]:
        """``--input-size/--mean/--std/--model-args`` parsed, for a model a user brings."""
        from xaidash.compute.model.external import parse_model_args
        from xaidash.compute.model.preprocessing import parse_triple

        return {"input_size": self.input_size,
                "mean": parse_triple(self.mean, "--mean") if self.mean else None,
                "std": parse_triple(self.std, "--std") if self.std else None,
                "model_args": parse_model_args(self.model_args)}

    def result_args(self) -> dict[str, object]:
        """The arguments that change the published results (job key and recorded config);
        device, batch size, workers and shard do not."""
        return {
            "methods": list(self.methods),
            "explain": list(self.explain),
            "precision": self.precision,
            "limit_val": self.limit_val,
            "limit_train": self.limit_train,
            "twins": self.twins,
            "projection": self.projection,
            "faithfulness": self.faithfulness,
            "faithfulness_steps": self.faithfulness_steps if self.faithfulness else None,
            "scorecam_max_channels": self.scorecam_max_channels if "scorecam" in self.methods else None,
            # chunk ids depend on it, so resuming with another chunk size must not mix chunks
            "chunk_size": self.chunk_size,
            "sanity_images": self.sanity_images,
            "road_fractions": list(self.road_fractions),
            "road_images": self.road_images if self.road_fractions else None,
            "boxes": self.boxes,
            "masks": self.masks,
            "localisation_topk": self.localisation_topk,
            "attribution_images": self.attribution_images,
            "ig_steps": self.ig_steps if self.attribution_images else None,
            "smoothgrad_samples": self.smoothgrad_samples if self.attribution_images else None,
            "attribution_sanity_images": self.attribution_sanity_images if self.attribution_images else None,
            "pointing_tolerance": self.pointing_tolerance,
            "copy_distance": self.copy_distance,
            "lookalike_quantile": self.lookalike_quantile,
            "outlier_quantile": self.outlier_quantile,
            "cluster_min_errors": self.cluster_min_errors,
        }


def _validate_model_options(cfg: JobConfig) -> JobConfig:
    """The options of a model a user brings: where they apply, and parseable (the class names of
    ``--classes-file`` are read here)."""
    from xaidash.compute.model.external import is_external, read_classes_file

    kind = (cfg.model or "").split(":", 1)[0] if is_external(cfg.model) else ""
    given = [o for o, v in (("--input-size", cfg.input_size), ("--mean", cfg.mean), ("--std", cfg.std))
             if v is not None]
    if given and kind not in ("python", "module", "timm"):
        raise UserError(f"{', '.join(given)} set the preprocessing of python:, module: and timm: models; "
                        "built-in models and checkpoints bring their own, hf: models their image processor")
    if cfg.model_args is not None and kind not in ("python", "timm"):
        raise UserError("--model-args are the constructor arguments of a python: or timm: model")
    if cfg.input_size is not None and cfg.input_size < 8:
        raise UserError(f"--input-size must be at least 8, got {cfg.input_size}")
    cfg.model_options()  # UserError for a bad --mean, --std or --model-args
    if cfg.classes_file is not None:
        if cfg.classes is not None:
            raise UserError("give --classes or --classes-file, not both")
        cfg = dataclasses.replace(cfg, classes=read_classes_file(cfg.classes_file))
    return cfg


def split_list(value: object) -> tuple[str, ...]:
    """``"a, b"`` or ``["a", "b"]`` -> ``("a", "b")`` (blank entries dropped)."""
    parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(s for s in (str(p).strip() for p in parts) if s)


def parse_fractions(value: object) -> tuple[float, ...]:
    """``"0.1,0.5"`` -> ``(0.1, 0.5)``; ``"none"`` or empty -> ``()``; UserError for anything else."""
    parts = split_list(value)
    if not parts or (len(parts) == 1 and parts[0].lower() in ("none", "off", "0")):
        return ()
    try:
        out = tuple(float(p) for p in parts)
    except ValueError:
        raise UserError(f"bad --road-fractions {value!r}: expected numbers in (0, 1), e.g. 0.1,0.5,0.9, "
                        "or 'none'") from None
    return out


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; UserError otherwise."""
    if spec is None or spec == "":
        return None
    try:
        i_s, n_s = spec.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise UserError(f"bad --shard {spec!r}: expected I/N with integers, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"bad --shard {spec!r}: need N >= 1 and 0 <= I < N")
    return i, n


def validate_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """Known, de-duplicated, in canonical order; UserError listing the valid ones."""
    if not methods:
        raise UserError(f"--methods is empty; valid methods: {', '.join(METHODS)}")
    for m in methods:
        if m not in METHODS:
            raise choices_error("method", m, METHODS)
    return tuple(m for m in METHODS if m in methods)


def validate_explain(explain: Sequence[str]) -> tuple[str, ...]:
    """``pred`` or ``pred,true``, in canonical order."""
    for e in explain:
        if e not in TARGET_KINDS:
            raise choices_error("explain target", e, TARGET_KINDS)
    if "pred" not in explain:
        raise UserError("--explain must include 'pred' (use pred or pred,true)")
    return tuple(e for e in TARGET_KINDS if e in explain)


def validate(cfg: JobConfig) -> JobConfig:
    """``cfg`` with methods and targets in canonical order; UserError naming the first bad option.

    Checks only what needs no dataset, model or store (those are checked as they are opened).
    """
    from xaidash.compute.analysis.projection import umap_available

    methods = validate_methods(cfg.methods)
    explain = validate_explain(cfg.explain)
    parse_shard(cfg.shard)
    if cfg.precision not in PRECISIONS:
        raise choices_error("precision", cfg.precision, PRECISIONS)
    if cfg.projection is not None and cfg.projection not in PROJECTIONS:
        raise choices_error("projection", cfg.projection, PROJECTIONS)
    if cfg.projection == "umap" and not umap_available():
        raise UserError("--projection umap needs umap-learn (pip install umap-learn), or use pca")
    for name, v, lo in (("--batch-size", cfg.batch_size, 1), ("--chunk-size", cfg.chunk_size, 1),
                        ("--twins", cfg.twins, 0), ("--faithfulness-steps", cfg.faithfulness_steps, 2),
                        ("--workers", cfg.workers, 0), ("--calibration-images", cfg.calibration_images, 1)):
        if v < lo:
            raise UserError(f"{name} must be >= {lo}, got {v}")
    for name, opt in (("--limit-val", cfg.limit_val), ("--limit-train", cfg.limit_train),
                      ("--scorecam-max-channels", cfg.scorecam_max_channels)):
        if opt is not None and opt < 1:
            raise UserError(f"{name} must be >= 1, got {opt}")
    if cfg.sanity_images < 0:
        raise UserError(f"--sanity-images must be >= 0 (0 turns the sanity check off), "
                        f"got {cfg.sanity_images}")
    if cfg.attribution_images < 0:
        raise UserError(f"--attribution-images must be >= 0 (0 turns the attributions off), "
                        f"got {cfg.attribution_images}")
    if cfg.attribution_sanity_images < 0:
        raise UserError(f"--attribution-sanity-images must be >= 0 (0 skips their sanity check), "
                        f"got {cfg.attribution_sanity_images}")
    from xaidash.compute.methods.attributions import AttributionSettings

    AttributionSettings(ig_steps=cfg.ig_steps, smoothgrad_samples=cfg.smoothgrad_samples)  # UserError if bad
    for f in cfg.road_fractions:
        if not 0 < f < 1:
            raise UserError(f"--road-fractions must lie strictly between 0 and 1, got {f}")
    if cfg.road_images is not None and cfg.road_images < 1:
        raise UserError(f"--road-images must be >= 1, got {cfg.road_images} (use --road-fractions none to "
                        "skip ROAD)")
    if not 0 < cfg.localisation_topk <= 100:
        raise UserError(f"--localisation-topk must be in (0, 100], got {cfg.localisation_topk}")
    if not 0 <= cfg.pointing_tolerance <= 224:
        raise UserError(f"--pointing-tolerance must be in [0, 224] pixels (of a 224-px input), "
                        f"got {cfg.pointing_tolerance}")
    if cfg.ray is not None:
        if cfg.shard:
            raise UserError("--ray and --shard are two ways to split one job; use one (--ray spreads the "
                            "chunks over the cluster by itself)")
        if cfg.ray_workers is not None and cfg.ray_workers < 1:
            raise UserError(f"--ray-workers must be >= 1, got {cfg.ray_workers}")
        if cfg.threads_per_worker < 1:
            raise UserError(f"--threads-per-worker must be >= 1, got {cfg.threads_per_worker}")
        if cfg.gpus_per_worker is not None and not cfg.gpus_per_worker >= 0:
            raise UserError(f"--gpus-per-worker must be >= 0, got {cfg.gpus_per_worker}")
    if not 0.0 <= cfg.copy_distance <= 1.0:  # also rejects NaN
        raise UserError(f"--copy-distance must be in [0, 1] (a mean pixel difference), "
                        f"got {cfg.copy_distance}")
    for name, q in (("--lookalike-quantile", cfg.lookalike_quantile),
                    ("--outlier-quantile", cfg.outlier_quantile)):
        if not 0.0 < q < 1.0:
            raise UserError(f"{name} must be in (0, 1), got {q}")
    if cfg.cluster_min_errors < 2:
        raise UserError(f"--cluster-min-errors must be >= 2, got {cfg.cluster_min_errors}")
    if cfg.checkpoint and (cfg.model or cfg.weights):
        raise UserError("give either --checkpoint or --model/--weights, not both")
    if not cfg.checkpoint and not cfg.model:
        raise UserError("no model: give --checkpoint CKPT, or --model ARCH --weights imagenet|PATH")
    cfg = _validate_model_options(cfg)
    fractions = tuple(sorted(set(cfg.road_fractions)))
    return dataclasses.replace(cfg, methods=methods, explain=explain, road_fractions=fractions)
