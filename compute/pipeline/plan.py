"""The job's plan: everything the per-chunk function needs, decided once and never changed.

:func:`make_plan` validates the configuration, opens the dataset, loads the model, picks the
images and cuts them into deterministic chunks, and computes the job key; it raises a UserError
before any heavy work. The resulting :class:`JobPlan` is frozen: the per-image phase, the
global phase and the publish protocol only read it. It holds no store: the job opens that.

The job key hashes everything that changes the results (model identity, dataset fingerprint,
result-affecting arguments) but not the device, batch size, workers or shard, so a re-run with
the same arguments — or another shard of the same job — writes into the same staging.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass

import torch

from xaidash.compute.datasets.sources import Dataset, Item, open_dataset, subsample
from xaidash.compute.device import configure_device, resolve_device
from xaidash.compute.hostmem import tune_host_allocator
from xaidash.compute.methods.attributions import AttributionSettings
from xaidash.compute.methods.cams import CamEngine
from xaidash.compute.methods.localisation import GroundTruth, ground_truth_digest, open_ground_truth
from xaidash.compute.methods.sanity import sanity_sample
from xaidash.compute.model.architectures import ModelParts
from xaidash.compute.model.checkpoint import check_classes
from xaidash.compute.model.layers import TargetLayer, target_for
from xaidash.compute.model.loading import LoadedModel, for_inference, load_model, resolve_model_ref
from xaidash.compute.pipeline.config import JobConfig, parse_shard, validate
from xaidash.errors import UserError

log = logging.getLogger(__name__)

#: Seed of the ROAD sample (``--road-images``).
ROAD_SAMPLE_SEED = 22

#: Bump when the per-image computation changes meaning, so old staging is never reused.
#: 2: bf16 applies to the forward-only stages only (the gradient forward is always fp32).
#: 3: the trust tables (sanity, baseline_faithfulness, road, localisation).
JOB_FORMAT = 3


@dataclass(frozen=True)
class Chunk:
    """A deterministic unit of work: ``index`` is global (val chunks first, then train)."""

    index: int
    chunk_id: str
    split: str
    items: tuple[Item, ...]


@dataclass(frozen=True)
class JobPlan:
    """One compute job, decided: the configuration (validated), the data, the model, the chunks."""

    cfg: JobConfig
    shard: tuple[int, int] | None
    device: torch.device
    dataset: Dataset
    fingerprint: str
    loaded: LoadedModel
    model: torch.nn.Module  #: the network ready for inference on ``device``
    target_layer: str
    linear_head: str | None  #: None: CAM is not applicable at ``target_layer``
    #: the layer, how its output becomes the map, whose input the embeddings are, and why
    target: TargetLayer
    val_items: tuple[Item, ...]
    train_items: tuple[Item, ...]
    chunks: tuple[Chunk, ...]
    job_key: str
    #: "can I trust these maps?" (compute/pipeline/trust_step.py): the sanity sample, the ROAD sample (None:
    #: every val image) and the ground truth for localisation (None: the dataset has none)
    sanity_ids: frozenset[str] = frozenset()
    road_ids: frozenset[str] | None = None
    ground_truth: GroundTruth | None = None
    #: pixel attributions (compute/pipeline/attribution_step.py): the sample, and the images of it whose
    #: attributions the sanity check recomputes. Both come from the sanity sampler (same seed), whose
    #: picks for a smaller n are a subset of those for a larger one: the smaller of the attribution and
    #: sanity samples lies inside the larger, and ``attribution_sanity_ids`` inside both
    attribution_ids: frozenset[str] = frozenset()
    attribution_sanity_ids: frozenset[str] = frozenset()

    @property
    def methods(self) -> tuple[str, ...]:
        return self.cfg.methods

    @property
    def explain(self) -> tuple[str, ...]:
        return self.cfg.explain

    @property
    def parts(self) -> ModelParts:
        return self.loaded.parts

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.loaded.classes

    @property
    def channels_last(self) -> bool:
        """Inputs and model in channels_last: on CUDA, where cuDNN is faster in it."""
        return self.device.type == "cuda"

    @property
    def masked_channels_last(self) -> bool | None:
        """Score-CAM's masked batches: channels_last on CUDA; on CPU the engine's own choice."""
        return True if self.channels_last else None

    def label_name(self, label: int | None) -> str | None:
        if label is None or self.dataset.classes is None:
            return None
        return self.dataset.classes[label]

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """The batch on the device, channels-last on every device: cuDNN (with the model in
        channels_last) and oneDNN on CPU (whatever the model's layout) are faster with NHWC input.
        On the 2-core dev CPU the gradient trio's forward + backward of 32 ResNet-18 images at
        224 px took 1.0 s instead of 1.7 s (a plain forward 1.15 s instead of 2.7 s; busy machine,
        best of 3); the maps moved by at most 3.3e-6 (summation order)."""
        return x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def my_chunks(self) -> list[Chunk]:
        """The chunks this process computes: all of them, or those of its shard."""
        if self.shard is None:
            return list(self.chunks)
        i, n = self.shard
        return [c for c in self.chunks if c.index % n == i]

    def result_args(self) -> dict[str, object]:
        """Arguments that change the published results (part of the job key and config)."""
        return {**self.cfg.result_args(), "target_layer": self.target_layer}

    def config_json(self) -> str:
        """The run's recorded configuration, including the model reference explain.py reloads."""
        cfg = dataclasses.asdict(self.cfg)
        cfg.update(methods=list(self.methods), explain=list(self.explain), target_layer=self.target_layer,
                   job_key=self.job_key)
        # the Score-CAM cap keeps the explain page's maps like the run's
        cfg["model"] = {**self.loaded.model_ref, "target_layer": self.target_layer,
                        "target": self.target.to_dict(), "preprocessing": self.parts.preprocessing.to_dict(),
                        "scorecam_max_channels": self.cfg.scorecam_max_channels}
        cfg["attribution"] = self.attribution_record()
        return json.dumps(cfg, sort_keys=True, default=str)

    def attribution_settings(self) -> AttributionSettings:
        """How this run's attributions are computed (compute/methods/attributions.py)."""
        return AttributionSettings(ig_steps=self.cfg.ig_steps, smoothgrad_samples=self.cfg.smoothgrad_samples)

    def attribution_record(self) -> dict[str, object] | None:
        """What the run's config says about its attributions (None: off)."""
        if not self.attribution_ids:
            return None
        return {**self.attribution_settings().record(self.parts.preprocessing.std),
                "images": len(self.attribution_ids), "sanity_images": len(self.attribution_sanity_ids),
                "sample": "stratified by class, seeded (the sanity sample's sampler)"}

    def precision_record(self) -> dict[str, object]:
        """What ``runs.precision_json`` says besides the measured deviation."""
        stages = ["scorecam", "faithfulness"] if self.cfg.precision == "bf16" else []
        return {"precision": self.cfg.precision, "bf16_stages": stages, **configure_device(self.device)}

    def cam_engine(self, model: torch.nn.Module | None = None) -> CamEngine:
        """The CAM engine on the run's target layer (of ``model``: a randomised copy, say)."""
        return CamEngine(self.model if model is None else model, self.target_layer, self.linear_head,
                         layout=self.target.layout, embedding_layer=self.target.embedding_layer)

    def with_job_key(self, job_key: str) -> JobPlan:
        return dataclasses.replace(self, job_key=job_key)


def make_plan(cfg: JobConfig) -> JobPlan:
    """Validate everything and load the model; UserError before any real work."""
    tune_host_allocator()
    cfg = validate(cfg)
    device = resolve_device(cfg.device)
    dataset = open_dataset(cfg.data, cfg.data_root)
    loaded = load_model(resolve_model_ref(cfg.checkpoint, cfg.model, cfg.weights, cfg.classes, dataset,
                                          cfg.model_options()))
    check_classes(loaded.classes, dataset)
    parts = loaded.parts
    # found or checked by one probe forward (UserError naming the nearest layers); CAM needs
    # GAP + one linear layer on *this* layer
    target = target_for(parts, len(loaded.classes), cfg.target_layer)
    target_layer, linear_head = target.name, target.linear_head
    if "cam" in cfg.methods and linear_head is None:
        log.warning("cam is not applicable to %s at layer %s (needs global average pooling + one "
                    "linear layer after it); the run will not have CAM maps", parts.arch, target_layer)

    val = subsample(dataset.items("val"), cfg.limit_val)
    if not val:
        raise UserError(f"dataset {cfg.data!r} has no validation images")
    # Twins need labels: an unlabeled train split (there is none today) would be skipped.
    train = subsample(dataset.items("train"), cfg.limit_train) if dataset.labeled else []
    chunks: list[Chunk] = []
    for split, items in (("val", val), ("train", train)):
        for n, s in enumerate(range(0, len(items), cfg.chunk_size)):
            chunks.append(Chunk(len(chunks), f"{split}-{n:06d}", split, tuple(items[s : s + cfg.chunk_size])))

    fingerprint = dataset.fingerprint()
    ground_truth = open_ground_truth(dataset, cfg.data, cfg.boxes, val, cfg.masks)
    if ground_truth is not None:
        log.info("localisation: ground truth for %d of %d val images (%s)", len(ground_truth), len(val),
                 ground_truth.source)
    road_ids = (None if cfg.road_images is None or cfg.road_images >= len(val)
                else frozenset(it.image_id for it in subsample(val, cfg.road_images, seed=ROAD_SAMPLE_SEED)))
    plan = JobPlan(
        cfg=cfg, shard=parse_shard(cfg.shard), device=device, dataset=dataset, fingerprint=fingerprint,
        loaded=loaded, model=for_inference(parts.model, device), target_layer=target_layer, target=target,
        linear_head=linear_head, val_items=tuple(val), train_items=tuple(train), chunks=tuple(chunks),
        job_key="", sanity_ids=sanity_sample(val, cfg.sanity_images), road_ids=road_ids,
        ground_truth=ground_truth, attribution_ids=sanity_sample(val, cfg.attribution_images),
        attribution_sanity_ids=sanity_sample(
            val, min(cfg.sanity_images, cfg.attribution_images, cfg.attribution_sanity_images)),
    )
    return plan.with_job_key(_job_key(plan))


def _job_key(plan: JobPlan) -> str:
    payload = {
        "format": JOB_FORMAT,
        "model": plan.loaded.identity,
        "dataset": {"spec_kind": plan.dataset.kind, "fingerprint": plan.fingerprint},
        "args": plan.result_args(),
        "ground_truth": ground_truth_digest(plan.ground_truth),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"compute-{digest[:32]}"
