#!/usr/bin/env bash
# One GPU run of the ISBI recipe: installs carried wheels if MONAI is missing, trains on the reduced cache
# (scripts/prepare_cache.py), and leaves the fp16 weights, the log and the learning curve in $OUT.
#   OUT=/tmp/gpu bash scripts/gpu_recipe.sh [extra overrides, e.g. --time_budget_minutes 6]
#   NETWORK=configs/maht_net.yaml OUT=/tmp/gpu bash scripts/gpu_recipe.sh ...   # MAHT-Net instead of the U-Net
#   REFINE_MINUTES=2 ...   # then the coarse-to-fine refinement network (configs/refine.yaml) on REFINE_CACHE, a
#                          # cache at 0.2 mm: python scripts/prepare_cache.py ... --out cache/isbi_f2 --factor 2
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu}"
CACHE="${CACHE:-cache/isbi_f3}"
NETWORK="${NETWORK:-}"                          # a network override layered after the recipe, e.g. configs/maht_net.yaml
TRAIN="${TRAIN:-$OUT/train}"                    # checkpoints and TensorBoard logs
REFINE_MINUTES="${REFINE_MINUTES:-0}"           # time budget of the refinement stage; 0: no refinement stage
REFINE_CACHE="${REFINE_CACHE:-cache/isbi_f2}"   # the refinement network's data (0.2 mm pixels)
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
refine_seconds=0
if [ "$REFINE_MINUTES" != "0" ]; then
  python3 -m monai.bundle run training --config_file "['configs/train.yaml','configs/refine.yaml']" \
    --dataset_dir "$REFINE_CACHE" --output_dir "$OUT/refine_train" --max_epochs 1000 --time_budget_minutes "$REFINE_MINUTES" \
    --early_stop_patience 1000 --num_workers 14 --batch_size 8 --progress_bar False > "$OUT/refine.log" 2>&1 \
    || { tail -50 "$OUT/refine.log"; exit 1; }
  refine_seconds=$(( $(date +%s) - end ))
  grep -E "Metrics|time budget|best value" "$OUT/refine.log" | tail -5
fi
python3 - "$OUT" "$((end - start))" "$TRAIN" "$refine_seconds" <<'PY'
import json, os, sys, torch
out, seconds, train, refine_seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def half(src, dst):
    state = torch.load(src, map_location="cpu")
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, dst)

half(f"{train}/model.pt", f"{out}/model_fp16.pt")
curve = json.load(open(f"{train}/learning_curve.json"))
best = min(curve, key=lambda p: p["val_mre"])
result = {"wall_seconds": seconds, "best": best, "curve": curve,
          "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
if refine_seconds:
    half(f"{out}/refine_train/model.pt", f"{out}/refine_fp16.pt")
    rcurve = json.load(open(f"{out}/refine_train/learning_curve.json"))
    result["refine"] = {"wall_seconds": refine_seconds, "best": min(rcurve, key=lambda p: p["val_mre"]), "curve": rcurve}
json.dump(result, open(f"{out}/result.json", "w"), indent=1)
print(json.dumps({k: result[k] for k in ("wall_seconds", "best")}))
PY
cp "$TRAIN/learning_curve.json" "$OUT/" 2>/dev/null || true
