#!/usr/bin/env bash
# device_check.sh: everything a GPU machine should tell us, in one run of under 8 minutes.
#
#   bash bench/device_check.sh                    # on a CUDA machine (the default: --device cuda)
#   bash bench/device_check.sh --device cpu --small   # the CPU fallback CI runs (~1 minute)
#
# Sections:
#   1. a synthetic ImageFolder (default 10 classes x (150 train + 50 val) = 2000 JPEGs, 224 px)
#      and a seeded random-weight ResNet-18 checkpoint for it;
#   2. bench/compute_vs_peers.py on the device: the gradient trio and Score-CAM (fp32, bf16)
#      against torch-cam and pytorch-grad-cam, same model, same device;
#   3. `xaidash compute` over the whole folder in fp32, then in bf16 (all eight CAM methods,
#      the pixel attributions, faithfulness and the trust checks), each into its own store;
#   4. images/s per stage of both runs (the run's timings, `xaidash runs show --json`) and the
#      bf16/fp32 ratios;
#   5. a handful of images computed on the CPU in fp32: the device's fp32 maps must match them
#      (max |Δ| <= --tol), and the device's bf16 maps are compared with its fp32 maps.
#
# Options (each also as an environment variable):
#   --device cuda|cuda:N|cpu   XAIDASH_CHECK_DEVICE  (default cuda)
#   --small                    XAIDASH_CHECK_SMALL=1: tiny sizes (16-px images, 2 classes, a
#                              Score-CAM channel cap): checks that the script works, measures nothing
#   --workdir DIR              XAIDASH_CHECK_WORKDIR (default: a new temporary folder)
#   --keep                     XAIDASH_CHECK_KEEP=1: keep the work folder (stores, logs)
#   --classes N --train N --val N --size PX   per-class image counts and image side
#   --batch-size N             XAIDASH_CHECK_BATCH (default 128 on CUDA, 8 with --small)
#   --reference-images N       images of the CPU reference (default 6)
#   --tol X                    XAIDASH_CHECK_TOL: largest fp32 device-vs-CPU |Δmap| (default 2e-3)
#   --compile                  section 2 also measures torch.compile and the prototype
#                              masked-forward models (--compile --prototypes; adds minutes)
#   --step-timeout S           XAIDASH_CHECK_STEP_TIMEOUT: limit per step (default 600 s)
#   PYTHON=...                 the interpreter (default: the repo's .venv, else python3)
#
# Exit status: 0 when every step ran and every check passed, non-zero otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
DEVICE="${XAIDASH_CHECK_DEVICE:-cuda}"
SMALL="${XAIDASH_CHECK_SMALL:-0}"
WORKDIR="${XAIDASH_CHECK_WORKDIR:-}"
KEEP="${XAIDASH_CHECK_KEEP:-0}"
BATCH="${XAIDASH_CHECK_BATCH:-}"
TOL="${XAIDASH_CHECK_TOL:-2e-3}"
STEP_TIMEOUT="${XAIDASH_CHECK_STEP_TIMEOUT:-600}"
COMPILE=0
CLASSES="" TRAIN="" VAL="" SIZE="" REF=""

usage() { sed -n '2,/^# Exit status/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --small) SMALL=1; shift ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --classes) CLASSES="$2"; shift 2 ;;
    --train) TRAIN="$2"; shift 2 ;;
    --val) VAL="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    --batch-size) BATCH="$2"; shift 2 ;;
    --reference-images) REF="$2"; shift 2 ;;
    --tol) TOL="$2"; shift 2 ;;
    --compile) COMPILE=1; shift ;;
    --step-timeout) STEP_TIMEOUT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "device_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ "$SMALL" == 1 ]]; then
  CLASSES="${CLASSES:-2}" TRAIN="${TRAIN:-8}" VAL="${VAL:-3}" SIZE="${SIZE:-16}" REF="${REF:-2}"
  BATCH="${BATCH:-8}"
  # a Score-CAM cap and small trust and attribution samples keep the CPU fallback around a
  # minute (every part still runs once); the run labels Score-CAM approximate
  CAP=(--scorecam-max-channels 32)
  EXTRA=("${CAP[@]}" --faithfulness-steps 4 --workers 0 --sanity-images 2 --road-images 4
         --attribution-images 2 --ig-steps 4 --smoothgrad-samples 2 --attribution-sanity-images 1)
  # the bf16 run's own part is its forward-only stages and its measured deviation: the sanity
  # check and the attributions (fp32 in both runs) were proved by the fp32 run just before
  CALIB=(--calibration-images 2 --sanity-images 0 --attribution-images 0)
  # 32 px: every peer and every method still runs once; the ratios at this size mean nothing
  PEERS=(--size 32 --images 2 --batch 2 --scorecam-images 1 --scorecam-batch 64 --repeats 1 --scorecam-repeats 1)
else
  CLASSES="${CLASSES:-10}" TRAIN="${TRAIN:-150}" VAL="${VAL:-50}" SIZE="${SIZE:-224}" REF="${REF:-6}"
  if [[ "$DEVICE" == cpu ]]; then BATCH="${BATCH:-64}"; else BATCH="${BATCH:-128}"; fi
  NPROC="$(nproc 2>/dev/null || echo 2)"
  WORKERS=$(( NPROC > 9 ? 8 : (NPROC > 1 ? NPROC - 1 : 0) ))
  CAP=()
  CALIB=()
  EXTRA=(--workers "$WORKERS")
  if [[ "$DEVICE" == cpu ]]; then
    PEERS=(--scorecam-images 1)
  else
    PEERS=(--images 256 --batch 64 --scorecam-images 16 --scorecam-batch 256 --scorecam-repeats 3)
  fi
fi
if [[ "$COMPILE" == 1 ]]; then PEERS+=(--compile --prototypes); fi

CURRENT="start"
T_START="$(date +%s)"
on_exit() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    echo >&2
    echo "device_check: FAILED in section '$CURRENT' (exit $rc); work folder: ${WORKDIR:-none}" >&2
  fi
  if [[ "$KEEP" != 1 && -n "${CREATED_WORKDIR:-}" && $rc -eq 0 ]]; then rm -rf "$CREATED_WORKDIR"; fi
  exit $rc
}
trap on_exit EXIT

section() {
  CURRENT="$1"
  echo
  echo "=== $1  [$(( $(date +%s) - T_START )) s] ==="
}

# run a step with a time limit; its full output goes to a log, shown whole when it fails
step() {
  local log="$1"; shift
  local rc=0
  timeout "$STEP_TIMEOUT" "$@" >"$log" 2>&1 || rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "--- last lines of $log ---" >&2
    tail -n 40 "$log" >&2
    [[ $rc -eq 124 ]] && echo "device_check: step timed out after $STEP_TIMEOUT s: $*" >&2
    return "$rc"
  fi
}

XAIDASH=("$PYTHON" -c 'import sys; from xaidash.cli import main; sys.exit(main(sys.argv[1:]))')
export PYTHON PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

section "0. environment"
if [[ -z "$WORKDIR" ]]; then
  WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/xaidash-device-check.XXXXXX")"
  CREATED_WORKDIR="$WORKDIR"
else
  mkdir -p "$WORKDIR"
  rm -rf "$WORKDIR/data" "$WORKDIR"/store-* "$WORKDIR"/*.log "$WORKDIR"/*.json
fi
echo "repo $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
echo "python $PYTHON; work folder $WORKDIR; device $DEVICE; small=$SMALL"
"$PYTHON" - "$DEVICE" <<'EOF'
import sys

import torch

dev = sys.argv[1]
print(f"torch {torch.__version__}, cuda build {torch.version.cuda}, threads {torch.get_num_threads()}, "
      f"cpu {torch.backends.cpu.get_cpu_capability()}")
if dev.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("device_check: --device cuda but torch.cuda.is_available() is False "
                 "(use --device cpu --small for the CPU fallback)")
    d = torch.device(dev)
    p = torch.cuda.get_device_properties(d)
    free, total = torch.cuda.mem_get_info(d)
    print(f"GPU {p.name}, sm_{p.major}{p.minor}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} free), "
          f"bf16 supported: {torch.cuda.is_bf16_supported()}")
for name in ("torchcam", "pytorch_grad_cam"):
    try:
        __import__(name)
    except ImportError:
        print(f"warning: {name} is not installed; its rows are skipped (pip install torchcam grad-cam)")
EOF

section "1. synthetic ImageFolder"
step "$WORKDIR/data.log" "$PYTHON" - "$WORKDIR" "$CLASSES" "$TRAIN" "$VAL" "$SIZE" <<'EOF'
"""A seeded ImageFolder like tests/support/imagegen.make_imagefolder (JPEG, one process per
class and split) and a seeded random-weight ResNet-18 checkpoint for it, written like
tests/support/models.save_tiny_checkpoint."""
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.imagegen import pattern_image

work, n_classes, n_train, n_val, size = Path(sys.argv[1]), *map(int, sys.argv[2:6])
classes = [f"class{i:02d}" for i in range(n_classes)]


def write(job: tuple[str, int, int]) -> int:
    split, ci, n = job
    rng = np.random.default_rng(1000 * ci + (split == "val"))
    d = work / "data" / split / classes[ci]
    d.mkdir(parents=True, exist_ok=True)
    for j in range(n):
        Image.fromarray(pattern_image(ci, n_classes, size, rng)).save(d / f"{classes[ci]}_{j:04d}.jpg",
                                                                     quality=90)
    return n


if __name__ == "__main__":
    t0 = time.perf_counter()
    jobs = [(s, ci, n) for s, n in (("train", n_train), ("val", n_val)) for ci in range(n_classes)]
    with ProcessPoolExecutor() as pool:
        total = sum(pool.map(write, jobs))
    (work / "classes.txt").write_text(",".join(classes))

    import torch

    from xaidash.compute.model.checkpoint import Checkpoint, save_checkpoint
    from xaidash.compute.model.architectures import build_model

    torch.manual_seed(0)
    parts = build_model("resnet18", n_classes, input_size=size)
    save_checkpoint(Checkpoint(
        arch="resnet18", classes=classes, preprocessing=parts.preprocessing,
        small_input_stem=parts.small_input_stem, state_dict=parts.model.state_dict(), train_args={},
        metrics={}, versions={}, created="2026-12-01T00:00:00+00:00", path=None, sha256=None,
    ), str(work / "model.pt"))
    print(f"{total} images ({n_classes} classes x {n_train} train + {n_val} val, {size} px) in "
          f"{time.perf_counter() - t0:.1f} s; checkpoint: seeded random ResNet-18"
          f"{' (small-input stem)' if parts.small_input_stem else ''}")
EOF
cat "$WORKDIR/data.log"
DATA="imagefolder:$WORKDIR/data"
CKPT="$WORKDIR/model.pt"

section "2. bench/compute_vs_peers.py --device ${DEVICE%%:*}"
step "$WORKDIR/peers.log" "$PYTHON" "$ROOT/bench/compute_vs_peers.py" --device "${DEVICE%%:*}" "${PEERS[@]}" \
  --json "$WORKDIR/peers.json"
sed -n '/^device=/,$p' "$WORKDIR/peers.log"

compute() {  # compute NAME PRECISION DEVICE [more xaidash compute options]
  local name="$1" precision="$2" dev="$3"; shift 3
  local t0 t1
  t0="$(date +%s.%N)"
  step "$WORKDIR/$name.log" "${XAIDASH[@]}" compute --data "$DATA" --checkpoint "$CKPT" --store "$WORKDIR/store-$name" \
    --device "$dev" --precision "$precision" --batch-size "$BATCH" --projection pca "$@"
  t1="$(date +%s.%N)"
  grep -E "^(job |published run|  images:|  time per stage)" "$WORKDIR/$name.log" || true
  "$PYTHON" -c "print(f'wall {float(\"$t1\") - float(\"$t0\"):.1f} s')" | tee "$WORKDIR/$name.wall"
}

section "3a. xaidash compute --device $DEVICE --precision fp32 (all methods, faithfulness)"
compute fp32 fp32 "$DEVICE" "${EXTRA[@]}"
section "3b. xaidash compute --device $DEVICE --precision bf16 (all methods, faithfulness)"
compute bf16 bf16 "$DEVICE" "${EXTRA[@]}" ${CALIB[@]+"${CALIB[@]}"}

section "4. images/s per stage (runs.timings_json)"
"$PYTHON" - "$WORKDIR" <<'EOF'
import json
import sys
from pathlib import Path

from xaidash.store import open_store

work = Path(sys.argv[1])
runs = {}
for name in ("fp32", "bf16"):
    reader = open_store(work / f"store-{name}")
    run_id = reader.latest_run_id()
    if run_id is None:
        sys.exit(f"device_check: store-{name} has no run")
    info = reader.run(run_id)
    assert info is not None
    runs[name] = (info, float((work / f"{name}.wall").read_text().split()[1]))
    print(f"{name}: run {run_id}, device {info.device}, precision {info.precision_json}")


def per_image(stage: str, info) -> int:
    if stage == "precision_calibration":  # the bf16 run's fp32 recomputation of a sample
        return int(runs["bf16"][0].precision.get("calibration", {}).get("images", 0))
    if stage.startswith(("val_", "per_image_val")):
        return int(info.num_val)
    if stage.startswith(("train_", "per_image_train")):
        return int(info.num_train)
    return int(info.num_val) + int(info.num_train)


stages = [k for k, v in runs["fp32"][0].timings.items() if isinstance(v, (int, float))]
stages += [k for k, v in runs["bf16"][0].timings.items() if isinstance(v, (int, float)) and k not in stages]
print(f"\n{'stage':<24} {'images':>6} {'fp32 s':>8} {'img/s':>9} {'bf16 s':>8} {'img/s':>9} {'bf16/fp32':>9}")
rows = {}
for k in stages:
    n = per_image(k, runs["fp32"][0])
    a, b = runs["fp32"][0].timings.get(k), runs["bf16"][0].timings.get(k)
    ips = [n / t if isinstance(t, (int, float)) and t > 0 else None for t in (a, b)]
    ratio = ips[1] / ips[0] if ips[0] and ips[1] else None
    rows[k] = {"images": n, "fp32_s": a, "bf16_s": b, "fp32_img_s": ips[0], "bf16_img_s": ips[1], "ratio": ratio}

    def f(v, spec):
        return format(v, spec) if v is not None else "-".rjust(int(spec.split(".")[0]))

    print(f"{k:<24} {n:>6} {f(a, '8.1f')} {f(ips[0], '9.1f')} {f(b, '8.1f')} {f(ips[1], '9.1f')} "
          f"{f(ratio, '9.2f')}")
n_all = int(runs["fp32"][0].num_val) + int(runs["fp32"][0].num_train)
wa, wb = runs["fp32"][1], runs["bf16"][1]
print(f"{'whole command (wall)':<24} {n_all:>6} {wa:8.1f} {n_all / wa:9.1f} {wb:8.1f} {n_all / wb:9.1f} "
      f"{wa / wb:9.2f}")
for name in ("fp32", "bf16"):
    ms = runs[name][0].timings.get("method_ms_per_image")
    if isinstance(ms, dict):
        print(f"{name} ms per image, each method alone: " + ", ".join(f"{m} {v:.1f}" for m, v in ms.items()))
(work / "stages.json").write_text(json.dumps(rows, indent=2))
EOF

section "5a. CPU fp32 reference ($REF val images)"
# the CAMs alone: the trust checks and the attributions are scores and samples of the whole run,
# which a few reference images could not match
compute cpuref fp32 cpu --limit-val "$REF" --limit-train 2 --no-faithfulness --twins 1 --workers 0 \
  --sanity-images 0 --road-fractions none --attribution-images 0 ${CAP[@]+"${CAP[@]}"}

section "5b. maps: $DEVICE fp32 vs CPU fp32, $DEVICE bf16 vs $DEVICE fp32"
"$PYTHON" - "$WORKDIR" "$TOL" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from xaidash.constants import GRADIENT_METHODS
from xaidash.store import open_store

work, tol = Path(sys.argv[1]), float(sys.argv[2])


def maps(name: str) -> dict[tuple[str, str], tuple[int, np.ndarray]]:
    reader = open_store(work / f"store-{name}")
    run_id = reader.latest_run_id()
    df = reader.sql("SELECT image_id, method, target_class, h, w, map FROM cams "
                    "WHERE run_id = ? AND target_kind = 'pred'", [run_id])
    return {(r.image_id, r.method): (int(r.target_class), np.asarray(r.map, np.float32).reshape(r.h, r.w))
            for r in df.itertuples()}


def compare(a: dict, b: dict, label: str) -> dict[str, float]:
    common = sorted(set(a) & set(b))
    if not common:
        sys.exit(f"device_check: {label}: no image/method in common")
    worst: dict[str, float] = {}
    print(f"\n{label}")
    print(f"{'method':<10} {'images':>6} {'max |Δ|':>9} {'median':>9} {'other target':>12}")
    for method in sorted({m for _, m in common}):
        keys = [k for k in common if k[1] == method]
        same = [k for k in keys if a[k][0] == b[k][0]]
        d = [float(np.abs(a[k][1] - b[k][1]).max()) for k in same]
        worst[method] = max(d) if d else float("nan")
        med = float(np.median(d)) if d else float("nan")
        print(f"{method:<10} {len(keys):>6} {worst[method]:9.2e} {med:9.2e} {len(keys) - len(same):>12}")
    return worst


ref, fp32, bf16 = maps("cpuref"), maps("fp32"), maps("bf16")
failed = []
dev_vs_cpu = compare(fp32, ref, f"device fp32 vs CPU fp32 (must be <= {tol:g})")
for m, v in dev_vs_cpu.items():
    if not v <= tol:  # NaN (every image had another target) fails too
        failed.append(f"{m}: fp32 maps differ from the CPU's by {v:.3g} > {tol:g}")
bf_vs_fp = compare(bf16, fp32, "device bf16 vs device fp32 (bf16 applies to the forward-only stages)")
for m in GRADIENT_METHODS:  # bf16 is for the forward-only stages: these come from the fp32 pass
    if bf_vs_fp.get(m, 0.0) != 0.0:
        failed.append(f"{m}: maps are not bit-equal between the fp32 and the bf16 run "
                      f"(max |Δ| {bf_vs_fp[m]:.3g}): bf16 reached the gradient forward")
if failed:
    print("\n" + "\n".join(f"FAIL {f}" for f in failed))
    sys.exit(1)
print("\nmaps check passed")
EOF

section "done"
ELAPSED=$(( $(date +%s) - T_START ))
echo "device_check passed in $ELAPSED s (device $DEVICE, small=$SMALL); work folder $WORKDIR$([[ "$KEEP" == 1 ]] || echo ' (removed)')"
if [[ "$SMALL" != 1 && $ELAPSED -gt 480 ]]; then
  echo "note: took more than 8 minutes; use --val/--train to shrink it"
fi
