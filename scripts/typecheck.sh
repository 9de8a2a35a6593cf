#!/usr/bin/env bash
# mypy over the package as it is installed: xaidash.compute, xaidash.store and xaidash.dashboard are
# the top-level folders compute/, store/ and dashboard/ (setuptools package-dir). mypy cannot follow
# setuptools' editable-install finder, so it checks a temporary tree of symlinks laid out like
# site-packages, and the paths it reports are mapped back to the repository's.
#   bash scripts/typecheck.sh            # uses .venv/bin/mypy, the config in pyproject.toml
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
mypy=${MYPY:-$repo/.venv/bin/mypy}
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/xaidash"
for f in "$repo"/xaidash/*.py; do ln -s "$f" "$tree/xaidash/"; done
for d in compute store dashboard assets; do ln -s "$repo/$d" "$tree/xaidash/$d"; done
cd "$tree"
set +e
"$mypy" --config-file "$repo/pyproject.toml" --cache-dir "$repo/.mypy_cache" -p xaidash > "$tree/out.txt" 2>&1
rc=$?
set -e
sed -E 's#^xaidash/(compute|store|dashboard|assets)/#\1/#' "$tree/out.txt"
exit $rc
