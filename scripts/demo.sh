#!/usr/bin/env bash
# Demo on the embedded synthetic cephalograms: sets up .venv when needed, generates the data set, trains the
# U-Net baseline, evaluates it on the synthetic test images and prints MRE / SDR. About 5 minutes on 2 CPU cores.
# Extra arguments go to both runs, e.g. `bash scripts/demo.sh --max_epochs 10`.
set -e
. "$(dirname "$0")/setup_env.sh"
out=runs/demo
python -m monai.bundle run training --config_file configs/train.yaml --output_dir "$out" "$@"
python -m monai.bundle run --config_file "['configs/train.yaml','configs/evaluate.yaml']" --output_dir "$out" "$@"
python - "$out/eval_test/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
sdr = ", ".join(f"{k} mm {v:.1f}%" for k, v in m["sdr"].items())
print(f"\nSynthetic test set ({m['n_images']} images, 0.5 mm pixels): MRE {m['mre_mm']:.2f} ± {m['sd_mm']:.2f} mm; SDR {sdr}")
d = sys.argv[1].rsplit('/', 1)[0]
print(f"Details: {sys.argv[1]} and {d}/per_image_errors.csv; pictures: {d}/errors_by_landmark.png, {d}/worst_cases/")
PY
