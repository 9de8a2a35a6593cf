"""``xaidash compute``: run a model over every validation image and publish one run.

Light imports only (argparse/stdlib): ``xaidash --help`` must not import torch. The job itself
lives in :mod:`xaidash.compute.pipeline.job` and is imported inside :func:`run`.
"""

from __future__ import annotations

import argparse

from xaidash.compute.analysis.copies import COPY_DISTANCE
from xaidash.compute.analysis.quality import LOOKALIKE_QUANTILE, OUTLIER_QUANTILE
from xaidash.compute.cli.args import add_data_arguments, add_device_argument, add_loader_arguments
from xaidash.constants import (
    ATTRIBUTION_IG_STEPS,
    ATTRIBUTION_SMOOTHGRAD_SAMPLES,
    METHODS,
    POINTING_TOLERANCE,
    PRECISIONS,
    PROJECTIONS,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Define the ``compute`` options (shared data/device options come from common_args)."""
    add_data_arguments(parser)
    add_device_argument(parser)
    add_loader_arguments(parser, batch_size=64, workers=2)

    model = parser.add_argument_group("model (a checkpoint, a built-in architecture, or your own; README "
                                      "'Bring your own model')")
    model.add_argument("--checkpoint", metavar="CKPT", help="checkpoint written by `xaidash train`")
    model.add_argument("--model", metavar="SPEC",
                       help="instead of --checkpoint: a built-in architecture (with --weights), "
                            "python:FILE.py:FUNC or python:pkg.mod:FUNC (FUNC() returns an nn.Module giving "
                            "logits), module:FILE (an nn.Module saved whole with torch.save), timm:NAME, "
                            "or hf:DIR (a save_pretrained folder)")
    model.add_argument("--weights", metavar="imagenet|PATH",
                       help="'imagenet' (pretrained: built-in and timm: models) or a state_dict file")
    model.add_argument("--classes", metavar="a,b,c",
                       help="class names in output order, where the model does not carry them "
                            "(default: the dataset's classes; must match them)")
    model.add_argument("--classes-file", metavar="FILE",
                       help="class names, one a line (instead of --classes)")
    model.add_argument("--input-size", type=int, default=None, metavar="N",
                       help="python: models: resize to an N x N square, no crop (default 224); timm: models: "
                            "overrides timm's eval transform")
    model.add_argument("--mean", metavar="r,g,b", help="python:/timm: models: normalisation mean "
                                                       "(default ImageNet's; timm: the model's)")
    model.add_argument("--std", metavar="r,g,b", help="python:/timm: models: normalisation std")
    model.add_argument("--model-args", metavar="JSON",
                       help="python:/timm: models: keyword arguments of FUNC / timm.create_model, as a JSON "
                            "object, e.g. '{\"img_size\": 64}'")

    parser.add_argument("--store", required=True, metavar="DIR",
                        help="results store directory (created if missing)")
    parser.add_argument("--methods", default=",".join(METHODS), metavar="LIST",
                        help=f"comma-separated CAM methods (default all: {','.join(METHODS)})")
    parser.add_argument("--explain", default="pred", metavar="pred|pred,true",
                        help="targets to explain: the predicted class, and also the true class of "
                             "wrong predictions with 'pred,true' (default pred)")
    parser.add_argument("--target-layer", default=None, metavar="NAME",
                        help="dotted module name of the CAM layer (default: the model's last conv block; "
                             "found for your own models: the last spatial map, a ViT's last block, a Swin's "
                             "last stage - the run records which and why)")
    parser.add_argument("--calibration-images", type=int, default=16, metavar="N",
                        help="bf16 runs: images (stratified) whose Score-CAM and faithfulness are also "
                             "computed in fp32, to measure and record the deviation (default 16)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="arithmetic of the forward-only bulk (Score-CAM's masked forwards, "
                             "faithfulness): "
                             "fp32 (default) or bf16 (several times faster on CPUs with AMX and on recent "
                             "GPUs; the run measures and records the deviation). Predictions, embeddings "
                             "and the gradient maps are always fp32")
    parser.add_argument("--twins", type=int, default=5, metavar="K",
                        help="twins and counterfactuals per image and class (default 5)")
    parser.add_argument("--projection", default=None, choices=PROJECTIONS,
                        help="2-D projection of the embeddings (default umap if installed, else pca)")
    parser.add_argument("--faithfulness-steps", type=int, default=16, metavar="N",
                        help="deletion/insertion steps (default 16)")
    parser.add_argument("--no-faithfulness", action="store_true",
                        help="skip the faithfulness metrics (deletion/insertion, trivial baselines, ROAD)")
    parser.add_argument("--scorecam-max-channels", type=int, default=None, metavar="N",
                        help="approximate Score-CAM with the top-N channels by mean activation "
                             "(default: exact, all channels; the run records the approximation)")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="process only chunks with index %% N == I; the last shard to finish "
                             "publishes the run (or use --finalize)")
    parser.add_argument("--finalize", action="store_true",
                        help="skip the per-image phase and run the global phase (all chunks must be done)")
    parser.add_argument("--new-run", action="store_true",
                        help="publish a new run even if an identical one (same model, data and "
                             "arguments) already exists; by default that run is reported and reused")
    trust = parser.add_argument_group("can I trust these maps? (docs/METHODS.md)")
    trust.add_argument("--sanity-images", type=int, default=64, metavar="N",
                       help="val images (stratified, seeded) of the model-parameter randomisation test; "
                            "0 turns it off (default 64)")
    trust.add_argument("--road-fractions", default="0.1,0.3,0.5,0.7,0.9", metavar="LIST",
                       help="ROAD removal fractions in (0, 1), comma-separated, or 'none' to skip ROAD "
                            "(default 0.1,0.3,0.5,0.7,0.9)")
    trust.add_argument("--road-images", type=int, default=None, metavar="N",
                       help="ROAD on a stratified, seeded sample of N val images (default: all)")
    trust.add_argument("--boxes", default=None, metavar="FILE.csv",
                       help="ground-truth boxes (header path,x0,y0,x1,y1; original pixels) for the "
                            "localisation scores; imagefolder:DIR datasets may instead have masks in "
                            "DIR/masks/val/<class>/<name>.png")
    trust.add_argument("--masks", default=None, metavar="DIR",
                       help="ground-truth object masks for any dataset: DIR/<source>.png per val image "
                            "(<source> as the dashboard shows it, with or without its split folder; "
                            "non-zero = object, the image's size)")
    trust.add_argument("--localisation-topk", type=float, default=20.0, metavar="K",
                       help="k of the IoU of the map's top-k %% pixels with the object (default 20)")
    trust.add_argument("--pointing-tolerance", type=float, default=POINTING_TOLERANCE, metavar="PX",
                       help="pointing game: a hit when the map's maximum is within PX pixels of the "
                            "object, in pixels of a 224-px input, scaled to the model's (default "
                            "%(default)g, as Zhang et al. 2016; 0 = inside the object)")
    attr = parser.add_argument_group("pixel attributions through Captum, for a sample (docs/METHODS.md)")
    attr.add_argument("--attribution-images", type=int, default=64, metavar="N",
                      help="val images (stratified, seeded: the sanity check's sampler, so the smaller "
                           "sample lies inside the larger) with Integrated Gradients from a black and a "
                           "blurred baseline and SmoothGrad, stored as 32x32 maps next to the CAMs and "
                           "scored like them; tens of forward + backward passes per image; 0 turns them "
                           "off (default 64)")
    attr.add_argument("--ig-steps", type=int, default=ATTRIBUTION_IG_STEPS, metavar="N",
                      help="Integrated Gradients' Gauss-Legendre points per image (default %(default)s)")
    attr.add_argument("--smoothgrad-samples", type=int, default=ATTRIBUTION_SMOOTHGRAD_SAMPLES, metavar="N",
                      help="SmoothGrad's noisy copies per image (noise sigma 15 %% of the input range; "
                           "default %(default)s)")
    attr.add_argument("--attribution-sanity-images", type=int, default=8, metavar="N",
                      help="images of both samples whose attributions the sanity check recomputes at "
                           "every randomisation step (default %(default)s; 0 = none)")
    quality = parser.add_argument_group(
        "data quality (label issues, leaks, look-alikes, outliers, duplicates, image issues, error clusters)")
    quality.add_argument("--copy-distance", type=float, default=COPY_DISTANCE, metavar="D",
                         help="a val image is a leak (a copy of a train image) when their pHashes are "
                              "close and their blurred, aligned 16x16 grayscale differ by at most D "
                              "(mean |difference|, pixels in [0,1]; default %(default)g, measured in "
                              "docs/METHODS.md); the same distance groups near-duplicates in a split")
    quality.add_argument("--lookalike-quantile", type=float, default=LOOKALIKE_QUANTILE, metavar="Q",
                         help="a val image is a look-alike of a train image (never a leak) when it is "
                              "closer to it than the Q quantile of train images' leave-one-out "
                              "nearest-neighbour similarities (default %(default)g)")
    quality.add_argument("--outlier-quantile", type=float, default=OUTLIER_QUANTILE, metavar="Q",
                         help="a val image is an outlier when its nearest train image is less similar "
                              "than the Q quantile of that reference (default %(default)g; needs at "
                              "least 1/Q train images, else nothing is flagged)")
    quality.add_argument("--cluster-min-errors", type=int, default=6, metavar="N",
                         help="cluster the errors of every confusion cell with at least N of them "
                              "(default 6)")
    ray = parser.add_argument_group("scale out (Ray; pip install 'xaidash[ray]')")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="local|auto|ADDRESS",
                     help="run the per-image phase on Ray workers: 'local' (default when given alone) starts "
                          "Ray on this machine, 'auto' joins the cluster of `ray start` on this node, "
                          "HOST:PORT joins that head (see docs/SCALING.md)")
    ray.add_argument("--ray-workers", type=int, default=None, metavar="N",
                     help="Ray workers (actors holding the model; default: one per GPU, else one per "
                          "--threads-per-worker CPU cores)")
    ray.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                     help="GPUs per worker (default 1 when the cluster has GPUs, else 0; 0.5 = two per GPU)")
    ray.add_argument("--threads-per-worker", type=int, default=1, metavar="T",
                     help="torch threads (and CPU cores reserved) per worker (default 1)")
    parser.add_argument("--chunk-size", type=int, default=256, metavar="N",
                        help="val/train images per resumable chunk (default 256)")


def run(args: argparse.Namespace) -> int:
    """Run the job; returns the process exit code."""
    from xaidash.compute.pipeline.job import JobConfig, run_job

    result = run_job(JobConfig.from_args(args))
    return 0 if result.ok else 1
