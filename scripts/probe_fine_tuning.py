"""Does fine-tuning on a user's corrected landmarks adapt the model to them? The MONAI Label training task's path
(label maps -> :func:`bundle.serving.labels_to_training_folder` -> :class:`bundle.serving.FineTuner`), with one ISBI
doctor standing in for a clinic whose convention differs from the shipped model's training target.

The first ``--n`` Train images get label maps drawn at ``--doctor``'s annotation (2 mm discs, as the app answers and
Slicer saves them), both shipped networks are fine-tuned on them with the task's defaults, and the shipped and the
fine-tuned pipelines (``configs/evaluate.yaml``, both passes, the shipped crop-centre moves) are evaluated on Test1
against both doctors. Test1 is only reported: nothing is chosen on it. Prints JSON (also ``--json``).

    python scripts/probe_fine_tuning.py --dataset_dir ../shared/data/isbi2015 --n 20 --doctor junior \\
        --out runs/fine_tuning_probe --json docs/results/fine_tuning_junior_probe.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVAL_CONFIGS = "['configs/train.yaml','configs/isbi_gpu.yaml','configs/maht_net.yaml','configs/evaluate.yaml']"


def _scores(eval_dir: Path, dataset_dir: Path) -> dict:
    """MRE, SD and SDR@2/2.5/3/4 mm of an evaluation's predictions against each doctor, and each landmark's MRE."""
    import torch

    from bundle.io import read_landmarks
    from bundle.metrics import read_prediction_positions, summarize_errors

    pos = read_prediction_positions(eval_dir)
    out = {}
    for doctor in ("senior", "junior"):
        truth = np.stack([read_landmarks(dataset_dir / "AnnotationsByMD" / f"400_{doctor}" / f"{Path(i).stem}.txt",
                                         len(pos["names"]))[:, ::-1] for i in pos["images"]])  # (y, x) -> (x, y)
        s = summarize_errors(torch.as_tensor(np.linalg.norm((pos["pred_xy"] - truth) * pos["spacing_mm"], axis=-1)),
                             pos["names"])
        out[doctor] = {"mre_mm": s["mre_mm"], "sd_mm": s["sd_mm"], "sdr": s["sdr"],
                       "mre_mm_per_landmark": {r["name"]: r["mre_mm"] for r in s["per_landmark"]}}
    return out


def _evaluate(out_dir: Path, dataset_dir: Path, ckpt: Path, refine_ckpt: Path) -> dict:
    t0 = time.time()
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", EVAL_CONFIGS, "--dataset_dir", str(dataset_dir),
           "--ckpt_path", str(ckpt), "--refine", "True", "--refine_ckpt_path", str(refine_ckpt),
           "--refine_centre_correction", "models/bias_correction.json", "--num_workers", "2", "--progress_bar", "False",
           "--eval_pictures", "False", "--output_dir", str(out_dir)]
    with open(out_dir.parent / f"{out_dir.name}.log", "w") as log:
        subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    return {"seconds": round(time.time() - t0, 1), **_scores(out_dir / "eval_test", dataset_dir)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--n", type=int, default=20, help="Train images labelled by --doctor (001, 002, ...)")
    ap.add_argument("--doctor", default="junior", choices=["senior", "junior"])
    ap.add_argument("--out", required=True, help="working folder")
    ap.add_argument("--epochs", type=int, default=10, help="global network epochs (the task's default)")
    ap.add_argument("--refine_epochs", type=int, default=10, help="refinement network epochs (the task's default)")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()

    from bundle.io import image_geometry, print_json_report, read_landmarks
    from bundle.serving import FineTuner, labels_to_training_folder, write_label_map

    data, out = Path(args.dataset_dir), Path(args.out)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    pairs = []
    for image in sorted((data / "RawImage" / "TrainingData").iterdir())[: args.n]:
        yx = read_landmarks(data / "AnnotationsByMD" / f"400_{args.doctor}" / f"{image.stem}.txt", 19)
        m = image_geometry(image)
        label = out / "labels" / f"{image.stem}.nrrd"
        write_label_map(label, {"landmarks": [{"landmark": i + 1, "x": x, "y": y} for i, (y, x) in enumerate(yx.tolist())],
                                "size": [2400, 1935], "spacing_mm": [0.1, 0.1], "pixel_to_lps": m.tolist()})
        pairs.append({"image": str(image), "label": str(label)})
    written, errors = labels_to_training_folder(pairs, out / "train")
    t0 = time.time()
    stats = FineTuner(out / "models")(out / "train", max_epochs=args.epochs, refine_max_epochs=args.refine_epochs)
    tuned_minutes = round((time.time() - t0) / 60, 2)
    result = {
        "what": f"the shipped pair fine-tuned on the first {args.n} ISBI Train images labelled by the {args.doctor} "
                f"doctor (2 mm label maps read back), through bundle.serving.FineTuner with the MONAI Label "
                f"training task's defaults; Test1 (150 images) evaluated against both doctors, shipped pipeline",
        "command": "python scripts/probe_fine_tuning.py " + " ".join(sys.argv[1:]),
        "label_errors": errors, "images_written": len(written), "fine_tuning_minutes": tuned_minutes,
        "fine_tuning": stats["stages"], "val_fraction": stats["val_fraction"],
    }
    result["test1_shipped"] = _evaluate(out / "eval_shipped", data, ROOT / "models" / "model.pt",
                                        ROOT / "models" / "refine.pt")
    result["test1_fine_tuned"] = _evaluate(out / "eval_tuned", data, out / "models" / "model.pt",
                                           out / "models" / "refine.pt")
    print_json_report(result, args.json, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
