#!/usr/bin/env bash
# The coarse-to-fine ISBI recipe for CPUs, in one command: the global MAHT-Net at 400 x 320 (configs/isbi_cpu.yaml,
# configs/maht_net.yaml), then the local refinement network (configs/refine.yaml), then Test1 evaluation with and
# without the refinement. REFINE_MEMBERS refinement networks (default 2) are trained one after the other, with
# augmentation seeds 0, 1, ... on the same train / validation split, and ensembled (their crop heatmaps averaged).
# GLOBAL_MEMBERS global networks (default 2) are trained likewise (seeds 0, 1, ...; each with the global budget) and
# ensembled (their heatmaps averaged) in every evaluation. On a CPU without native bf16 (fp32 training, about 3.5
# times slower a step) both defaults are 1, so the recipe keeps to about 2 hours (bundle.engine.cpu_recipe_members).
# Each stage gets a time budget (REFINE_MINUTES is per member, GLOBAL_MINUTES per global member); a stage whose model
# is already there is skipped, a killed stage resumes from its last checkpoint when the script runs again, and an
# evaluation whose metrics.json exists is kept (delete OUT/eval_* to redo them).
#   bash scripts/cpu_recipe.sh OUT GLOBAL_MINUTES REFINE_MINUTES [DATASET_DIR]
#   e.g. bash scripts/cpu_recipe.sh runs/cpu_recipe 35 12 ../shared/data/isbi2015
# NETWORK=configs/efficientnet_lite.yaml trains and evaluates that global network instead of MAHT-Net (a U-Net on an
# ImageNet-pretrained EfficientNet-Lite0 encoder; session w): with GLOBAL_MEMBERS=1 REFINE_MEMBERS=1 REFIT=1 and
# budgets 35 0, 48.0 minutes of training on 2 AMX cores, Test1 1.467 mm (not the default).
# SEED=K (default 0) starts every stage's augmentation and initialisation seeds at K instead of 0 (another draw of
# the same recipe; the train / validation split stays split seed 0).
# REFINE_MINUTES 0 trains each refinement network for configs/refine.yaml's fixed 16 epochs instead of a budget,
# fewer if they would carry the recipe past TOTAL_MINUTES (default 120, the issue's 2 hours; 0: no limit): each such
# stage is capped at its share of the minutes the stages before it left (--time_budget_lengthen false: a stage whose
# 16 epochs fit its share trains exactly as without the cap; since 0.5.22).
# Each stage with a time budget re-fits its epoch count to it after every epoch (--time_budget_reestimate true;
# since 0.5.18), so epochs that slow down later do not carry it past its budget: on 2 AVX-512 BF16 cores the two
# 35-minute global stages took 34.2 and 34.0 minutes instead of 38.0 and 37.0 (session p). REESTIMATE=0 fits it
# once, after the first two epochs, as before.
# REFIT=1 trains the refinement networks on all 150 Train images (configs/refit.yaml: no validation, the last epoch
# is kept); the global models keep their validation split, since at 400 x 320 they overfit and the best checkpoint
# (chosen on validation) beats the last. The released CPU recipe (run from nothing on 2 AMD EPYC cores with AVX-512
# BF16: 118.1 minutes of training; Test1 1.482 mm; its global stages retrained with the re-fit above: 111.3 minutes,
# 1.483 mm; run again from nothing on 0.5.21: 117.3 minutes, 1.478 mm): REFIT=1 bash scripts/cpu_recipe.sh OUT 35 0;
# on 2 AVX2 cores
# without it (one network of each, 114.6 minutes of training; Test1 1.497 mm; drawn again with SEED=1: 116.1
# minutes, 1.486 mm; both with the budgets fitted once, before 0.5.18):
# REFIT=1 bash scripts/cpu_recipe.sh OUT 45 75
# The refined evaluations centre each crop on the global estimate moved by the global model's training target's
# offset from the senior annotation (OUT/centre_correction.json, from the annotations of the global model's
# training images: scripts/fit_bias_correction.py --annotations; bundle/bias.py).
# Writes OUT/global/, OUT/global_s1/, OUT/refine/, OUT/refine_s1/ ... (weights, logs, learning curves), OUT/centre_correction.json,
# OUT/eval_coarse/ (global pass alone), OUT/eval_refined/ (with the refinement ensemble), OUT/eval_refined_1/ (the first refinement member alone, when
# there are several), OUT/result.json (minutes per stage and the Test1 numbers, senior ground truth) and OUT/infer.sh
# (inference with these weights as evaluated: bash OUT/infer.sh INPUT_DIR OUTPUT_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
out="$1"; global_min="$2"; refine_min="$3"; data="${4:-../shared/data/isbi2015}"
# two of each where bf16 is native, one of each elsewhere (bundle.engine.cpu_recipe_members)
default_members=$(python -c "from bundle.engine import cpu_recipe_members; print(cpu_recipe_members())")
members="${REFINE_MEMBERS:-$default_members}"; global_members="${GLOBAL_MEMBERS:-$default_members}"
seed0="${SEED:-0}"
mkdir -p "$out"
# the budgets were set on a CPU with native bf16 (AVX-512 BF16 or AMX); elsewhere amp: auto trains in fp32, several
# times slower per step: the global budgets fit fewer epochs, the refinement stages' fixed epochs take longer
if [ "$default_members" = 1 ]; then
  echo "note: this CPU has no native bf16, so training runs in fp32, about 3.5 times slower per step than on the CPU" \
    "the recipe was first measured on. The global stages keep their time budgets (35 minutes fit 11 epochs on 2 AVX2" \
    "cores instead of 41); a refinement stage without one (REFINE_MINUTES 0) takes about 72 minutes there" \
    "instead of 13. So the recipe trains one global and one refinement network by default on such a CPU" \
    "(GLOBAL_MEMBERS=2 REFINE_MEMBERS=2 TOTAL_MINUTES=0 for two of each, about 3.5 hours there); now: $global_members global," \
    "$members refinement. Measured on 2 AVX2 cores: REFIT=1 bash scripts/cpu_recipe.sh OUT 45 75, 114.6 minutes" \
    "of training, Test1 1.497 mm; with SEED=1, 116.1 minutes, 1.486 mm (docs/README.md, 'Speed')"
fi
network="${NETWORK:-configs/maht_net.yaml}"             # the global network's config (NETWORK=configs/efficientnet_lite.yaml)
global=(--config_file "['configs/train.yaml','configs/isbi_cpu.yaml','$network']")
refine_configs="'configs/train.yaml','configs/refine.yaml'"
[ "${REFIT:-0}" != "0" ] && refine_configs="$refine_configs,'configs/refit.yaml'"
refine=(--config_file "[$refine_configs]")

failed() {  # log: its last lines, then the first error raised (MONAI's config wrapper buries it in the traceback)
  tail -30 "$1"; echo "$1: $(grep -m1 -E '^[A-Za-z.]*(Error|Exception): ' "$1")"; exit 1
}
stage() {  # name, minutes, config args...: train unless OUT/name/done exists; time it
  local name="$1" minutes="$2"; shift 2
  if [ -f "$out/$name/done" ]; then echo "$name: already trained ($out/$name/done)"; return; fi
  local resume=False
  [ -f "$out/$name/checkpoint_last.pt" ] && resume=True
  local length=(--max_epochs 1000 --time_budget_minutes "$minutes" --early_stop_patience 1000)
  [ "${REESTIMATE:-1}" != "0" ] && length+=(--time_budget_reestimate true)
  [ "$minutes" = 0 ] && length=()                          # the config's own epochs
  if [[ "$minutes" == cap:* ]]; then                       # the config's own epochs, fewer if they do not fit
    length=(--time_budget_minutes "${minutes#cap:}" --time_budget_lengthen false --time_budget_reestimate true)
  fi
  echo "$name: python -m monai.bundle run training $* --dataset_dir $data --output_dir $out/$name ${length[*]} --resume $resume"
  local start; start=$(date +%s)
  python -m monai.bundle run training "$@" --dataset_dir "$data" --output_dir "$out/$name" "${length[@]}" \
    --progress_bar False --resume "$resume" > "$out/$name.log" 2>&1 || failed "$out/$name.log"
  echo $(( $(date +%s) - start )) > "$out/$name/done"
}
stage global "$global_min" "${global[@]}" --seed "$seed0" --split_seed 0
global_ckpts=("'$out/global/model.pt'")
for ((m = 1; m < global_members; m++)); do      # more global networks: other augmentation seeds, the same split
  stage "global_s$m" "$global_min" "${global[@]}" --seed "$((seed0 + m))" --split_seed 0
  global_ckpts+=("'$out/global_s$m/model.pt'")
done
global_ensemble=()
[ "$global_members" -gt 1 ] && global_ensemble=(--ensemble "[$(IFS=,; echo "${global_ckpts[*]}")]")
total_min="${TOTAL_MINUTES:-120}"
refine_share() {  # member index: its cap, the minutes the finished stages left to the TOTAL_MINUTES over the members left
  python - "$out" "$total_min" "$members" "$1" <<'PY'
import sys
from pathlib import Path
out, total, members, m = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
spent = sum(int(p.read_text()) for p in out.glob("*/done")) / 60
share = (total - spent) / (members - m) - 0.5  # half a minute for the start (reading the images, building the crops)
share = max(share, 0.01)  # at least the two epochs the budget times and one more
if share < 5:
    print(f"warning: the stages so far took {spent:.1f} of the {total:g} minutes (TOTAL_MINUTES): refinement member"
          f" {m} may train {share:.2f} minutes, too few for a good network", file=sys.stderr)
print(f"cap:{share:.2f}")
PY
}
refine_ckpts=()
for ((m = 0; m < members; m++)); do
  name=refine; [ "$m" -gt 0 ] && name="refine_s$m"
  minutes="$refine_min"
  [ "$refine_min" = 0 ] && [ "$total_min" != 0 ] && [ ! -f "$out/$name/done" ] && minutes=$(refine_share "$m")
  stage "$name" "$minutes" "${refine[@]}" --seed "$((seed0 + m))" --split_seed 0
  refine_ckpts+=("'$out/$name/model.pt'")
done
ensemble="[$(IFS=,; echo "${refine_ckpts[*]}")]"

evaluate() {  # eval dir name, extra overrides...: Test1, senior ground truth, unless its metrics.json exists
  local name="$1"; shift
  if [ -f "$out/$name/metrics.json" ]; then echo "$name: already evaluated ($out/$name/metrics.json)"; return; fi
  echo "$name: evaluating Test1"
  python -m monai.bundle run --config_file "['configs/train.yaml','configs/isbi_cpu.yaml','$network','configs/evaluate.yaml']" \
    --dataset_dir "$data" --output_dir "$out" --ckpt_path "$out/global/model.pt" "${global_ensemble[@]}" --eval_dir "$out/$name" "$@" \
    > "$out/$name.log" 2>&1 || failed "$out/$name.log"
}
# the global model trains on the mean of both doctors over its training split (configs/isbi_cpu.yaml keeps a
# validation part: val_fraction 0.2, split seed 0); its offset from the senior annotation moves the crop centres
python scripts/fit_bias_correction.py --annotations "$data" --split train --out "$out/centre_correction.json" > /dev/null
centre=(--refine_centre_correction "$out/centre_correction.json")
evaluate eval_coarse --refine False
evaluate eval_refined --refine True --refine_ensemble "$ensemble" "${centre[@]}"
if [ "$members" -gt 1 ]; then evaluate eval_refined_1 --refine True --refine_ckpt_path "$out/refine/model.pt" "${centre[@]}"; fi
# the weights as the evaluation ran them, for the user's own images: OUT/infer.sh INPUT_DIR OUTPUT_DIR [overrides]
# (inference.yaml's defaults are the shipped model's: its image size, and crop centres moved by the shipped offsets,
# 0.1 mm on average from these weights' evaluation on Test1 151-152, session x; with these settings, the same)
image_size=$(python -c "from monai.bundle import ConfigParser; p = ConfigParser(); p.read_config(['configs/train.yaml','configs/isbi_cpu.yaml']); print(list(p.get_parsed_content('full_image_size')))")
spacing=$(python -c "import sys; from bundle.io import dataset_spacing; print(dataset_spacing(sys.argv[1]))" "$data")
{
  echo '#!/usr/bin/env bash'
  echo "# Inference with the weights of scripts/cpu_recipe.sh in $out, as its Test1 evaluation ran them (written by it):"
  echo '#   bash infer.sh INPUT_DIR OUTPUT_DIR [more overrides, e.g. --refine_shifts "[]"]'
  echo 'set -euo pipefail'
  echo 'in="$(realpath -m "$1")"; res="$(realpath -m "$2")"; shift 2'
  echo "cd $(printf '%q' "$PWD")  # the bundle root"
  echo '. scripts/setup_env.sh'
  echo "# an image whose file gives no pixel size is read at the training images' ($spacing mm; --pixel_spacing_mm to change)"
  echo "python -m monai.bundle run --config_file \"['configs/inference.yaml','$network']\" \\"
  printf '  --ckpt_path "%s"' "$out/global/model.pt"
  [ "$global_members" -gt 1 ] && printf ' --ensemble "%s"' "${global_ensemble[1]}"
  printf ' --image_size "%s" --refine_ensemble "%s" %s "%s" \\\n' "$image_size" "$ensemble" "${centre[@]}"
  echo "  --pixel_spacing_mm $spacing"' --input_dir "$in" --output_dir "$res" "$@"'
} > "$out/infer.sh"
echo "inference with these weights: bash $out/infer.sh INPUT_DIR OUTPUT_DIR"
python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
stages = sorted(p.parent.name for p in out.glob("*/done"))
res = {"minutes": {s: round(int((out / s / "done").read_text()) / 60, 1) for s in stages}}
res["minutes"]["training_total"] = round(sum(res["minutes"].values()), 1)
for name in ("eval_coarse", "eval_refined", "eval_refined_1"):
    if (out / name / "metrics.json").is_file():
        m = json.loads((out / name / "metrics.json").read_text())
        res[name] = {"mre_mm": m["mre_mm"], "sd_mm": m.get("sd_mm"), "sdr": m.get("sdr")}
(out / "result.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res))
PY
