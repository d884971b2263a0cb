#!/usr/bin/env bash
# Three-stage progressive training of MAHT-Net in one command; each stage starts from the previous stage's best
# checkpoint and can also be run alone with the same command lines (printed below).
#   bash scripts/train_progressive.sh RECIPE OUTPUT_DIR TOTAL_MINUTES [extra overrides...]
#   e.g. bash scripts/train_progressive.sh configs/isbi_cpu.yaml runs/maht_progressive 30 --dataset_dir ../shared/data/isbi2015
# The time budget is split 40% / 30% / 30% over the stages; STAGE_EPOCHS="20 15 30" gives epochs per stage
# instead (a budget that does not depend on what else the machine is doing).
set -euo pipefail
. "$(dirname "$0")/setup_env.sh"
recipe="$1"; out="$2"; total="$3"; shift 3
share=(0.4 0.3 0.3)
read -r -a epochs <<< "${STAGE_EPOCHS:-}"
prev=""
for stage in 1 2 3; do
  minutes=$(python -c "print(round($total * ${share[$((stage - 1))]}, 2))")
  args=(--config_file "['configs/train.yaml','$recipe','configs/maht_net.yaml','configs/stage$stage.yaml']"
        --output_dir "$out/stage$stage")
  if [ ${#epochs[@]} -eq 3 ]; then
    args+=(--max_epochs "${epochs[$((stage - 1))]}")
  else
    args+=(--time_budget_minutes "$minutes")
  fi
  [ -n "$prev" ] && args+=(--warm_start "$prev")
  echo "stage $stage: python -m monai.bundle run training ${args[*]} $*"
  python -m monai.bundle run training "${args[@]}" "$@"
  prev="$out/stage$stage/model.pt"
done
echo "final model: $prev (evaluate with configs/evaluate.yaml layered on '$recipe' and configs/maht_net.yaml)"
