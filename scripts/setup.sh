#!/usr/bin/env bash
# Sets up xaidash on a fresh Debian/Ubuntu machine: system packages (Fashion-MNIST for the demo,
# Chromium for the browser tests), a virtual environment in .venv, and the project itself.
#   bash scripts/setup.sh          # what the demo needs
#   bash scripts/setup.sh --test   # plus what the tests need
# Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

apt_packages=(dataset-fashion-mnist)
[ $with_tests = 1 ] && apt_packages+=(chromium chromium-driver)

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "setup: no apt-get here; install ${missing[*]} by hand (Fashion-MNIST can also be downloaded by torchvision when online)" >&2
  else
    sudo=""
    [ "$(id -u)" != 0 ] && sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision first, pinned: on this project's machines these exact builds lie on local
# disk; an unpinned torch would pull a multi-GB build from the network.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
if [ $with_tests = 1 ]; then
  .venv/bin/python -m pip install -q -e ".[test,timm,umap]"
else
  # umap: the demo's embedding map is a UMAP (without umap-learn compute falls back to PCA, and says so)
  .venv/bin/python -m pip install -q -e ".[timm,umap]"
fi
echo "setup: ready (.venv/bin/xaidash)" >&2
