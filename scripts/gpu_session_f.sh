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
common=(CACHE=cache/isbi_f2 NETWORK=configs/maht_net.yaml EPOCHS=32 MINUTES=7 KEEP=last WORKERS=2)
. scripts/device_session.sh  # job, want, session_end, results_json, session_summary; SMOKE=1's tiny settings
rtiny=""
[ "${SMOKE:-0}" != "0" ] && rtiny="--data_limit 4 --max_epochs 1 --amp none"
save_weights() {
  [ -f "$W/$1/model_fp16.pt" ] && cp "$W/$1/model_fp16.pt" "$OUT/${1}_model.pt"
  [ -f "$W/$1/refine_fp16.pt" ] && cp "$W/$1/refine_fp16.pt" "$OUT/${1}_refine.pt"
  return 0
}
s="--seed 0 --split_seed 0"
r="--seed 1 --split_seed 0 --num_workers 2 $rtiny"
pids=(); ONLY="${ONLY:-b0 b1 a0 a1 ra}"
want b0 && job b0 REFINE=1 REFINE_ARGS="$r --val_fold 0" -- $s --val_fold 0 & pids+=($!)
want b1 && job b1 REFINE=1 REFINE_ARGS="$r --val_fold 1" -- $s --val_fold 1 & pids+=($!)
want a0 && job a0 REFINE=0 EXTRA=configs/strong_aug.yaml WORKERS=3 -- $s --val_fold 0 & pids+=($!)
want a1 && job a1 REFINE=0 EXTRA=configs/strong_aug.yaml WORKERS=3 -- $s --val_fold 1 & pids+=($!)
# the whole GPU recipe (REFIT=1: both stages on all 150 Train images) with the candidate: what would ship
want ra && job ra REFINE=1 REFIT=1 REFINE_ARGS="$r" EXTRA=configs/strong_aug.yaml WORKERS=3 -- --seed 0 & pids+=($!)
[ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
session_end $ONLY
# the curves and timings come back in the output (8 files at most come back: the weights)
results_json b0 b1 a0 a1 ra
session_summary
