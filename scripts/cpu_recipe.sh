#!/usr/bin/env bash
# The coarse-to-fine ISBI recipe for CPUs, in one command: the global MAHT-Net at 400 x 320 (configs/isbi_cpu.yaml,
# configs/maht_net.yaml), then the local refinement network (configs/refine.yaml), then Test1 evaluation with and
# without the refinement. Each stage gets a time budget; a stage whose model is already there is skipped, and a
# killed stage resumes from its last checkpoint when the script runs again.
#   bash scripts/cpu_recipe.sh OUT GLOBAL_MINUTES REFINE_MINUTES [DATASET_DIR]
#   e.g. bash scripts/cpu_recipe.sh runs/cpu_recipe 45 35 ../shared/data/isbi2015
# Writes OUT/global/, OUT/refine/ (weights, logs, learning curves), OUT/eval_coarse/, OUT/eval_refined/
# (metrics.json etc.) and OUT/result.json (minutes per stage and the Test1 numbers, senior ground truth).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
out="$1"; global_min="$2"; refine_min="$3"; data="${4:-../shared/data/isbi2015}"
mkdir -p "$out"
global=(--config_file "['configs/train.yaml','configs/isbi_cpu.yaml','configs/maht_net.yaml']")
refine=(--config_file "['configs/train.yaml','configs/refine.yaml']")

stage() {  # name, minutes, config args...: train unless OUT/name/done exists; time it
  local name="$1" minutes="$2"; shift 2
  if [ -f "$out/$name/done" ]; then echo "$name: already trained ($out/$name/done)"; return; fi
  local resume=False
  [ -f "$out/$name/checkpoint_last.pt" ] && resume=True
  echo "$name: python -m monai.bundle run training $* --dataset_dir $data --output_dir $out/$name --max_epochs 1000 --time_budget_minutes $minutes --resume $resume"
  local start; start=$(date +%s)
  python -m monai.bundle run training "$@" --dataset_dir "$data" --output_dir "$out/$name" --max_epochs 1000 \
    --time_budget_minutes "$minutes" --early_stop_patience 1000 --progress_bar False --resume "$resume" \
    > "$out/$name.log" 2>&1 || { tail -30 "$out/$name.log"; exit 1; }
  echo $(( $(date +%s) - start )) > "$out/$name/done"
}
stage global "$global_min" "${global[@]}"
stage refine "$refine_min" "${refine[@]}"

for mode in coarse refined; do
  python -m monai.bundle run --config_file "['configs/train.yaml','configs/isbi_cpu.yaml','configs/maht_net.yaml','configs/evaluate.yaml']" \
    --dataset_dir "$data" --output_dir "$out" --ckpt_path "$out/global/model.pt" --eval_dir "$out/eval_$mode" \
    --refine "$([ $mode = refined ] && echo True || echo False)" --refine_ckpt_path "$out/refine/model.pt" \
    > "$out/eval_$mode.log" 2>&1 || { tail -30 "$out/eval_$mode.log"; exit 1; }
done
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
res = {"minutes": {s: round(int(open(f"{out}/{s}/done").read()) / 60, 1) for s in ("global", "refine")}}
for mode in ("coarse", "refined"):
    m = json.load(open(f"{out}/eval_{mode}/metrics.json"))
    res[mode] = {"mre_mm": m["mre_mm"], "sd_mm": m.get("sd_mm"), "sdr": m.get("sdr")}
json.dump(res, open(f"{out}/result.json", "w"), indent=1)
print(json.dumps(res))
PY
