#!/usr/bin/env bash
# The device command of 2026-11-28, session j (rule: docs/results/decision_rules_2026_11_28j.md): three trainings
# at once on one GPU, each scripts/gpu_recipe.sh's global recipe (MAHT-Net, 800 x 640, last epoch kept) with the
# wider network of configs/maht_net_wide.yaml on a 6.5-minute time budget (re-estimated every epoch, so the three
# end in time however they share the GPU; the hard limit is 9 minutes):
#   w0, w1: cross-validation folds 0 and 1 (split seed 0), compared with session i's b0, b1 (the shipped recipe);
#   wr:     the refit on all 150 Train images (REFIT=1), what would ship if the rule adopts the candidate.
# Results: the fp16 weights in $OUT (xz, in halves), the curves and timings (result.json of each) printed at the end.
# Run once, 2026-11-28 (session j), on a lent H200: 415 s, every training ended by itself (40, 42, 39 epochs); the rule
# did not adopt the wide network (docs/results/gpu_session_2026_11_28j.json).
#   OUT=$OUT W=/tmp/w bash scripts/gpu_session_j.sh   # on the lent GPU, with cache/isbi_f2 and .whl carried
#   SMOKE=1 bash scripts/gpu_session_j.sh            # a tiny run of the same commands on a CPU (checks the plumbing)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu_j_out}"; W="${W:-runs/gpu_j}"
common=(CACHE=cache/isbi_f2 NETWORK=configs/maht_net.yaml EXTRA=configs/maht_net_wide.yaml MINUTES=6.5 KEEP=last
        REFINE=0 WORKERS=4)
. scripts/device_session.sh  # job, want, session_end, results_json, session_summary; SMOKE=1's tiny settings
# 24 MB of fp16 weights each: at most 8 files of 16 MiB, 64 MiB in all come back, so xz and halves
# (back here: cat NAME_model.pt.xz.* | xz -d > NAME_model.pt)
save_weights() {
  [ -f "$W/$1/model_fp16.pt" ] || return 0
  python3 -c "import lzma, sys
data = lzma.compress(open(sys.argv[1], 'rb').read(), preset=9)
half = len(data) // 2 + 1
for i in range(2):
    open(f'{sys.argv[2]}.{i:02d}', 'wb').write(data[i * half:(i + 1) * half])" "$W/$1/model_fp16.pt" "$OUT/${1}_model.pt.xz"
}
s="--seed 0 --split_seed 0"
pids=(); ONLY="${ONLY:-w0 w1 wr}"
want w0 && job w0 -- $s --val_fold 0 & pids+=($!)
want w1 && job w1 -- $s --val_fold 1 & pids+=($!)
want wr && job wr REFIT=1 -- --seed 0 & pids+=($!)
[ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
session_end $ONLY
results_json w0 w1 wr > "$OUT/results.json"
session_summary
