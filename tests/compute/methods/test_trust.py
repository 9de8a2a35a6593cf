"""Known-answer tests of the trust checks: sanity check, baselines, ROAD, localisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import spsolve

from tests.support.models import settled_resnet18
from xaidash.compute.methods.baselines import centre_map, random_map
from xaidash.compute.methods.cams import CamEngine
from xaidash.compute.methods.localisation import localisation_scores, pointing_radius
from xaidash.compute.methods.road import CG_MAX_PIXELS, NEIGHBOUR_WEIGHTS, impute, road
from xaidash.compute.methods.sanity import (
    RANDOMISATION_BLOCKS,
    iter_randomised,
    randomisation_blocks,
    sanity_rows,
)
from xaidash.compute.model.architectures import build_model
from xaidash.compute.pipeline.config import JobConfig, validate
from xaidash.dashboard.trust_verdicts import sanity_verdicts
from xaidash.errors import UserError

SIZE = 32  # small-stem ResNet-18: layer4 is 4x4


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, torch.Tensor]:
    return settled_resnet18(SIZE, 8)


def _verdicts(rows: object) -> pd.DataFrame:
    df = pd.DataFrame(vars(rows))
    curves = df.groupby(["method", "step"], as_index=False).agg(
        block=("block", "first"), spearman=("spearman", "mean"), n=("spearman", "count"))
    return sanity_verdicts(curves).set_index("method")


def _gradcam(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    with CamEngine(model, "layer4", "fc") as e:
        res = e.forward(x, ["gradcam"], true_labels=targets)
    return {"gradcam": res.maps[("gradcam", "true")]}


def _edges(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """A map that ignores the model: the input's gradient magnitude, pooled to 4x4."""
    g = x.mean(1, keepdim=True)
    mag = (g[..., 1:, :-1] - g[..., :-1, :-1]).abs() + (g[..., :-1, 1:] - g[..., :-1, :-1]).abs()
    return {"edges": F.adaptive_avg_pool2d(mag, 4)[:, 0]}


def test_map_that_ignores_the_model_fails_the_sanity_check(
        tiny: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, x = tiny
    targets = torch.zeros(len(x), dtype=torch.long)
    ids = [f"{i:016x}" for i in range(len(x))]
    rows = sanity_rows(_edges, model, RANDOMISATION_BLOCKS["resnet18"], x, targets, _edges(model, x, targets),
                       ids)
    assert len(rows.spearman) == len(x) * 6 and all(r == pytest.approx(1.0) for r in rows.spearman)
    v = _verdicts(rows)
    assert not v.loc["edges", "passes"] and v.loc["edges", "verdict"] == "survives randomisation: flagged"


def test_gradcam_passes_the_sanity_check(tiny: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, x = tiny
    with CamEngine(model, "layer4", "fc") as e:
        res = e.forward(x, ["gradcam"])
    targets = res.targets["pred"]
    ids = [f"{i:016x}" for i in range(len(x))]
    rows = sanity_rows(_gradcam, model, RANDOMISATION_BLOCKS["resnet18"], x, targets,
                       {"gradcam": res.maps[("gradcam", "pred")]}, ids)
    assert [s for s in rows.step[:: len(x)]] == [1, 2, 3, 4, 5, 6]
    v = _verdicts(rows)
    assert v.loc["gradcam", "passes"], v
    assert v.loc["gradcam", "first_block"] in ("fc", "layer4")
    assert v.loc["gradcam", "verdict"].startswith("changes completely once ")


def test_randomised_copies_are_seeded_and_never_touch_the_model(
        tiny: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = randomisation_blocks(model, "resnet18")
    first = [{k: v.clone() for k, v in m.state_dict().items()} for _, m in iter_randomised(model, blocks)]
    second = [{k: v.clone() for k, v in m.state_dict().items()} for _, m in iter_randomised(model, blocks)]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the user's model is untouched
    for a, b in zip(first, second, strict=True):  # reproducible (seeded)
        assert all(torch.equal(a[k], b[k]) for k in a)
    # cascading: step 1 changes fc only, step 2 also layer4, ..., step 6 the stem
    changed = [{k.split(".")[0] for k in s
                if s[k].dtype.is_floating_point and not torch.equal(s[k], before[k])} for s in first]
    assert changed[0] == {"fc"} and changed[1] == {"fc", "layer4"}
    assert changed[-1] == {"fc", "layer4", "layer3", "layer2", "layer1", "conv1", "bn1"}
    # every architecture's blocks exist in its model
    for arch in ("mobilenet_v3_large", "efficientnet_b0", "vgg16"):
        m = build_model(arch, 2).model
        for _, modules in RANDOMISATION_BLOCKS[arch]:
            for name in modules:
                m.get_submodule(name)


def test_baseline_maps_are_their_definitions() -> None:
    c = centre_map(3, 3)
    sigma2 = 0.75**2  # sigma = max(h, w) / 4
    corner, edge = np.exp(-2 / (2 * sigma2)), np.exp(-1 / (2 * sigma2))
    g = np.array([[corner, edge, corner], [edge, 1.0, edge], [corner, edge, corner]])
    expect = (g - corner) / (1 - corner)
    np.testing.assert_allclose(c, expect, atol=1e-6)
    assert c.dtype == np.float32 and centre_map(1, 1).tolist() == [[0.0]]
    r1, r2 = random_map("00112233aabbccdd", 4, 5), random_map("00112233aabbccde", 4, 5)
    assert r1.shape == (4, 5) and (r1 >= 0).all() and (r1 < 1).all()
    np.testing.assert_array_equal(r1, random_map("00112233aabbccdd", 4, 5))  # seeded by the image id
    assert not np.array_equal(r1, r2)
    expect_r = np.random.default_rng([7, int("00112233aabbccdd", 16)]).random((4, 5), dtype=np.float32)
    np.testing.assert_array_equal(r1, expect_r)


# ---- ROAD ---------------------------------------------------------------------------------------


def _scipy_impute(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The literal sparse system of the docstring, solved by scipy.sparse.linalg.spsolve."""
    c, h, w = img.shape
    flat = removed.ravel()
    idx = np.flatnonzero(flat)
    pos = -np.ones(h * w, dtype=int)
    pos[idx] = np.arange(len(idx))
    a = sp.lil_matrix((len(idx), len(idx)))
    b = np.zeros((len(idx), c))
    for e, p in enumerate(idx):
        y, x = divmod(int(p), w)
        for (dy, dx), wt in NEIGHBOUR_WEIGHTS.items():
            yy, xx = y + dy, x + dx
            if 0 <= yy < h and 0 <= xx < w:
                a[e, e] += wt
                q = yy * w + xx
                if flat[q]:
                    a[e, pos[q]] = -wt
                else:
                    b[e] += wt * img[:, yy, xx]
    sol = spsolve(sp.csc_matrix(a), b).reshape(len(idx), c)
    out = img.reshape(c, -1).copy()
    out[:, idx] = sol.T
    return out.reshape(c, h, w)


def test_road_imputation_matches_scipy_sparse_solve() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.standard_normal((4, 3, 14, 12)).astype(np.float32)
    smooth = F.interpolate(torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(0)), size=(14, 12),
                           mode="bilinear", align_corners=False)
    removed = np.stack([
        rng.random((14, 12)) < 0.5,  # scattered
        (smooth[1, 0] > smooth[1, 0].median()).numpy(),  # one contiguous half (MoRF-like)
        (smooth[2, 0] > torch.quantile(smooth[2, 0], 0.1)).numpy(),  # 90 % removed
        np.zeros((14, 12), dtype=bool),  # nothing removed
    ])
    got = impute(torch.from_numpy(imgs), torch.from_numpy(removed)[:, None], solver="cg").numpy()
    direct = impute(torch.from_numpy(imgs), torch.from_numpy(removed)[:, None], solver="direct").numpy()
    auto = impute(torch.from_numpy(imgs), torch.from_numpy(removed)[:, None]).numpy()
    np.testing.assert_array_equal(auto, got)  # small images on the CPU: CG
    big = torch.from_numpy(rng.standard_normal((1, 3, 48, 40)).astype(np.float32))
    hole = torch.zeros(1, 1, 48, 40, dtype=torch.bool)
    hole[..., 10:30, 5:25] = True
    assert CG_MAX_PIXELS <= 48 * 40
    torch.testing.assert_close(impute(big, hole), impute(big, hole, solver="direct"), rtol=0, atol=0)
    np.testing.assert_allclose(impute(big, hole, solver="cg").numpy(), impute(big, hole).numpy(), atol=1e-4)
    for i in range(4):
        ref = _scipy_impute(imgs[i].astype(np.float64), removed[i])
        np.testing.assert_allclose(got[i], ref, atol=1e-4)
        np.testing.assert_allclose(direct[i], ref, atol=1e-6)
        for out in (got, direct):  # kept pixels kept
            np.testing.assert_array_equal(out[i][:, ~removed[i]], imgs[i][:, ~removed[i]])
    # iterating long after the easy systems converged keeps them finite and exact (they freeze)
    long = impute(torch.from_numpy(imgs), torch.from_numpy(removed)[:, None], tol=0.0, max_iter=2000,
                  solver="cg").numpy()
    assert np.isfinite(long).all()
    np.testing.assert_allclose(long, got, atol=1e-4)
    # the same system as pytorch-grad-cam's NoisyLinearImputer (mask: 1 = keep), without noise
    road_mod = pytest.importorskip("pytorch_grad_cam.metrics.road")
    peer = road_mod.NoisyLinearImputer(noise=0.0)
    for i in range(3):
        ref = peer(torch.from_numpy(imgs[i]), torch.from_numpy((~removed[i]).astype(np.float32))).numpy()
        np.testing.assert_allclose(got[i], ref, atol=1e-4)


def test_road_is_seeded_and_independent_of_batching(
        tiny: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, x = tiny
    maps = {"a": torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(3))}
    ids = ["0123456789abcdef", "fedcba9876543210"]
    out1 = road(model, x[:2], maps, torch.tensor([0, 1]), ids, (0.1, 0.5), batch_size=3)
    out2 = road(model, x[:2], maps, torch.tensor([0, 1]), ids, (0.1, 0.5), batch_size=8)
    assert set(out1["a"]) == {"morf", "lerf"} and out1["a"]["morf"].shape == (2, 2)
    for o in ("morf", "lerf"):
        torch.testing.assert_close(out1["a"][o], out2["a"][o])  # batching does not change it
        assert ((out1["a"][o] >= 0) & (out1["a"][o] <= 1)).all()


# ---- localisation -------------------------------------------------------------------------------


def test_pointing_energy_and_iou_on_a_hand_computed_4x4_example() -> None:
    m = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.5, 0.0],
                      [0.0, 0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]])
    top_left = torch.zeros(4, 4, dtype=torch.bool)
    top_left[:2, :2] = True  # pixels 0, 1, 4, 5: holds the maximum (pixel 5) and mass 1 of 2.25
    bottom_right = torch.zeros(4, 4, dtype=torch.bool)
    bottom_right[2:, 2:] = True  # pixels 10, 11, 14, 15: mass 0.25
    maps = torch.stack([m, m, torch.zeros(4, 4)])
    s = localisation_scores(maps, torch.stack([top_left, bottom_right, top_left]), topk=20)
    # top 20 % of 16 pixels = ceil(3.2) = 4 pixels: 5 (1.0), 6 and 9 (0.5), 10 (0.25)
    assert s["pointing"][:2].tolist() == [1.0, 0.0]
    assert s["energy"][:2].tolist() == pytest.approx([1 / 2.25, 0.25 / 2.25])
    assert s["iou"][:2].tolist() == pytest.approx([1 / 7, 1 / 7])  # |{5}| / |{0,1,4,5,6,9,10}|
    s50 = localisation_scores(maps[:1], top_left[None], topk=50)  # 8 pixels: 5, 6, 9, 10, 0, 1, 2, 3
    assert s50["iou"].tolist() == pytest.approx([3 / 9])  # {0, 1, 5} of {0,1,2,3,4,5,6,9,10}
    assert all(np.isnan(s[k][2].item()) for k in ("pointing", "energy", "iou"))  # all-zero map: null


def test_pointing_game_tolerance_is_a_euclidean_disc_scaled_from_224_px() -> None:
    obj = torch.zeros(1, 9, 9, dtype=torch.bool)
    obj[0, 4, 0] = True  # one object pixel at (row 4, col 0)
    hits = []
    for col, row in ((2, 4), (3, 4), (2, 6), (3, 6)):  # the map's maximum at distance 2, 3, √8, √13
        m = torch.zeros(1, 9, 9)
        m[0, row, col] = 1.0
        hits.append([localisation_scores(m, obj, radius=r)["pointing"].item() for r in (0.0, 2.0, 3.0)])
    assert hits == [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    # energy and IoU do not depend on the tolerance
    m = torch.rand(1, 9, 9, generator=torch.Generator().manual_seed(0))
    a, b = localisation_scores(m, obj, radius=0.0), localisation_scores(m, obj, radius=4.0)
    assert a["energy"].item() == b["energy"].item() and a["iou"].item() == b["iou"].item()
    assert pointing_radius(15, (224, 224)) == 15
    assert pointing_radius(15, (32, 40)) == pytest.approx(15 * 32 / 224)


# ---- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "needle"), [
    ({"sanity_images": -1}, "--sanity-images"),
    ({"road_fractions": (0.0, 0.5)}, "--road-fractions"),
    ({"road_fractions": (1.0,)}, "--road-fractions"),
    ({"road_images": 0}, "--road-images"),
    ({"localisation_topk": 0.0}, "--localisation-topk"),
    ({"localisation_topk": 101.0}, "--localisation-topk"),
    ({"pointing_tolerance": -1.0}, "--pointing-tolerance"),
])
def test_bad_trust_options_fail_fast(kw: dict[str, object], needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        validate(JobConfig(data="imagefolder:/x", store="/tmp/s", checkpoint="c.pt", **kw))  # type: ignore[arg-type]


def test_road_fractions_parse() -> None:
    import argparse

    from xaidash.compute.pipeline.config import parse_fractions

    assert parse_fractions("0.5, 0.1") == (0.5, 0.1) and parse_fractions("none") == ()
    with pytest.raises(UserError, match="--road-fractions"):
        parse_fractions("half")
    cfg = JobConfig.from_args(argparse.Namespace(data="d", store="s", road_fractions="0.9,0.1"))
    assert validate(JobConfig(**{**vars(cfg), "checkpoint": "c"})).road_fractions == (0.1, 0.9)


def test_road_imputation_stays_fp32_under_a_bf16_autocast() -> None:
    from xaidash.compute.methods.ranks import pixel_ranks
    from xaidash.compute.methods.road import image_noise

    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.standard_normal((1, 3, 10, 10)).astype(np.float32))
    smap = torch.rand(1, 10, 10, generator=torch.Generator().manual_seed(2))
    iid = "00000000000000aa"
    morf = (pixel_ranks(smap.flatten(1)) < 60).view(1, 1, 10, 10)  # the 60 % most relevant pixels
    expect = impute(img, morf, image_noise(iid, (3, 10, 10))[None])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(300, 2)).eval()
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        road(model, img, {"m": smap}, torch.tensor([0]), [iid], (0.6,))
    assert seen[0].dtype == torch.float32
    torch.testing.assert_close(seen[0][:1], expect, atol=1e-6, rtol=0)  # first job: MoRF 60 %
