# Sourced by the device-session scripts (scripts/gpu_session_f.sh, scripts/gpu_session_j.sh) from the repository root,
# after they set OUT, W and `common` (the scripts/gpu_recipe.sh variables every training shares): installs the carried
# wheels, applies SMOKE=1's tiny settings (a run of the same commands on a CPU, to check the plumbing), logs the GPU
# every 30 s, and defines
#   job NAME VAR=VALUE... -- RECIPE ARGS...   one scripts/gpu_recipe.sh training into $W/NAME; as soon as it ends,
#                                             `save_weights NAME` (each script's own) puts its weights in $OUT, so a
#                                             command stopped at its limit still returns them
#   want NAME                                 whether NAME is one of $ONLY
#   session_end NAME...                       stops the GPU log and prints each training's last metrics
#   results_json NAME...                      every result.json of those trainings as one JSON object
#   session_summary                           the GPU log on one line and what $OUT holds
mkdir -p "$OUT" "$W"
. scripts/device_packages.sh || exit 1  # before the trainings start side by side
tiny=()
if [ "${SMOKE:-0}" != "0" ]; then
  common+=(EPOCHS=1 WORKERS=0)  # env keeps the last of a name given twice
  tiny=(--data_limit 4 --full_image_size "[128,96]" --batch_size 2 --amp none --warmup_epochs 0)
fi
command -v nvidia-smi >/dev/null && { nvidia-smi --query-gpu=name,memory.total --format=csv,noheader;
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 30 > "$W/smi.log" 2>&1 & smi=$!; }

job() {
  local name=$1; shift; local vars=(); while [ "$1" != "--" ]; do vars+=("$1"); shift; done; shift
  env "${common[@]}" "${vars[@]}" OUT="$W/$name" bash scripts/gpu_recipe.sh "$@" "${tiny[@]}" > "$W/$name.out" 2>&1
  save_weights "$name"
  echo "$name ended after $SECONDS s"
}

want() { [[ " $ONLY " == *" $1 "* ]]; }

session_end() {
  [ -n "${smi:-}" ] && kill "$smi"
  for n in "$@"; do echo "== $n"; grep -E "time budget|Metrics|Error" "$W/$n/train.log" | tail -5; done
}

results_json() {
  python3 -c "import json, os, sys; print(json.dumps({n: json.load(open(f'$W/{n}/result.json')) for n in sys.argv[1:]
    if os.path.isfile(f'$W/{n}/result.json')}, separators=(',', ':')))" "$@"
}

session_summary() {
  cat "$W/smi.log" 2>/dev/null | tr '\n' ';'; echo
  ls -la "$OUT"
}
