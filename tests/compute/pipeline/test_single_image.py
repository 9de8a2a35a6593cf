"""xaidash.compute.pipeline.single_image: one uploaded image explained with a run's model, as the
dashboard does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.imagegen import make_imagefolder
from tests.support.models import CLASSES, SIZE, save_tiny_checkpoint
from xaidash.compute.pipeline.job import JobConfig, run_job
from xaidash.compute.pipeline.single_image import clear_cache, explain_image, get_model, model_ref_from_config
from xaidash.constants import METHODS
from xaidash.errors import UserError
from xaidash.store.read.reader import open_store


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A tiny published run: (data dir, store dir, run id)."""
    root = tmp_path_factory.mktemp("explain")
    data = make_imagefolder(root / "data", CLASSES, n_train=5, n_val=3, size=SIZE)
    ckpt = save_tiny_checkpoint(root / "model.pt")
    res = run_job(JobConfig(
        data=f"imagefolder:{data}", checkpoint=str(ckpt), store=str(root / "store"), device="cpu",
        workers=0, batch_size=8, chunk_size=8, methods=("cam", "gradcam", "gradcampp"),
        faithfulness=False, projection="pca", twins=3,
        # these tests are about the maps: no attributions or trust checks
        attribution_images=0, sanity_images=0, road_fractions=(),
    ))
    assert res.run_id
    return data, root / "store", res.run_id


def test_explain_matches_the_run(run: tuple[Path, Path, str]) -> None:
    data, store, rid = run
    clear_cache()
    with open_store(store) as r:
        info = r.runs().iloc[0]
        ref = model_ref_from_config(info["config_json"])
        ids, labels, vectors = r.train_embeddings(rid)
        pred = r.sql("SELECT image_id, pred FROM predictions WHERE run_id = ? ORDER BY image_id", [rid])
        image_id = str(pred.image_id[0])
        stored = r.cam(rid, image_id, "gradcam")
        src = r.sql("SELECT source FROM images WHERE image_id = ?", [image_id]).source[0]
        job_twins = r.neighbors(rid, image_id)
    img = Image.open(data / src)
    ex = explain_image(ref, img, train_ids=ids, train_labels=labels, train_vectors=vectors, k=3)
    assert ex.topk[0][0] == int(pred.pred[0])
    assert len(ex.topk) == 2 and ex.topk[0][2] >= ex.topk[1][2]
    assert set(ex.maps) == set(METHODS)
    for m in ex.maps.values():
        assert m.shape == (2, 2) and m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1
    assert stored is not None
    np.testing.assert_allclose(ex.maps["gradcam"], stored, atol=1e-4)
    assert ex.image.size == (SIZE, SIZE)
    twins = job_twins[job_twins.kind == "twin"]
    assert [t for t, _ in ex.twins][:1] == twins.neighbor_id.tolist()[:1]
    np.testing.assert_allclose([s for _, s in ex.twins], twins.similarity, atol=2e-2)
    assert json.loads(info["config_json"])["model"]["sha256"] == ref["sha256"]


def test_cache_and_notes(run: tuple[Path, Path, str]) -> None:
    _, store, _ = run
    with open_store(store) as r:
        ref = model_ref_from_config(r.runs().iloc[0]["config_json"])
    assert get_model(ref) is get_model(ref)
    img = Image.fromarray(np.full((20, 24, 3), 128, np.uint8))
    ex = explain_image(ref, img, methods=("scorecam",), scorecam_max_channels=3)
    assert "scorecam" in ex.notes and "top-3" in ex.notes["scorecam"] and ex.twins == []
    capped = {**ref, "scorecam_max_channels": 2}  # the run's cap is the default
    assert get_model(capped) is get_model(ref)
    assert "top-2" in explain_image(capped, img, methods=("scorecam",)).notes["scorecam"]
    with pytest.raises(UserError, match="unknown method"):
        explain_image(ref, img, methods=("lime",))


def test_missing_or_changed_checkpoint(run: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, store, _ = run
    with open_store(store) as r:
        ref = dict(model_ref_from_config(r.runs().iloc[0]["config_json"]))
    copy = tmp_path / "copy.pt"
    copy.write_bytes(Path(str(ref["checkpoint"])).read_bytes())
    ref["checkpoint"] = str(copy)
    img = Image.fromarray(np.zeros((16, 16, 3), np.uint8))
    explain_image(ref, img, methods=("gradcam",))
    save_tiny_checkpoint(copy, seed=1)  # retrained in place: other bytes
    with pytest.raises(UserError, match="changed"):
        explain_image(ref, img, methods=("gradcam",))
    copy.unlink()
    with pytest.raises(UserError, match="no longer exists"):
        explain_image(ref, img, methods=("gradcam",))
    with pytest.raises(UserError, match="no model reference"):
        model_ref_from_config("{}")
