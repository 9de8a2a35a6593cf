"""A realistic synthetic store for tests and benchmarks (no torch needed; not installed).

``build_synthetic_store`` writes through the real :class:`xaidash.store.write.writer.Store` /
:class:`xaidash.store.write.staging.Staging` API, chunk by chunk, exactly like the compute job, so it
exercises
the writer as well as giving the dashboard plausible data:

* class names (CIFAR-10's for <= 10 classes), labels, ~80 % accuracy with structured confusion
  (a wrong prediction is usually the "neighbouring" class), softmax probabilities summing to 1,
  cross-entropy loss, runner-up class;
* smooth maps in [0, 1] (Gaussian blobs around an object centre, each method a noisy view of
  it, Score-CAM the noisiest) for target "pred", plus target "true" for wrong predictions, plus
  train Grad-CAMs; cam_disagreement computed from them by the compute job's own
  :func:`xaidash.compute.analysis.metrics.cam_disagreement`;
* class-clustered embeddings and 2-D projection, twins (train images of the predicted class)
  and counterfactuals (of the runner-up class), faithfulness numbers, per-class metrics and
  the confusion matrix computed from the predictions, a few load failures;
* PNG thumbnails stored once per dataset fingerprint;
* each later run flips some predictions (fixes more than it breaks), like a retrained model.

Everything is vectorized numpy per chunk, so 100k images take well under a minute or two.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tests.support import synthetic_quality
from xaidash.compute.analysis.metrics import cam_disagreement
from xaidash.compute.pipeline.method_ranking_phase import method_ranking_tables
from xaidash.compute.pipeline.ranking_phase import ranking_tables
from xaidash.constants import CLASSIC_METHODS
from xaidash.store.builder import list_array, staged_schema
from xaidash.store.write.writer import Store

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_THUMB_VARIANTS = 16


def _ids(split: str, n: int, tag: str) -> np.ndarray:
    """Sorted 16-hex image ids, like compute/datasets/sources.py's (sha1 of kind:split:key)."""
    ids = [hashlib.sha1(f"synthetic{tag}:{split}:{i}".encode()).hexdigest()[:16] for i in range(n)]
    return np.array(sorted(ids), dtype=object)


def _class_names(n: int) -> list[str]:
    return list(CIFAR10[:n]) if n <= len(CIFAR10) else [f"class_{i:03d}" for i in range(n)]


def _thumb_pool(n_classes: int, rng: np.random.Generator) -> list[list[bytes]]:
    """A few small PNGs per class (the images of a class share a hue)."""
    from PIL import Image

    pools: list[list[bytes]] = []
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    for c in range(n_classes):
        hue = np.array([np.sin(c * 1.7), np.sin(c * 2.3 + 1), np.sin(c * 0.9 + 2)]) * 0.4 + 0.5
        pool = []
        for _ in range(_THUMB_VARIANTS):
            img = hue[None, None, :] * (0.6 + 0.4 * yy[..., None]) + 0.15 * xx[..., None]
            img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
            buf = io.BytesIO()
            Image.fromarray((img * 255).astype(np.uint8)).save(buf, format="PNG")
            pool.append(buf.getvalue())
        pools.append(pool)
    return pools


def _maps(centers: np.ndarray, hw: tuple[int, int], rng: np.random.Generator, noise: float) -> np.ndarray:
    """Smooth maps [..., h, w] in [0, 1]: a Gaussian blob at ``centers`` (+ a faint second one)."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy = centers[..., 0, None, None]
    cx = centers[..., 1, None, None]
    sigma = max(h, w) / 5.0
    m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    c2 = rng.uniform(0, [h - 1, w - 1], size=(*centers.shape[:-1], 2)).astype(np.float32)
    m += 0.35 * np.exp(
        -((yy - c2[..., 0, None, None]) ** 2 + (xx - c2[..., 1, None, None]) ** 2) / (2 * sigma**2)
    )
    m += rng.normal(0, noise, m.shape).astype(np.float32)
    m = np.maximum(m, 0)
    lo = m.min(axis=(-2, -1), keepdims=True)
    hi = m.max(axis=(-2, -1), keepdims=True)
    return ((m - lo) / np.where(hi > lo, hi - lo, 1)).astype(np.float32)


def _sampled_maps(
    ids: np.ndarray, pred: np.ndarray, methods: Sequence[str], rng: np.random.Generator
) -> pa.Table:
    """cams rows of ``methods`` for ``ids`` only, at 16 x 16 (another grid than the CAMs')."""
    k, side = len(methods), 16
    maps = _maps(rng.uniform(0, side - 1, (len(ids) * k, 2)).astype(np.float32), (side, side), rng, 0.05)
    return pa.table(
        {
            "image_id": np.repeat(ids, k),
            "method": np.tile(np.asarray(methods, dtype=object), len(ids)),
            "target_kind": np.full(len(ids) * k, "pred"),
            "target_class": np.repeat(pred, k).astype(np.int32),
            "h": np.full(len(ids) * k, side, np.int32),
            "w": np.full(len(ids) * k, side, np.int32),
            "map": list_array(maps.reshape(len(ids) * k, -1), pa.float32()),
        }
    )


def build_synthetic_store(
    path: str | Path,
    n_val: int = 1000,
    n_train: int = 2000,
    n_classes: int = 10,
    # the classic four by default: the quoted store sizes and the dashboard tests' counts (maps per
    # error, mean maps per cluster) are for them; pass methods=METHODS for a run of all eight
    methods: Sequence[str] = CLASSIC_METHODS,
    emb_dim: int = 512,
    map_hw: tuple[int, int] = (7, 7),
    runs: int = 2,
    seed: int = 0,
    with_thumbnails: bool = True,
    chunk_size: int = 5000,
    n_neighbors: int = 5,
    durable: bool = False,
    trust: bool = False,
    ranking: bool = True,
    sampled_methods: Sequence[str] = (),
) -> list[str]:
    """Write ``runs`` synthetic runs into the store at ``path``; return their run ids (oldest first).

    ``durable=False`` skips fsyncs (a synthetic store is cheap to rebuild). ``trust=True`` adds
    the trust tables (sanity, baselines, ROAD, localisation); ``ranking=False`` leaves out the
    calibration and ranking tables and the method ranking, like a run computed before they
    existed. ``sampled_methods`` get predicted-class maps (16 x 16) for every fourth val image only
    and are not in the run's ``methods``, as attributions computed for a sample are stored.
    """
    store = Store.create(path, durable=durable)
    rng = np.random.default_rng(seed)
    methods = list(methods)
    names = _class_names(n_classes)
    h, w = map_hw
    tag = f"-{seed}-{n_val}-{n_train}-{n_classes}"
    fp = hashlib.sha1(f"synthetic{tag}".encode()).hexdigest()

    val_ids = _ids("val", n_val, tag)
    train_ids = _ids("train", n_train, tag)
    val_label = rng.integers(0, n_classes, n_val).astype(np.int32)
    train_label = (np.arange(n_train) % n_classes).astype(np.int32)
    rng.shuffle(train_label)
    by_class = [np.flatnonzero(train_label == c) for c in range(n_classes)]
    class_mean = np.abs(rng.normal(0, 1, (n_classes, emb_dim))).astype(np.float32)
    angle = 2 * np.pi * np.arange(n_classes) / n_classes
    class_xy = np.stack([np.cos(angle), np.sin(angle)], 1).astype(np.float32) * 10
    # The "object" position in each image: the maps of every run and method look around it.
    val_center = rng.uniform(1, [h - 2, w - 2], size=(n_val, 2)).astype(np.float32)
    train_center = rng.uniform(1, [h - 2, w - 2], size=(n_train, 2)).astype(np.float32)
    method_noise = {"cam": 0.03, "gradcam": 0.04, "gradcampp": 0.05, "scorecam": 0.08}
    method_shift = {"cam": 0.4, "gradcam": 0.5, "gradcampp": 0.6, "scorecam": 1.2}
    thumbs = _thumb_pool(n_classes, rng) if with_thumbnails else None

    # Correctness per run: run 0 ~80 %, later runs fix ~30 % of errors and break ~4 %.
    correct = rng.random(n_val) < 0.8
    wrong_pred = np.where(
        rng.random(n_val) < 0.5,
        (val_label + 1) % n_classes,
        (val_label + rng.integers(1, max(n_classes, 2), n_val)) % n_classes,
    ).astype(np.int32)

    run_ids: list[str] = []
    for r in range(runs):
        rr = np.random.default_rng(seed * 1000 + r + 1)
        if r > 0:
            fix = ~correct & (rr.random(n_val) < 0.3)
            brk = correct & (rr.random(n_val) < 0.04)
            correct = (correct | fix) & ~brk
            wrong_pred = np.where(brk, (val_label + 2) % n_classes, wrong_pred).astype(np.int32)
        pred = np.where(correct, val_label, wrong_pred).astype(np.int32)
        if n_classes == 1:
            pred[:] = 0
        job_key = f"synthetic:{fp}:run{r}:seed{seed}"
        staging = store.staging(job_key)
        have_thumbs = store.thumbnail_ids(fp) if with_thumbnails else set()
        done = staging.done_chunks()

        probs_all = np.zeros((n_val, n_classes), np.float32)
        vecs_val = np.zeros((0, emb_dim), np.float32)
        for start in range(0, n_val, chunk_size):
            sl = slice(start, min(start + chunk_size, n_val))
            n = sl.stop - sl.start
            logits = rr.normal(0, 1, (n, n_classes)).astype(np.float32)
            p = pred[sl]
            logits[np.arange(n), p] = logits.max(1) + rr.gamma(2.0, 1.0, n).astype(np.float32)
            e = np.exp(logits - logits.max(1, keepdims=True))
            probs = (e / e.sum(1, keepdims=True)).astype(np.float32)
            probs_all[sl] = probs
            chunk_id = f"val-{start:09d}"
            if chunk_id in done:
                continue
            lab = val_label[sl]
            order = np.argsort(-probs, 1)
            runner = order[:, 1] if n_classes > 1 else order[:, 0]
            conf = probs[np.arange(n), p]
            loss = -np.log(np.maximum(probs[np.arange(n), lab], 1e-12)).astype(np.float32)

            centers = val_center[sl][:, None, :] + np.stack(
                [rr.normal(0, method_shift.get(m, 0.5), (n, 2)) for m in methods], 1
            ).astype(np.float32)
            maps = np.stack(
                [_maps(centers[:, j], map_hw, rr, method_noise.get(m, 0.05)) for j, m in enumerate(methods)],
                1,
            )
            # NaN (no valid pair of maps) is stored as null, like the compute job does
            dis = pa.array(cam_disagreement(list(maps.swapaxes(0, 1))), pa.float32(), from_pandas=True)
            ids = val_ids[sl]
            wrong = np.flatnonzero(p != lab)
            cam_ids = np.concatenate([np.repeat(ids, len(methods)), np.repeat(ids[wrong], len(methods))])
            cam_method = np.concatenate([np.tile(methods, n), np.tile(methods, len(wrong))])
            cam_kind = np.array(["pred"] * (n * len(methods)) + ["true"] * (len(wrong) * len(methods)))
            cam_target = np.concatenate([np.repeat(p, len(methods)), np.repeat(lab[wrong], len(methods))])
            true_centers = rr.uniform(0, [h - 1, w - 1], size=(len(wrong), len(methods), 2)).astype(
                np.float32
            )
            true_maps = (
                _maps(true_centers, map_hw, rr, 0.05) if len(wrong) else np.zeros((0, len(methods), h, w))
            )
            all_maps = np.concatenate([maps.reshape(-1, h * w), true_maps.reshape(-1, h * w)]).astype(
                np.float32
            )

            vec = np.maximum(class_mean[lab] + rr.normal(0, 0.8, (n, emb_dim)).astype(np.float32), 0)
            vecs_val = vec  # only the chunk; neighbours below are synthetic, not searched

            faith_q = rr.beta(2, 5, (n, len(methods))).astype(np.float32)
            tables = {
                "predictions": pa.table(
                    {
                        "image_id": ids,
                        "split": np.full(n, "val"),
                        "label": lab,
                        "label_name": np.array(names, dtype=object)[lab],
                        "pred": p,
                        "pred_name": np.array(names, dtype=object)[p],
                        "confidence": conf,
                        "probabilities": list_array(probs, pa.float32()),
                        "correct": p == lab,
                        "loss": loss,
                        "runner_up": runner.astype(np.int32),
                        "cam_disagreement": dis,
                    }
                ),
                "cams": pa.table(
                    {
                        "image_id": cam_ids,
                        "method": cam_method,
                        "target_kind": cam_kind,
                        "target_class": cam_target.astype(np.int32),
                        "h": np.full(len(cam_ids), h, np.int32),
                        "w": np.full(len(cam_ids), w, np.int32),
                        "map": list_array(all_maps, pa.float32()),
                    }
                ),
                "embeddings": pa.table(
                    {
                        "image_id": ids,
                        "split": np.full(n, "val"),
                        "vector": list_array(vecs_val, pa.float32()),
                    }
                ),
                "faithfulness": pa.table(
                    {
                        "image_id": np.repeat(ids, len(methods)),
                        "method": np.tile(methods, n),
                        "drop": (faith_q * 0.9).reshape(-1),
                        "increase": (rr.random(n * len(methods)) < 0.15).astype(np.float32),
                        "deletion_auc": rr.beta(2, 6, n * len(methods)).astype(np.float32),
                        "insertion_auc": rr.beta(6, 2, n * len(methods)).astype(np.float32),
                    }
                ),
            }
            if trust:  # the trust tables (tests/support/synthetic_trust.py)
                from tests.support.synthetic_trust import trust_tables

                tables.update(trust_tables(ids, methods, rr))
            if sampled_methods:
                tables["cams"] = pa.concat_tables(
                    [tables["cams"], _sampled_maps(ids[::4], p[::4], sampled_methods, rr)]
                )
            staging.write_chunk(chunk_id, tables)
            if thumbs is not None:
                _add_thumbs(store, fp, ids, "val", lab, names, thumbs, have_thumbs, rr)

        for start in range(0, n_train, chunk_size):
            sl = slice(start, min(start + chunk_size, n_train))
            chunk_id = f"train-{start:09d}"
            if chunk_id in done:
                continue
            n = sl.stop - sl.start
            ids = train_ids[sl]
            lab = train_label[sl]
            vec = np.maximum(class_mean[lab] + rr.normal(0, 0.8, (n, emb_dim)).astype(np.float32), 0)
            gmaps = _maps(train_center[sl], map_hw, rr, 0.04).reshape(n, h * w)
            tables = {
                "embeddings": pa.table(
                    {
                        "image_id": ids,
                        "split": np.full(n, "train"),
                        "vector": list_array(vec, pa.float32()),
                    }
                ),
                "cams": pa.table(
                    {
                        "image_id": ids,
                        "method": np.full(n, "gradcam"),
                        "target_kind": np.full(n, "pred"),
                        "target_class": lab,
                        "h": np.full(n, h, np.int32),
                        "w": np.full(n, w, np.int32),
                        "map": list_array(gmaps, pa.float32()),
                    }
                ),
            }
            staging.write_chunk(chunk_id, tables)
            if thumbs is not None:
                _add_thumbs(store, fp, ids, "train", lab, names, thumbs, have_thumbs, rr)

        # ---- global phase: projection, neighbours, metrics, confusion, failures
        val_xy = class_xy[pred] * 0.7 + class_xy[val_label] * 0.3 + rr.normal(0, 1.5, (n_val, 2))
        train_xy = class_xy[train_label] + rr.normal(0, 1.5, (n_train, 2))
        # Like the compute job: the staged vectors are read back and published once, with x/y.
        xy_ids = pa.array(np.concatenate([val_ids, train_ids]), pa.string())
        xy = np.concatenate([val_xy, train_xy]).astype(np.float32)
        cols = ["image_id", "split", "vector"]
        staged = pa.Table.from_batches(
            list(staging.iter_table("embeddings", cols)),
            schema=pa.schema([staged_schema("embeddings").field(c) for c in cols]),
        )
        at = pc.index_in(staged.column("image_id"), value_set=xy_ids).to_numpy(zero_copy_only=False)
        embeddings = staged.append_column("x", pa.array(xy[at, 0])).append_column("y", pa.array(xy[at, 1]))
        runner_all = np.argsort(-probs_all, 1)[:, 1] if n_classes > 1 else pred
        k = n_neighbors
        nb_ids, nb_kind, nb_rank, nb_nid, nb_cls, nb_sim = [], [], [], [], [], []
        for kind, cls in (("twin", pred), ("counterfactual", runner_all)):
            if n_train == 0:
                break
            sizes = np.array([len(b) for b in by_class])
            ok = sizes[cls] > 0
            q = np.flatnonzero(ok)
            c = cls[q]
            start = rr.integers(0, np.maximum(sizes[c], 1))
            for j in range(k):
                pos = (start + j) % np.maximum(sizes[c], 1)
                idx = np.array([by_class[ci][pi] for ci, pi in zip(c, pos, strict=True)], dtype=np.int64)
                keep = j < sizes[c]
                nb_ids.append(val_ids[q][keep])
                nb_kind.append(np.full(int(keep.sum()), kind))
                nb_rank.append(np.full(int(keep.sum()), j + 1, np.int32))
                nb_nid.append(train_ids[idx][keep])
                nb_cls.append(c[keep].astype(np.int32))
                base = 0.92 if kind == "twin" else 0.75
                nb_sim.append((base - 0.04 * j - rr.uniform(0, 0.03, int(keep.sum()))).astype(np.float32))
        neighbors = pa.table(
            {
                "image_id": np.concatenate(nb_ids) if nb_ids else np.array([], dtype=object),
                "kind": np.concatenate(nb_kind) if nb_kind else np.array([], dtype=object),
                "rank": np.concatenate(nb_rank) if nb_rank else np.array([], np.int32),
                "neighbor_id": np.concatenate(nb_nid) if nb_nid else np.array([], dtype=object),
                "neighbor_class": np.concatenate(nb_cls) if nb_cls else np.array([], np.int32),
                "similarity": np.concatenate(nb_sim) if nb_sim else np.array([], np.float32),
            },
            schema=staged_schema("neighbors"),
        )
        neighbors = synthetic_quality.with_outliers(neighbors, val_ids)  # a few far from every train image
        quality = synthetic_quality.quality(
            staging, staged, val_ids, val_label, pred, neighbors,
            {str(i): int(c) for i, c in zip(train_ids, train_label, strict=True)})

        cm = np.zeros((n_classes, n_classes), np.int64)
        np.add.at(cm, (val_label, pred), 1)
        tp = np.diag(cm).astype(np.float64)
        prec = np.divide(tp, cm.sum(0), out=np.zeros(n_classes), where=cm.sum(0) > 0)
        rec = np.divide(tp, cm.sum(1), out=np.zeros(n_classes), where=cm.sum(1) > 0)
        f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(n_classes), where=(prec + rec) > 0)
        nz = np.nonzero(cm)
        class_metrics = pa.table(
            {
                "class": np.arange(n_classes, dtype=np.int32),
                "class_name": names,
                "precision": prec,
                "recall": rec,
                "f1": f1,
                "support": cm.sum(1),
            }
        )
        confusion = pa.table(
            {
                "true_class": nz[0].astype(np.int32),
                "pred_class": nz[1].astype(np.int32),
                "count": cm[nz],
            }
        )
        n_fail = min(2, max(n_val // 500, 1))
        failures = pa.table(
            {
                "image_id": [
                    hashlib.sha1(f"synthetic{tag}:fail:{i}".encode()).hexdigest()[:16] for i in range(n_fail)
                ],
                "split": ["val"] * n_fail,
                "source": [f"val/broken_{i}.jpg" for i in range(n_fail)],
                "reason": ["cannot identify image file (truncated JPEG)"] * n_fail,
            }
        )
        accuracy = float((pred == val_label).mean()) if n_val else None
        config = {
            "model": {"arch": "resnet18", "weights": "synthetic", "classes": names, "target_layer": "layer4"},
            "methods": methods,
            "synthetic": True,
            "seed": seed,
            "run": r,
            "pointing_tolerance": 15.0,
        }
        run_row = {
            "status": "partial" if n_fail else "complete",
            "dataset_spec": f"synthetic:{n_val}x{n_classes}",
            "dataset_fingerprint": fp,
            "dataset_kind": "synthetic",
            "checkpoint_path": None,
            "checkpoint_sha256": None,
            "arch": "resnet18",
            "class_names": names,
            "methods": methods,
            "target_layer": "layer4",
            "map_h": h,
            "map_w": w,
            "num_val": n_val,
            "num_train": n_train,
            "num_failed": n_fail,
            "accuracy": accuracy,
            "scorecam_note": None,
            "config_json": json.dumps(config),
            "versions_json": json.dumps({"xaidash": "synthetic", "numpy": np.__version__}),
            "timings_json": json.dumps({"per_image_s": 0.0, "global_s": 0.0}),
            "device": "cpu",
        }
        run_id = staging.publish(
            run_row,
            {
                "embeddings": embeddings,
                "neighbors": neighbors,
                "class_metrics": class_metrics,
                "confusion": confusion,
                "failures": failures,
                **quality,
                **(ranking_tables(val_label, probs_all, names) if ranking and n_val else {}),
                # the job's own method ranking over the staged trust tables (few resamples: speed)
                **(method_ranking_tables(staging, methods, resamples=300) if ranking and n_val else {}),
            },
        )
        run_ids.append(run_id)
    return run_ids


def _add_thumbs(
    store: Store,
    fp: str,
    ids: np.ndarray,
    split: str,
    labels: np.ndarray,
    names: list[str],
    pools: list[list[bytes]],
    have: set[str],
    rng: np.random.Generator,
) -> None:
    """Add images rows for ids not stored yet (a second run over the same data adds nothing)."""
    mask = np.array([i not in have for i in ids], dtype=bool)
    if not mask.any():
        return
    ids = ids[mask]
    labels = labels[mask]
    variant = rng.integers(0, _THUMB_VARIANTS, len(ids))
    table = pa.table(
        {
            "image_id": ids,
            "split": np.full(len(ids), split),
            "label": labels.astype(np.int32),
            "label_name": np.array(names, dtype=object)[labels],
            "source": [f"{split}/{names[c]}/{i}.png" for i, c in zip(ids, labels, strict=True)],
            "width": np.full(len(ids), 32, np.int32),
            "height": np.full(len(ids), 32, np.int32),
            "thumbnail": pa.array(
                [pools[c][v] for c, v in zip(labels, variant, strict=True)], type=pa.binary()
            ),
        }
    )
    store.add_images(fp, table)
    have.update(ids.tolist())
