#!/usr/bin/env bash
# On a lent GPU box (its own Python with torch, Lightning, torchmetrics, timm, OpenCV, tifffile
# and pandas; no package registry): install the wheels of .whl/ (made here by `make gpu-wheels`)
# into a private folder, make this plain copy of the tree importable as an install would
# (pkg://segkit.conf, the segkit-* commands), then run the GPU check.
#
#   bash bench/gpu_box.sh                      # bench/gpu_check.py, its lines into bench/RESULTS.md
#   bash bench/gpu_box.sh --budget-s 300       # arguments go to bench/gpu_check.py
#   SEGKIT_BOX_ONLY=1 bash bench/gpu_box.sh    # set up only; then `source bench/gpu_box.env`
#
# WHEELS (default .whl), SITE (default /tmp/segkit-site), BIN (default /tmp/segkit-bin), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/segkit-site}
BIN=${BIN:-/tmp/segkit-bin}
PY=${PYTHON:-python3}
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "gpu_box: no wheels in $WHEELS/. Build them where the registry is reachable (make gpu-wheels) and copy" \
         "the tree with them (the device tool: carry [\".whl\"])." >&2
    exit 2
fi
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
[ -e segkit/conf ] || ln -s ../conf segkit/conf   # pkg://segkit.conf, as the wheel's package-dir maps it
mkdir -p "$BIN"
for pair in train:train prepare:prepare plan:plan predict:predict eval:evaluate export:export; do
    printf '#!/bin/sh\nexec %s -c "import sys; from segkit.cli import %s as main; sys.argv[0] = \\"segkit-%s\\"; main()" "$@"\n' \
        "$PY" "${pair#*:}" "${pair%:*}" > "$BIN/segkit-${pair%:*}"
    chmod +x "$BIN/segkit-${pair%:*}"
done
cat > bench/gpu_box.env <<ENV
export PYTHONPATH="$SITE:$PWD\${PYTHONPATH:+:\$PYTHONPATH}" PATH="$BIN:\$PATH"
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1
ENV
# shellcheck disable=SC1091
source bench/gpu_box.env
"$PY" -c "import segkit.cli, segmentation_models_pytorch, albumentations, hydra, lightning, torchmetrics" || {
    echo "gpu_box: the tree and the wheels do not import on this Python ($("$PY" --version)); see above" >&2; exit 2; }
[ -n "${SEGKIT_BOX_ONLY:-}" ] && { echo "gpu_box: ready; source bench/gpu_box.env, then segkit-train ... or python -m bench.gpu_check"; exit 0; }
exec "$PY" -m bench.gpu_check "$@"
