"""The Python API: compute_run takes the compute command's options and returns the run id; Run
reads it back as pandas and numpy; bad options are one clear UserError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import xaidash
from tests.support.imagegen import make_imagefolder
from tests.support.models import CLASSES, SIZE, save_tiny_checkpoint
from xaidash.errors import UserError

pytestmark = pytest.mark.slow


def test_compute_run_then_run_objects(tmp_path: Path) -> None:
    ckpt = save_tiny_checkpoint(tmp_path / "model.pt")
    folder = make_imagefolder(tmp_path / "data", CLASSES, n_train=4, n_val=4, size=SIZE)
    store = tmp_path / "store"
    opts = dict(
        checkpoint=ckpt,
        device="cpu",
        workers=0,
        batch_size=4,
        chunk_size=8,
        methods=["gradcam", "cam"],
        projection="pca",
        twins=2,
        no_faithfulness=True,
        sanity_images=0,
        road_fractions="none",
    )
    run_id = xaidash.compute_run(f"imagefolder:{folder}", store, **opts)
    assert xaidash.compute_run(f"imagefolder:{folder}", store, **opts) == run_id  # reused, as the CLI does
    run = xaidash.Run(store, "latest")
    assert run.id == run_id and run.info.methods == ["cam", "gradcam"]
    preds = run.predictions()
    assert len(preds) == 8 and {"image_id", "label_name", "pred_name", "probabilities"} <= set(preds.columns)
    maps = run.maps(str(preds["image_id"].iloc[0]))
    assert set(maps) == {"cam", "gradcam"} and all(
        m.dtype == np.float32 and m.ndim == 2 for m in maps.values()
    )
    assert run.maps("f" * 16) == {}
    assert set(run.scores()) >= {"ece", "top1_accuracy"}
    with pytest.raises(UserError, match="unknown option"):
        xaidash.compute_run(f"imagefolder:{folder}", store, checkpoint=ckpt, colour="red")
    with pytest.raises(UserError, match="no run 'nope'"):
        xaidash.Run(store, "nope")
