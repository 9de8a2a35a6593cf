"""The Python API: compute_run takes the compute command's options and returns the run id; Run
reads it back as pandas and numpy; bad options are one clear UserError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

import xaidash
from tests.support.byo_models import TinyCNN
from tests.support.imagegen import make_imagefolder, pattern_image
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
        attribution_images=0,
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


class _Images(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """A notebook's dataset: float tensors [3, H, W] in [0, 1], classes not in alphabetical order."""

    classes: ClassVar[list[str] | None] = ["zebra", "apple", "mango"]

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        pixels = [pattern_image(i % 3, 3, 32, rng) for i in range(n)]
        self.items = [(torch.from_numpy(p).permute(2, 0, 1) / 255.0, i % 3) for i, p in enumerate(pixels)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.items[i]


def _notebook_model() -> torch.nn.Module:
    """TinyCNN as if its class were defined in a notebook cell (module ``__main__``)."""
    cls = type("NotebookNet", (TinyCNN,), {"__module__": "__main__"})
    torch.manual_seed(0)
    return cls(3).eval()


def test_compute_run_in_memory_model_and_dataset(tmp_path: Path) -> None:
    store = tmp_path / "store"
    val, train = _Images(6, 0), _Images(6, 1)
    opts = dict(device="cpu", workers=0, batch_size=4, methods="gradcam", projection="pca", twins=2,
                no_faithfulness=True, sanity_images=0, road_fractions="none", input_size=32,
                attribution_images=0)
    run_id = xaidash.compute_run(val, store, model=_notebook_model(), train_data=train, **opts)
    # the same data and model land on the same files: the identical run is reused
    assert xaidash.compute_run(val, store, model=_notebook_model(), train_data=train, **opts) == run_id
    run = xaidash.Run(store, run_id)
    assert run.info.class_names == ["zebra", "apple", "mango"]  # the dataset's label order, not the folders'
    preds = run.predictions()
    assert len(preds) == 6
    assert sorted(preds["label_name"]) == sorted(_Images.classes[i % 3] for i in range(6))
    # the model file loads in a fresh process, where the notebook's class does not exist
    (model_file,) = (store / "inputs" / "models").glob("*.pt")
    code = f"import torch; m = torch.load({str(model_file)!r}, weights_only=False); print(type(m).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "NotebookNet"


def test_compute_run_in_memory_errors(tmp_path: Path) -> None:
    class Normalised(_Images):
        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            x, y = self.items[i]
            return (x - 0.5) / 0.25, y

    with pytest.raises(UserError, match="before normalisation"):
        xaidash.compute_run(Normalised(3, 0), tmp_path / "s", model=_notebook_model())
    class Unnamed(_Images):
        classes = None

    unnamed = Unnamed(3, 0)
    with pytest.raises(UserError, match=r"no \.classes"):
        xaidash.compute_run(unnamed, tmp_path / "s", model=_notebook_model())
    with pytest.raises(UserError, match="train_data= goes with"):
        xaidash.compute_run("imagefolder:x", tmp_path / "s", train_data=_Images(3, 0))
    sd = tmp_path / "state.pt"
    torch.save(_notebook_model().state_dict(), sd)
    with pytest.raises(UserError, match="state_dict, not a whole module"):
        xaidash.compute_run(_Images(3, 0), tmp_path / "s", model=f"module:{sd}")
