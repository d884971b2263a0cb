#!/usr/bin/env bash
# The device command of 2026-11-27, session f (rule: docs/results/decision_rules_2026_11_27f.md): seven trainings at
# once on one GPU, each scripts/gpu_recipe.sh's shipped global recipe (MAHT-Net, 800 x 640, 32 epochs, last epoch
# kept) or refinement recipe (configs/refine.yaml as it stands, best validation epoch):
#   b0, b1: the global recipe as it ships on cross-validation folds 0 and 1 (split seed 0), each with its fold's
#           refinement network (r0, r1), so the whole pipeline can be evaluated on images none of them saw;
#   a0, a1: the same global recipe with configs/strong_aug.yaml (the candidate) on folds 0 and 1;
#   ra:     the whole GPU recipe with the candidate (REFIT=1: both stages on all 150 Train images), what would ship
#           if the rule adopts it.
# MINUTES=7 makes each training's hard limit 10 minutes (scripts/gpu_recipe.sh). Results: the fp16 weights in $OUT
# (5 global, 3 refinement networks), the curves and timings (result.json of each) printed at the end.
# Run once, 2026-11-28 (session i), on a lent H200: 554.6 s, every training ended by itself; the rule did not adopt
# the candidate (docs/results/gpu_session_2026_11_28i.json).
#   bash scripts/gpu_session_f.sh            # on the lent GPU, with cache/isbi_f2 and .whl carried
#   SMOKE=1 bash scripts/gpu_session_f.sh    # a tiny run of the same commands on a CPU (checks the plumbing)
#   ONLY="b0 a0" bash scripts/gpu_session_f.sh   # a subset (on an H100's 80 GB: six 800 x 640 trainings used 77.8 GB)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu_f_out}"; W="${W:-runs/gpu_f}"
mkdir -p "$OUT" "$W"
. scripts/device_packages.sh || exit 1  # before the trainings start side by side
common=(CACHE=cache/isbi_f2 NETWORK=configs/maht_net.yaml EPOCHS=32 MINUTES=7 KEEP=last WORKERS=2)
tiny=(); rtiny=""
if [ "${SMOKE:-0}" != "0" ]; then
  common+=(EPOCHS=1 WORKERS=0)  # env keeps the last of a name given twice
  tiny=(--data_limit 4 --full_image_size "[128,96]" --batch_size 2 --amp none --warmup_epochs 0)
  rtiny="--data_limit 4 --max_epochs 1 --amp none"
fi
command -v nvidia-smi >/dev/null && { nvidia-smi --query-gpu=name,memory.total --format=csv,noheader;
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 30 > "$W/smi.log" 2>&1 & smi=$!; }
s="--seed 0 --split_seed 0"
# each job copies its weights to $OUT as soon as it ends, so a command stopped at its limit still returns them
job() {  # job NAME VAR=VALUE... -- RECIPE ARGS...
  local name=$1; shift; local vars=(); while [ "$1" != "--" ]; do vars+=("$1"); shift; done; shift
  env "${common[@]}" "${vars[@]}" OUT="$W/$name" bash scripts/gpu_recipe.sh "$@" "${tiny[@]}" > "$W/$name.out" 2>&1
  [ -f "$W/$name/model_fp16.pt" ] && cp "$W/$name/model_fp16.pt" "$OUT/${name}_model.pt"
  [ -f "$W/$name/refine_fp16.pt" ] && cp "$W/$name/refine_fp16.pt" "$OUT/${name}_refine.pt"
  echo "$name ended after $SECONDS s"
}
r="--seed 1 --split_seed 0 --num_workers 2 $rtiny"
pids=(); ONLY="${ONLY:-b0 b1 a0 a1 ra}"
want() { [[ " $ONLY " == *" $1 "* ]]; }
want b0 && job b0 REFINE=1 REFINE_ARGS="$r --val_fold 0" -- $s --val_fold 0 & pids+=($!)
want b1 && job b1 REFINE=1 REFINE_ARGS="$r --val_fold 1" -- $s --val_fold 1 & pids+=($!)
want a0 && job a0 REFINE=0 EXTRA=configs/strong_aug.yaml WORKERS=3 -- $s --val_fold 0 & pids+=($!)
want a1 && job a1 REFINE=0 EXTRA=configs/strong_aug.yaml WORKERS=3 -- $s --val_fold 1 & pids+=($!)
# the whole GPU recipe (REFIT=1: both stages on all 150 Train images) with the candidate: what would ship
want ra && job ra REFINE=1 REFIT=1 REFINE_ARGS="$r" EXTRA=configs/strong_aug.yaml WORKERS=3 -- --seed 0 & pids+=($!)
[ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
[ -n "${smi:-}" ] && kill "$smi"
for n in $ONLY; do echo "== $n"; grep -E "time budget|Metrics|Error" "$W/$n/train.log" | tail -5; done
# the curves and timings come back in the output (8 files at most come back: the weights)
python3 -c "import json,sys; print(json.dumps({n: json.load(open(f'$W/{n}/result.json')) for n in sys.argv[1:]
  if __import__('os').path.isfile(f'$W/{n}/result.json')}, separators=(',', ':')))" b0 b1 a0 a1 ra
cat "$W/smi.log" 2>/dev/null | tr '\n' ';'
ls -la "$OUT"
