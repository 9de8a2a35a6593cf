"""Arrow schemas of every table in a results store, with a doc string per column.

This module is the single source of truth for what a store holds. ``docs/STORE.md`` is generated
from it (``python -m store.schema > docs/STORE.md``), so the documentation cannot drift from the
files that are actually written.

Design notes (why the types are what they are):

* Maps are ``list<float32>`` at the target layer's native resolution (e.g. 7x7 = 49 values):
  storing raw numbers, not PNGs, keeps them exact, lets the dashboard pick any colormap/alpha,
  and at 49 floats a map is smaller than a PNG anyway.
* Embedding vectors are ``list<float16>``: half the bytes of float32 (512-d: 1 KiB instead of
  2 KiB per image, the biggest item per image) and cosine similarities of post-ReLU pooled
  activations are unchanged to ~3 decimals. DuckDB >= 1.1 reads Parquet FLOAT16 as FLOAT, and
  pyarrow/pandas read it as ``numpy.float16``.
* Class indices are ``int32`` (ImageNet has 1000 classes, so int16 would do, but int32 is what
  every tool expects and Parquet's dictionary/RLE encoding removes the difference on disk).
* ``run_id`` is repeated in every per-run table so the files stay self-describing when copied
  out of the store or unioned across runs (``read_parquet('runs/*/predictions.parquet')``). It is
  one dictionary-encoded value per file, i.e. a few bytes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pyarrow as pa

from xaidash.store.schema_methods import METHOD_RANKING, METHOD_STATS

#: Version of the on-disk format. Bump when a column changes meaning or type, or a table is
#: renamed; adding a nullable column does not need a bump. Each run's ``manifest.json`` records
#: the version it was written with and readers refuse (skip) runs of another version.
SCHEMA_VERSION = 1



def _f(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    """A field whose metadata carries its documentation (kept in the Parquet footer too)."""
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


_RUN_ID = _f("run_id", pa.string(), "Run this row belongs to (directory name under runs/).", False)
_IMAGE_ID = _f(
    "image_id",
    pa.string(),
    "Stable image id: 16 hex chars of sha1(kind:split:key); identical across runs of the same data.",
    False,
)
_SPLIT = _f("split", pa.string(), "'train' or 'val'.", False)
_METHOD = _f("method", pa.string(), "CAM method: 'cam', 'gradcam', 'gradcampp', 'scorecam', 'layercam', "
             "'xgradcam', 'hirescam' or 'eigencam' (constants.METHODS); or a pixel attribution of the "
             "sampled images: 'ig_black', 'ig_blur', 'smoothgrad'.", False)

RUNS = pa.schema(
    [
        _RUN_ID,
        _f("created", pa.timestamp("us", tz="UTC"), "When the run was published (UTC).", False),
        _f("status", pa.string(), "'complete', or 'partial' when some images failed to load.", False),
        _f("dataset_spec", pa.string(), "Dataset SPEC as given to compute (e.g. 'cifar10:cat,dog')."),
        _f(
            "dataset_fingerprint",
            pa.string(),
            "sha1 over the dataset's kind, classes, ids, labels and file sizes; runs with the same "
            "fingerprint are comparable image by image and share thumbnails.",
            False,
        ),
        _f(
            "dataset_kind", pa.string(), "'imagefolder', 'folder', 'fashion-mnist', 'cifar10' or 'synthetic'."
        ),
        _f("checkpoint_path", pa.string(), "Absolute path of the checkpoint used (null for plain weights)."),
        _f("checkpoint_sha256", pa.string(), "sha256 of the checkpoint file."),
        _f("arch", pa.string(), "Architecture name (e.g. 'resnet18')."),
        _f("class_names", pa.list_(pa.string()), "Class names, indexed by class index.", False),
        _f("methods", pa.list_(pa.string()), "CAM methods computed in this run.", False),
        _f("target_layer", pa.string(), "Dotted name of the layer the maps come from (e.g. 'layer4')."),
        _f("map_h", pa.int32(), "Height of the stored maps (native resolution of target_layer)."),
        _f("map_w", pa.int32(), "Width of the stored maps."),
        _f("num_val", pa.int64(), "Number of validation images with predictions."),
        _f("num_train", pa.int64(), "Number of train (reference) images with embeddings."),
        _f("num_failed", pa.int64(), "Number of images that could not be loaded (see failures)."),
        _f("accuracy", pa.float64(), "Top-1 accuracy on val; null when the dataset is unlabeled."),
        _f("scorecam_note", pa.string(), "Why Score-CAM is approximated; null when exact."),
        _f(
            "precision_json",
            pa.string(),
            "JSON: the arithmetic of the forward-only stages ('fp32' or 'bf16'), TF32 on CUDA, and for "
            "bf16 the deviation measured against fp32 on a calibration sample (max / median |Δmap| of "
            "Score-CAM, |Δscore| of the faithfulness metrics). Null for runs before it existed.",
        ),
        _f("config_json", pa.string(), "JSON of the compute configuration (incl. 'model' reference)."),
        _f("versions_json", pa.string(), "JSON of library versions (xaidash, torch, ...)."),
        _f("timings_json", pa.string(), "JSON of phase timings in seconds."),
        _f("device", pa.string(), "Device compute ran on (e.g. 'cpu', 'cuda:0')."),
        _f("schema_version", pa.int32(), "Store schema version the run was written with.", False),
        _f("job_key", pa.string(), "Key of the compute job; a job key is published at most once."),
    ]
)

IMAGES = pa.schema(
    [
        _f("dataset_fingerprint", pa.string(), "Dataset fingerprint (see runs).", False),
        _IMAGE_ID,
        _SPLIT,
        _f("label", pa.int32(), "True class index; null when unlabeled."),
        _f("label_name", pa.string(), "True class name; null when unlabeled."),
        _f("source", pa.string(), "Human-readable origin: relative path or 'fashion-mnist/t10k#123'."),
        _f("width", pa.int32(), "Original image width in pixels."),
        _f("height", pa.int32(), "Original image height in pixels."),
        _f("thumbnail", pa.binary(), "PNG or JPEG bytes, longest side <= 96 px (null if none)."),
    ]
)

PREDICTIONS = pa.schema(
    [
        _RUN_ID,
        _IMAGE_ID,
        _SPLIT,
        _f("label", pa.int32(), "True class index; null when unlabeled."),
        _f("label_name", pa.string(), "True class name; null when unlabeled."),
        _f("pred", pa.int32(), "Predicted class index (argmax).", False),
        _f("pred_name", pa.string(), "Predicted class name.", False),
        _f("confidence", pa.float32(), "Softmax probability of the predicted class.", False),
        _f("probabilities", pa.list_(pa.float32()), "Softmax probabilities of all classes (sum 1).", False),
        _f("correct", pa.bool_(), "pred == label; null when unlabeled."),
        _f("loss", pa.float32(), "Cross-entropy -log p[label]; null when unlabeled."),
        _f("runner_up", pa.int32(), "Second most probable class index."),
        _f(
            "cam_disagreement",
            pa.float32(),
            "1 - mean pairwise Pearson correlation of the methods' pred-target maps (0 = agree).",
        ),
    ]
)

#: The predictions columns of the reader's per-run cache rows, in file order: all but ``run_id``
#: (``probabilities`` is kept in memory for small heads only; big heads read it per image).
CACHED_PREDICTION_COLUMNS: tuple[str, ...] = tuple(n for n in PREDICTIONS.names if n != "run_id")
#: The predictions columns a gallery page shows.
GALLERY_COLUMNS: tuple[str, ...] = (
    "image_id",
    "label",
    "label_name",
    "pred",
    "pred_name",
    "confidence",
    "correct",
    "loss",
    "cam_disagreement",
)

CAMS = pa.schema(
    [
        _RUN_ID,
        _IMAGE_ID,
        _METHOD,
        _f("target_kind", pa.string(), "'pred' (explains the predicted class) or 'true' (the label).", False),
        _f("target_class", pa.int32(), "Class index the map explains.", False),
        _f("h", pa.int32(), "Map height.", False),
        _f("w", pa.int32(), "Map width.", False),
        _f("map", pa.list_(pa.float32()), "h*w values in [0,1], row-major, native layer resolution "
           "(pixel attributions: area-pooled to at most 32x32).", False),
    ]
)

EMBEDDINGS = pa.schema(
    [
        _RUN_ID,
        _IMAGE_ID,
        _SPLIT,
        _f("vector", pa.list_(pa.float16()), "Global-average-pooled target-layer activations (K values)."),
        _f("x", pa.float32(), "2-D projection, first coordinate (UMAP/PCA/t-SNE over val+train)."),
        _f("y", pa.float32(), "2-D projection, second coordinate."),
        _f(
            "input_hash",
            pa.string(),
            "16 hex chars of blake2b over the model's input tensor (decoded, resized, normalized "
            "pixels): equal hashes = the model saw identical images (exact-duplicate leaks). Null "
            "for runs before it existed.",
        ),
    ]
)

NEIGHBORS = pa.schema(
    [
        _RUN_ID,
        _f("image_id", pa.string(), "Query image (val).", False),
        _f(
            "kind",
            pa.string(),
            "'twin' (nearest train images of the predicted class) or 'counterfactual' (nearest of "
            "another class).",
            False,
        ),
        _f("rank", pa.int32(), "1 = most similar.", False),
        _f("neighbor_id", pa.string(), "image_id of the train neighbour.", False),
        _f("neighbor_class", pa.int32(), "Label of the neighbour."),
        _f("similarity", pa.float32(), "Cosine similarity of the embeddings.", False),
    ]
)

CLASS_METRICS = pa.schema(
    [
        _RUN_ID,
        _f("class", pa.int32(), "Class index.", False),
        _f("class_name", pa.string(), "Class name.", False),
        _f("precision", pa.float64(), "Precision on val (0 when never predicted)."),
        _f("recall", pa.float64(), "Recall on val."),
        _f("f1", pa.float64(), "F1 on val."),
        _f("support", pa.int64(), "Number of val images with this label.", False),
    ]
)

CONFUSION = pa.schema(
    [
        _RUN_ID,
        _f("true_class", pa.int32(), "Label.", False),
        _f("pred_class", pa.int32(), "Prediction.", False),
        _f("count", pa.int64(), "Number of val images (zero cells may be omitted).", False),
    ]
)

FAITHFULNESS = pa.schema(
    [
        _RUN_ID,
        _IMAGE_ID,
        _METHOD,
        _f("drop", pa.float32(), "Average Drop term max(0, Y-O)/Y in [0,1] (mean x100 = Average Drop %)."),
        _f("increase", pa.float32(), "1 if O > Y else 0 (mean x100 = Increase in Confidence %)."),
        _f("deletion_auc", pa.float32(), "Deletion AUC (lower = more faithful)."),
        _f("insertion_auc", pa.float32(), "Insertion AUC (higher = more faithful)."),
    ]
)

FAILURES = pa.schema(
    [
        _RUN_ID,
        _IMAGE_ID,
        _SPLIT,
        _f("source", pa.string(), "Where the image came from."),
        _f("reason", pa.string(), "Why it could not be used (one line)."),
    ]
)

# ---- "can I trust these maps?": sanity checks, baselines, ROAD, localisation ----------------------

SANITY = pa.schema(
    [
        _RUN_ID,
        _IMAGE_ID,
        _METHOD,
        _f("step", pa.int32(), "Randomisation step 1..K: blocks 1..step re-initialised, from the head "
           "down.", False),
        _f("block", pa.string(), "Label of the block re-initialised at this step (e.g. 'fc', 'layer4', "
           "'stem').", False),
        _f(
            "spearman",
            pa.float32(),
            "Spearman rank correlation of the map on the randomised network with the trained network's map "
            "(same image, same target class: the trained prediction); 0 when the randomised map is constant, "
            "null when the trained map is.",
        ),
    ]
)

BASELINE_FAITHFULNESS = pa.schema(
    [
        _RUN_ID,
        _IMAGE_ID,
        _f("baseline", pa.string(), "Trivial map: 'random' (seeded per image) or 'centre' (centred "
           "Gaussian).", False),
        _f("drop", pa.float32(), "Average Drop term of the baseline map (as in faithfulness)."),
        _f("increase", pa.float32(), "Increase-in-confidence indicator of the baseline map."),
        _f("deletion_auc", pa.float32(), "Deletion AUC of the baseline map."),
        _f("insertion_auc", pa.float32(), "Insertion AUC of the baseline map."),
    ]
)

ROAD = pa.schema(
    [
        _RUN_ID,
        _IMAGE_ID,
        _METHOD,
        _f("order", pa.string(), "'morf' (most relevant pixels removed first) or 'lerf' (least relevant "
           "first).", False),
        _f("fraction", pa.float32(), "Share of the pixels removed and filled by noisy linear imputation.",
           False),
        _f(
            "probability",
            pa.float32(),
            "Softmax probability of the predicted class on the imputed image (MoRF: lower is better, LeRF: "
            "higher is better).",
        ),
    ]
)

LOCALISATION = pa.schema(
    [
        _RUN_ID,
        _IMAGE_ID,
        _METHOD,
        _f("pointing", pa.float32(), "1 if the predicted-class map's maximum lies within the run's "
           "pointing_tolerance (config; pixels of a 224-px input, scaled) of the object, else 0."),
        _f("energy", pa.float32(), "Energy-based pointing game: share of the map's mass inside the object."),
        _f("iou", pa.float32(), "IoU of the map's top-k % pixels with the object."),
        _f("topk", pa.float32(), "k of the top-k % IoU (percent of the input's pixels)."),
    ]
)

TRUST_TABLES: tuple[str, ...] = ("sanity", "baseline_faithfulness", "road", "localisation")


QUALITY = pa.schema(
    [
        _RUN_ID,
        _f("image_id", pa.string(), "Val image.", False),
        _f(
            "label_quality",
            pa.float32(),
            "cleanlab label-quality score in [0,1] (self-confidence: p[label]); low = the label is "
            "likely wrong. Null when unlabeled.",
        ),
        _f(
            "mislabelled",
            pa.bool_(),
            "Flagged by confident learning (cleanlab.filter.find_label_issues on the stored "
            "probabilities). Null when unlabeled.",
        ),
        _f("suggested_class", pa.int32(), "Class the data suggests instead (argmax p) when mislabelled."),
        _f(
            "nearest_train_id",
            pa.string(),
            "Most similar train image among the stored neighbours (twins and counterfactuals), or "
            "the train image with the same input_hash.",
        ),
        _f(
            "nearest_train_similarity",
            pa.float32(),
            "Cosine similarity to nearest_train_id of the mean-centred embeddings (the mean train "
            "embedding subtracted; raw post-ReLU cosines crowd near 1).",
        ),
        _f("leak", pa.bool_(), "A copy of a train image, decided in pixel space (see leak_match).", False),
        _f(
            "leak_match",
            pa.string(),
            "'pixels' (the same model input as a train image, input_hash) or 'copy' (pHash within the "
            "run's radius and blurred, aligned 16x16 pixel distance <= its copy distance; re-encoded, "
            "resized, shifted or cropped copies). Older runs: 'embedding' (cosine >= 0.99). Null when "
            "not a leak.",
        ),
        _f("leak_train_id", pa.string(), "The train image this val image copies (null: none, older run)."),
        _f("leak_distance", pa.float32(), "Pixel distance of the copy to leak_train_id (0 for 'pixels')."),
        _f(
            "lookalike",
            pa.bool_(),
            "nearest_train_similarity above the run's look-alike threshold (a high quantile of train "
            "images' own leave-one-out nearest-neighbour similarities; quality_rules). A soft signal, "
            "never a leak. Null in older runs.",
        ),
        _f(
            "outlier_score",
            pa.float32(),
            "Older runs: modified z-score of -log(1 - s). New runs: the share of the reference (train "
            "images' leave-one-out nearest-neighbour raw cosines, within their class) below the image's "
            "best raw cosine to a stored neighbour, in [0, 1]; low = far from every training image.",
        ),
        _f(
            "outlier",
            pa.bool_(),
            "Best raw cosine to a stored neighbour below the run's outlier threshold (a low quantile of the "
            "reference; false when the reference is too small, see quality_rules). Older runs: "
            "outlier_score < -3.5.",
            False,
        ),
        _f("duplicate_group", pa.int32(), "Near-duplicate group inside val (see duplicates); null: none."),
        _f("duplicate_count", pa.int32(), "Val images in duplicate_group, this one included."),
        _f(
            "image_issues",
            pa.list_(pa.string()),
            "Image-property issues: dark, overexposed, blurry, low_information, odd_size, odd_aspect, "
            "grayscale (thresholds relative to the data set, quality_rules). Null in older runs.",
        ),
        _f(
            "error_cluster",
            pa.int32(),
            "Cluster (0 = largest) of this error inside its confusion cell (see error_clusters); "
            "null when correct or the cell was not clustered.",
        ),
    ]
)

IMAGE_FACTS = pa.schema(
    [
        _RUN_ID,
        _IMAGE_ID,
        _SPLIT,
        _f("width", pa.int32(), "Decoded width in pixels."),
        _f("height", pa.int32(), "Decoded height in pixels."),
        _f("phash", pa.uint64(), "64-bit perceptual hash (imagehash.phash) of the decoded image."),
        _f("tiny", pa.binary(), "16x16 grayscale, 256 bytes row-major: copies are confirmed on it."),
        _f("bright_p05", pa.float32(), "5th percentile of perceived brightness, in [0, 1]."),
        _f("bright_p99", pa.float32(), "99th percentile of perceived brightness, in [0, 1]."),
        _f("sharpness", pa.float32(), "Laplacian std over grayscale std (null: a constant image)."),
        _f("entropy", pa.float32(), "Grayscale histogram entropy in bits (0 constant, 8 noise)."),
        _f("colour", pa.float32(), "Mean channel spread max(R,G,B) - min(R,G,B), in [0, 1]; 0 = grayscale."),
    ]
)

DUPLICATES = pa.schema(
    [
        _RUN_ID,
        _IMAGE_ID,
        _SPLIT,
        _f("group", pa.int32(), "Near-duplicate group inside the split (copies of each other).", False),
        _f("size", pa.int32(), "Images in the group.", False),
    ]
)

QUALITY_RULES = pa.schema(
    [
        _RUN_ID,
        _f("rule", pa.string(), "lookalike, outlier, copy or an image issue (dark, blurry, ...).", False),
        _f("statistic", pa.string(), "What the threshold is compared with."),
        _f("quantile", pa.float32(), "Quantile of the reference the threshold is (null: not a quantile)."),
        _f("threshold", pa.float64(), "The threshold used; null when the rule could not be judged."),
        _f("reference", pa.int64(), "Values the threshold was estimated from."),
        _f("needed", pa.int64(), "Fewest reference values the rule needs."),
        _f("note", pa.string(), "The rule in words (shown on the overview)."),
    ]
)

ERROR_CLUSTERS = pa.schema(
    [
        _RUN_ID,
        _f("true_class", pa.int32(), "Label of the confusion cell.", False),
        _f("pred_class", pa.int32(), "Prediction of the confusion cell.", False),
        _f("cluster", pa.int32(), "Cluster index in the cell, 0 = largest.", False),
        _f("k", pa.int32(), "Number of clusters chosen for the cell (1..4).", False),
        _f("silhouette", pa.float32(), "Silhouette score of the chosen k (null when k = 1)."),
        _f("size", pa.int64(), "Errors in this cluster.", False),
        _f(
            "representative_ids",
            pa.list_(pa.string()),
            "Up to 3 val image ids closest to the cluster centre (cosine), closest first.",
            False,
        ),
        _f("method", pa.string(), "CAM method of mean_map (one row per cluster and method)."),
        _f("h", pa.int32(), "Map height."),
        _f("w", pa.int32(), "Map width."),
        _f(
            "mean_map",
            pa.list_(pa.float32()),
            "Mean of the members' maps for their predicted class, h*w values, row-major.",
        ),
    ]
)

# ---- calibration and ranking (issue 21): computed by the global phase from the probabilities -------

CALIBRATION = pa.schema(
    [
        _RUN_ID,
        _f("bins", pa.int32(), "Number of equal-width confidence bins of the diagram (15).", False),
        _f("bin", pa.int32(), "Bin index 0..bins-1.", False),
        _f("lower", pa.float64(), "Lower edge (exclusive; bin 0 also holds 0).", False),
        _f("upper", pa.float64(), "Upper edge (inclusive).", False),
        _f("count", pa.int64(), "Val predictions whose top-1 confidence falls in the bin.", False),
        _f("confidence", pa.float64(), "Mean top-1 confidence in the bin; null when empty."),
        _f("accuracy", pa.float64(), "Share of the bin's predictions that are correct; null when empty."),
    ]
)

CLASS_RANKING = pa.schema(
    [
        _RUN_ID,
        _f("class", pa.int32(), "Class index.", False),
        _f("class_name", pa.string(), "Class name.", False),
        _f("positives", pa.int64(), "Val images with this label.", False),
        _f(
            "roc_auc",
            pa.float64(),
            "One-vs-rest ROC AUC of the class's probability (sklearn roc_auc_score); null when the class "
            "has no positives or no negatives.",
        ),
        _f(
            "average_precision",
            pa.float64(),
            "One-vs-rest average precision (sklearn average_precision_score); null without positives.",
        ),
    ]
)

RANKING_CURVES = pa.schema(
    [
        _RUN_ID,
        _f("class", pa.int32(), "Class index.", False),
        _f("curve", pa.string(), "'roc' (x = false positive rate, y = true positive rate) or 'pr' "
           "(x = recall, y = precision).", False),
        _f("point", pa.int32(), "Order along the curve.", False),
        _f("x", pa.float64(), "FPR (roc) or recall (pr).", False),
        _f("y", pa.float64(), "TPR (roc) or precision (pr).", False),
        _f("threshold", pa.float64(), "Probability threshold of the point (inf at the curve's end).", False),
    ]
)

SCORES = pa.schema(
    [
        _RUN_ID,
        _f(
            "metric",
            pa.string(),
            "'ece', 'mce' (over the calibration bins), 'macro_roc_auc', 'macro_average_precision' (means "
            "over the classes where defined), 'top1_accuracy', 'top3_accuracy', 'top5_accuracy' (only "
            "where the run has more than k classes).",
            False,
        ),
        _f("value", pa.float64(), "The metric's value; null when undefined."),
    ]
)

#: The calibration and ranking tables; a run computed before them has them empty.
RANKING_TABLES: tuple[str, ...] = ("calibration", "class_ranking", "ranking_curves", "scores")


@dataclass(frozen=True)
class TableSpec:
    """How one table is stored.

    ``sort_by`` clusters rows so that point lookups (one image) prune row groups via Parquet
    min/max statistics; ``row_group_size`` is small for the table read by image id in batches
    (cams: a gallery page of 24 images decodes 24 row groups of 512 maps).
    """

    name: str
    schema: pa.Schema
    sort_by: tuple[str, ...]
    row_group_size: int
    doc: str


TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (
        TableSpec("runs", RUNS, (), 1, "One row per run (also in the run's manifest.json)."),
        TableSpec(
            "images",
            IMAGES,
            ("image_id",),
            256,
            "Per dataset fingerprint, shared by all runs over that data: metadata and thumbnails.",
        ),
        TableSpec("predictions", PREDICTIONS, ("image_id",), 16384, "One row per val image."),
        TableSpec(
            "cams",
            CAMS,
            ("image_id", "method", "target_kind"),
            512,
            "Raw maps: val x method x target_kind ('true' only where needed), plus train "
            "Grad-CAM (target pred) so twins can show theirs.",
        ),
        TableSpec("embeddings", EMBEDDINGS, ("split", "image_id"), 4096, "Val and train embeddings."),
        TableSpec("neighbors", NEIGHBORS, ("image_id", "kind", "rank"), 16384, "Twins and counterfactuals."),
        TableSpec("class_metrics", CLASS_METRICS, ("class",), 65536, "Per-class metrics on val."),
        TableSpec(
            "confusion", CONFUSION, ("true_class", "pred_class"), 65536, "Confusion matrix, long form."
        ),
        TableSpec("faithfulness", FAITHFULNESS, ("image_id", "method"), 16384, "Per val image x method."),
        TableSpec("failures", FAILURES, ("image_id",), 65536, "Images that could not be loaded."),
        TableSpec(
            "sanity",
            SANITY,
            ("image_id", "method", "step"),
            16384,
            "Model-parameter randomisation test (cascading, from the head down) on a stratified sample of "
            "val images: per image x method x step. Empty when computed with --sanity-images 0.",
        ),
        TableSpec(
            "baseline_faithfulness",
            BASELINE_FAITHFULNESS,
            ("image_id", "baseline"),
            16384,
            "The faithfulness metrics of two trivial maps per val image, scored next to the methods.",
        ),
        TableSpec(
            "road",
            ROAD,
            ("image_id", "method", "order", "fraction"),
            16384,
            "ROAD (noisy linear imputation) per val image x method x order x removal fraction.",
        ),
        TableSpec(
            "localisation",
            LOCALISATION,
            ("image_id", "method"),
            16384,
            "Pointing game, energy-based pointing game and top-k % IoU per val image x method, for images "
            "with a ground-truth mask or box (empty when the dataset has none).",
        ),
        TableSpec(
            "quality",
            QUALITY,
            ("image_id",),
            16384,
            "Per val image: likely label error, train/val leak (a copy), look-alike, outlier, near-duplicate "
            "group, image issues, error cluster (computed in the global phase; absent in older runs).",
        ),
        TableSpec(
            "image_facts",
            IMAGE_FACTS,
            ("split", "image_id"),
            16384,
            "Per val and train image: perceptual hash, 16x16 thumbnail and image statistics, measured "
            "in the chunk from the decoded image (absent in older runs).",
        ),
        TableSpec(
            "duplicates",
            DUPLICATES,
            ("split", "group", "image_id"),
            16384,
            "Near-duplicate groups inside each split (val-val, train-train); one row per member.",
        ),
        TableSpec(
            "quality_rules",
            QUALITY_RULES,
            (),
            1024,
            "The data-quality rules of the run and the numbers they were computed from.",
        ),
        TableSpec(
            "error_clusters",
            ERROR_CLUSTERS,
            ("true_class", "pred_class", "cluster", "method"),
            65536,
            "Errors of each confusion cell with enough of them, clustered by embedding.",
        ),
        TableSpec("calibration", CALIBRATION, ("bin",), 65536,
                  "Reliability diagram: top-1 confidence bins of the val predictions (labeled runs)."),
        TableSpec("class_ranking", CLASS_RANKING, ("class",), 65536,
                  "Per class: one-vs-rest ROC AUC and average precision of its probability."),
        TableSpec("ranking_curves", RANKING_CURVES, ("class", "curve", "point"), 65536,
                  "Per class: ROC and precision-recall curves, at most 201 points each (the AUCs are "
                  "computed on the full curves)."),
        TableSpec("scores", SCORES, ("metric",), 65536,
                  "Run-level calibration and ranking scores: ECE, MCE, macro AUC / AP, top-k accuracy."),
        TableSpec("method_stats", METHOD_STATS, ("metric", "method", "other"), 65536,
                  "Per method x metric: mean and 95 % bootstrap CI over images; per method pair: the paired "
                  "difference, its CI and p-value (global phase; absent in older runs)."),
        TableSpec("method_ranking", METHOD_RANKING, ("position",), 65536,
                  "The methods in the order of the ranking rule (sanity, baselines, ROAD gap, "
                  "deletion/insertion), with tiers of indistinguishable methods."),
    )
}

#: Tables written per run (everything but the shared images table).
RUN_TABLES: tuple[str, ...] = tuple(n for n in TABLES if n != "images")


def column_doc(field: pa.Field) -> str:
    """The documentation string attached to a field."""
    meta: dict[bytes, bytes] = field.metadata or {}
    return meta.get(b"doc", b"").decode()


def type_name(t: pa.DataType) -> str:
    """Short human name of an Arrow type for the docs."""
    return str(t).replace("large_", "")


def markdown() -> str:
    """Render the table/column documentation as Markdown (the body of docs/STORE.md)."""
    lines = [f"## Tables (schema version {SCHEMA_VERSION})", ""]
    for spec in TABLES.values():
        lines.append(f"### `{spec.name}`")
        lines.append("")
        lines.append(spec.doc)
        if spec.sort_by:
            lines.append(f"Rows sorted by {', '.join(spec.sort_by)}; row groups of {spec.row_group_size}.")
        lines.append("")
        lines.append("| column | type | null | meaning |")
        lines.append("|---|---|---|---|")
        for field in spec.schema:
            null = "yes" if field.nullable else "no"
            lines.append(f"| `{field.name}` | {type_name(field.type)} | {null} | {column_doc(field)} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - doc generator
    sys.stdout.write(markdown())
