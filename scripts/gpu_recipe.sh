#!/usr/bin/env bash
# One GPU run of the ISBI recipe: installs carried wheels if MONAI is missing, trains on the reduced cache
# (scripts/prepare_cache.py), and leaves the fp16 weights, the log and the learning curve in $OUT.
#   OUT=/tmp/gpu bash scripts/gpu_recipe.sh [extra overrides, e.g. --time_budget_minutes 6]
#   NETWORK=configs/maht_net.yaml OUT=/tmp/gpu bash scripts/gpu_recipe.sh ...   # MAHT-Net instead of the U-Net
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu}"
CACHE="${CACHE:-cache/isbi_f3}"
NETWORK="${NETWORK:-}"                          # a network override layered after the recipe, e.g. configs/maht_net.yaml
TRAIN="${TRAIN:-$OUT/train}"                    # checkpoints and TensorBoard logs
mkdir -p "$OUT"
if ! python3 -c "import monai, ignite, fire" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
start=$(date +%s)
configs="'configs/train.yaml','configs/isbi_gpu.yaml'"
[ -n "$NETWORK" ] && configs="$configs,'$NETWORK'"
python3 -m monai.bundle run training --config_file "[$configs]" \
  --dataset_dir "$CACHE" --output_dir "$TRAIN" "$@" > "$OUT/train.log" 2>&1 || { tail -50 "$OUT/train.log"; exit 1; }
end=$(date +%s)
grep -E "Metrics|time budget|best value" "$OUT/train.log" | tail -15
python3 - "$OUT" "$((end - start))" "$TRAIN" <<'PY'
import json, sys, torch
out, seconds, train = sys.argv[1], int(sys.argv[2]), sys.argv[3]
state = torch.load(f"{train}/model.pt", map_location="cpu")
torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, f"{out}/model_fp16.pt")
curve = json.load(open(f"{train}/learning_curve.json"))
best = min(curve, key=lambda p: p["val_mre"])
json.dump({"wall_seconds": seconds, "best": best, "curve": curve,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"},
          open(f"{out}/result.json", "w"), indent=1)
print(json.dumps({"wall_seconds": seconds, "best": best}))
PY
cp "$TRAIN/learning_curve.json" "$OUT/" 2>/dev/null || true
