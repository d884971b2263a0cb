#!/usr/bin/env bash
# One GPU run of the ISBI recipe: installs carried wheels if MONAI is missing, trains the global model on the
# reduced cache (scripts/prepare_cache.py) and, at the same time on the same GPU, the coarse-to-fine refinement
# network (configs/refine.yaml); leaves the fp16 weights (model_fp16.pt, refine_fp16.pt, each with its
# NAME.settings.json: what inference checks them against), the logs and the learning curves in $OUT.
#   python scripts/prepare_cache.py --dataset_dir ../shared/data/isbi2015 --out cache/isbi_f2 --factor 2   # 34 MB
#   OUT=/tmp/gpu bash scripts/gpu_recipe.sh [global overrides, e.g. --ground_truth senior --seed 1]
#   NETWORK=configs/maht_net.yaml ...   # MAHT-Net instead of the U-Net for the global model
#   MINUTES=3 ...                        # the global model's time budget (validation included)
#   REFINE=0 ...                         # no refinement stage (default 1: configs/refine.yaml as it stands, the
#                                        # shipped recipe: 16 epochs of 2 images, cosine decay to the end)
#   REFINE_ARGS="--network_def#channels [64,128,256,512]" ...   # overrides of the refinement stage, e.g.
#                                        # "--max_epochs 1000 --time_budget_minutes 7" for a time budget instead
#   EPOCHS=32 ...                        # the global model trains a fixed number of epochs instead of a budget
#                                        # (MINUTES + 3 minutes stays the hard limit)
#   REFIT=1 ...                          # both stages train on all 150 Train images (configs/refit.yaml) and keep
#                                        # their last epoch; with EPOCHS=32 this is the shipped global model's recipe
#   EXTRA="configs/strong_aug.yaml" ...  # more configs layered after the global model's (space-separated)
#   KEEP=last ...                        # the global model's last epoch (from checkpoint_last.pt) instead of its
#                                        # best validation epoch; with EPOCHS=32 and --val_fold K a cross-validation fold
# The cache at factor 2 (0.2 mm pixels) serves both stages: the global model resizes it to its 800 x 640 input,
# the refinement network trains at 0.2 mm. A time-budgeted training re-fits its epochs to the budget after every
# epoch (--time_budget_reestimate), so it ends in time however the trainings share the GPU; a hard limit of
# MINUTES plus 3 minutes stops a training that does not, and the best checkpoint saved so far is kept either way.
# Measured on one H100 (docs/README.md, "GPU recipe"): the refinement network overfits after about 20 epochs, so a
# 7-minute budget (90 epochs of 8 images) ended worse on validation than its own epoch 20.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu}"
CACHE="${CACHE:-cache/isbi_f2}"
NETWORK="${NETWORK:-}"
MINUTES="${MINUTES:-3}"
REFINE="${REFINE:-1}"
REFINE_CACHE="${REFINE_CACHE:-$CACHE}"
REFINE_ARGS="${REFINE_ARGS:-}"
EPOCHS="${EPOCHS:-}"
REFIT="${REFIT:-0}"
EXTRA="${EXTRA:-}"
KEEP="${KEEP:-best}"
WORKERS="${WORKERS:-6}"                         # dataloader processes per training (16 cores on the lent machine)
mkdir -p "$OUT"
. scripts/device_packages.sh
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
configs="'configs/train.yaml','configs/isbi_gpu.yaml'"
[ -n "$NETWORK" ] && configs="$configs,'$NETWORK'"
for extra in $EXTRA; do configs="$configs,'$extra'"; done
refine_configs="'configs/train.yaml','configs/refine.yaml'"
if [ "$REFIT" != "0" ]; then configs="$configs,'configs/refit.yaml'"; refine_configs="$refine_configs,'configs/refit.yaml'"; fi
if [ -n "$EPOCHS" ]; then length=(--max_epochs "$EPOCHS" --time_budget_minutes 0); else
  length=(--max_epochs 1000 --early_stop_patience 1000 --time_budget_minutes "$MINUTES"); fi
shared=(--num_workers "$WORKERS" --torch_threads 4 --progress_bar False --time_budget_reestimate true)
limit=$(( (${MINUTES%.*} + 3) * 60 ))          # hard stop of either training, in seconds
start=$(date +%s)
timeout "$limit" python3 -m monai.bundle run training --config_file "[$configs]" \
  --dataset_dir "$CACHE" --output_dir "$OUT/train" "${shared[@]}" "${length[@]}" "$@" > "$OUT/train.log" 2>&1 &
global_pid=$!
if [ "$REFINE" != "0" ]; then
  # shellcheck disable=SC2086  # REFINE_ARGS is a list of overrides
  timeout "$limit" python3 -m monai.bundle run training \
    --config_file "[$refine_configs]" --dataset_dir "$REFINE_CACHE" \
    --output_dir "$OUT/refine_train" "${shared[@]}" $REFINE_ARGS > "$OUT/refine.log" 2>&1 &
  refine_pid=$!
  wait "$refine_pid"; refine_rc=$?
  refine_seconds=$(( $(date +%s) - start ))
else
  refine_rc=0; refine_seconds=0
fi
wait "$global_pid"; global_rc=$?
seconds=$(( $(date +%s) - start ))
for log in train refine; do
  [ -f "$OUT/$log.log" ] && { echo "== $log.log"; grep -E "time budget|Metrics|best value|Error|error" "$OUT/$log.log" | tail -8; }
done
[ "$global_rc" = 0 ] || { echo "global training exited with $global_rc"; tail -30 "$OUT/train.log"; }
[ "$refine_rc" = 0 ] || { echo "refinement training exited with $refine_rc"; tail -30 "$OUT/refine.log"; }
python3 - "$OUT" "$seconds" "$refine_seconds" "$global_rc" "$refine_rc" "$KEEP" <<'PY'
import json, os, sys, torch
from bundle.settings import copy_model_settings
out, seconds, refine_seconds, global_rc, refine_rc, keep = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]

def half(src, dst):
    state = torch.load(src, map_location="cpu")
    if isinstance(state.get("model"), dict):  # checkpoint_last.pt: the network's weights are under "model"
        state = state["model"]
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, dst)

def stage(train_dir, dst, wall, rc, src="model.pt"):
    if not os.path.isfile(f"{train_dir}/{src}"):
        return {"exit_code": rc, "wall_seconds": wall, "model": None}
    half(f"{train_dir}/{src}", f"{out}/{dst}")
    copy_model_settings(train_dir, f"{out}/{dst}")  # what the weights need (bundle/settings.py), beside them
    curve = json.load(open(f"{train_dir}/learning_curve.json"))
    return {"exit_code": rc, "wall_seconds": wall, "model": dst, "kept": src, "best": min(curve, key=lambda p: p["val_mre"]),
            "curve": curve}

result = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
          "global": stage(f"{out}/train", "model_fp16.pt", seconds, global_rc,
                          "checkpoint_last.pt" if keep == "last" else "model.pt")}
if refine_seconds:
    result["refine"] = stage(f"{out}/refine_train", "refine_fp16.pt", refine_seconds, refine_rc)
json.dump(result, open(f"{out}/result.json", "w"), indent=1)
print(json.dumps({k: {kk: v.get(kk) for kk in ("exit_code", "wall_seconds", "best")} for k, v in result.items()
                  if isinstance(v, dict)}))
PY
[ "$global_rc" = 0 ] && [ "$refine_rc" = 0 ]
