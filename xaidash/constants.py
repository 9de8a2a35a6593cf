"""The names every layer agrees on, in one torch-free module.

The CLI (argument choices), the compute job, the store (schemas, validation), the dashboard (URL
parsing, labels) and the benches import these; none of them spells a method name or an id pattern
itself. Importing this module costs nothing (stdlib only), so ``xaidash --help`` stays light.
"""

from __future__ import annotations

import re
from typing import Final

#: The class-activation-map methods, in canonical (display and storage) order: the classic four,
#: then the four of issue 22 (compute/methods/cam_maps.py; docs/METHODS.md).
METHODS: Final[tuple[str, ...]] = (
    "cam", "gradcam", "gradcampp", "scorecam", "layercam", "xgradcam", "hirescam", "eigencam")
#: The methods that come from the shared forward + backward pass (Score-CAM is the one with extra
#: forwards). CAM and EigenCAM need only the forward; the others the one backward too.
GRADIENT_METHODS: Final[tuple[str, ...]] = (
    "cam", "gradcam", "gradcampp", "layercam", "xgradcam", "hirescam", "eigencam")
#: The methods the gallery, image and compare pages show until the user picks others (a grid of
#: every method a run has is too wide to read; a run computes all of METHODS unless told otherwise).
CLASSIC_METHODS: Final[tuple[str, ...]] = ("cam", "gradcam", "gradcampp", "scorecam")
METHOD_LABELS: Final[dict[str, str]] = {
    "cam": "CAM",
    "gradcam": "Grad-CAM",
    "gradcampp": "Grad-CAM++",
    "scorecam": "Score-CAM",
    "layercam": "LayerCAM",
    "xgradcam": "XGrad-CAM",
    "hirescam": "HiResCAM",
    "eigencam": "Eigen-CAM",
}

#: Pixel-level attributions through Captum (compute/methods/attributions.py), computed on a sample of
#: val images (``--attribution-images``) and stored in the ``cams`` table next to the CAMs at a fixed
#: reduced grid: Integrated Gradients from a black and from a blurred baseline, and SmoothGrad.
ATTRIBUTION_METHODS: Final[tuple[str, ...]] = ("ig_black", "ig_blur", "smoothgrad")
ATTRIBUTION_LABELS: Final[dict[str, str]] = {
    "ig_black": "IG (black)",
    "ig_blur": "IG (blur)",
    "smoothgrad": "SmoothGrad",
}


def method_label(method: str) -> str:
    """The display name of a CAM method or a pixel attribution (the name itself when unknown)."""
    return METHOD_LABELS.get(method) or ATTRIBUTION_LABELS.get(method, method)


#: Side of the square grid attribution maps are stored at: 32 x 32 float32 = 4 KB per map, within the
#: 8 KB per image and method the store allows them (docs/METHODS.md, "Pixel attributions").
ATTRIBUTION_GRID: Final[int] = 32
#: Integrated Gradients' quadrature points and SmoothGrad's noisy copies per image (``--ig-steps``,
#: ``--smoothgrad-samples``): tens of forward + backward passes per image, hence the sample.
ATTRIBUTION_IG_STEPS: Final[int] = 32
ATTRIBUTION_SMOOTHGRAD_SAMPLES: Final[int] = 16

#: The faithfulness scores of every map, as the faithfulness tables name their columns (compute
#: computes them in compute/methods/faithfulness.py, the store reads and averages them).
FAITHFULNESS_SCORES: Final[tuple[str, ...]] = ("drop", "increase", "deletion_auc", "insertion_auc")
#: Direction of each faithfulness score: +1 higher is better, -1 lower is better (the dashboard's
#: tables and the job's method ranking sign their margins with it).
FAITHFULNESS_DIRECTIONS: Final[dict[str, int]] = {
    "drop": -1, "increase": 1, "deletion_auc": -1, "insertion_auc": 1}
#: The sanity check's pass line: a method passes the cascading randomisation test when its mean
#: Spearman correlation with the trained map falls below this at some step (store/read/trust_tables.py
#: holds the one rule; the dashboard's verdicts and the job's method ranking both call it).
SANITY_PASS_CORRELATION: Final[float] = 0.3
#: The per-image scores the method ranking (``method_stats``) gives a mean and a 95 % bootstrap CI
#: for: the four faithfulness scores, Insertion - Deletion AUC, and ROAD's MoRF / LeRF means and
#: their gap LeRF - MoRF (compute/analysis/method_ranking.py defines them).
METHOD_METRICS: Final[tuple[str, ...]] = (
    *FAITHFULNESS_SCORES, "ins_del", "road_morf", "road_lerf", "road_gap")
#: Trivial baseline maps scored next to the methods (compute/methods/baselines.py): seeded random,
#: centred Gaussian.
BASELINES: Final[tuple[str, ...]] = ("random", "centre")
BASELINE_LABELS: Final[dict[str, str]] = {"random": "random map", "centre": "centre Gaussian"}
#: ROAD's removal orders: most relevant first, least relevant first (compute/methods/road.py).
ROAD_ORDERS: Final[tuple[str, ...]] = ("morf", "lerf")
ROAD_FRACTIONS: Final[tuple[float, ...]] = (0.1, 0.3, 0.5, 0.7, 0.9)
#: the pointing game's tolerance in pixels of a 224-px input (Zhang et al. 2016; TorchRay's too)
POINTING_TOLERANCE: Final[float] = 15.0

#: Which class a map explains: the predicted one, or the true one of a wrong prediction.
TARGET_KINDS: Final[tuple[str, ...]] = ("pred", "true")
NEIGHBOR_KINDS: Final[tuple[str, ...]] = ("twin", "counterfactual")
SPLITS: Final[tuple[str, ...]] = ("train", "val")

#: Gallery filters and sort keys (the reader's GalleryQuery and the dashboard's URL parser).
OUTCOMES: Final[tuple[str, ...]] = ("all", "correct", "wrong")
SORTS: Final[tuple[str, ...]] = ("confidence", "loss", "faithfulness", "disagreement", "label_quality")
#: Image-property issues of a val image (``quality.image_issues``, compute/analysis/image_issues.py).
IMAGE_ISSUES: Final[tuple[str, ...]] = (
    "dark", "overexposed", "blurry", "low_information", "odd_size", "odd_aspect", "grayscale")
#: Data-quality flags the gallery filters by (the run's ``quality`` table; absent in older runs,
#: whose quality tables have only the first, leak and outlier): the boolean columns, whether the
#: image is in a near-duplicate group, and each image issue.
QUALITY_FLAGS: Final[tuple[str, ...]] = (
    "mislabelled", "leak", "lookalike", "outlier", "duplicate", *IMAGE_ISSUES)

#: Arithmetic precision of the network forwards.
PRECISIONS: Final[tuple[str, ...]] = ("fp32", "bf16")
#: 2-D projections of the embeddings.
PROJECTIONS: Final[tuple[str, ...]] = ("umap", "pca", "tsne")
#: Architectures ``train`` and ``compute`` can build.
ARCHITECTURES: Final[tuple[str, ...]] = (
    "resnet18", "resnet34", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "vgg16",
    "efficientnet_lite0",
)

#: Valid run ids (also the directory name of a run). Validated before any use.
RUN_ID_PATTERN: Final = r"^[0-9A-Za-z_-]{1,64}$"
#: Valid image ids: 16 hex chars of sha1 (see compute/datasets/sources.py ``image_id_for``).
IMAGE_ID_PATTERN: Final = r"^[0-9a-f]{16}$"
#: Valid chunk ids (file names of staged parts).
CHUNK_ID_PATTERN: Final = r"^[0-9A-Za-z_.-]{1,128}$"
#: Valid dataset fingerprints (directory names under images/).
FINGERPRINT_PATTERN: Final = r"^[0-9A-Za-z_-]{1,128}$"
#: Valid method names as they may appear in a URL or a stored row.
METHOD_PATTERN: Final = r"^[a-z0-9_]{1,32}$"

RUN_ID_RE: Final = re.compile(RUN_ID_PATTERN)
IMAGE_ID_RE: Final = re.compile(IMAGE_ID_PATTERN)
CHUNK_ID_RE: Final = re.compile(CHUNK_ID_PATTERN)
FINGERPRINT_RE: Final = re.compile(FINGERPRINT_PATTERN)
METHOD_RE: Final = re.compile(METHOD_PATTERN)
