"""How the shipped pipeline's accuracy falls with the image's resolution, printed as JSON.

Each ISBI image is shrunk by each ``--factors`` f (PIL's Lanczos filter, the pixel spacing given as f times
``--spacing_mm`` (0.1) with
``--pixel_spacing_mm``, as a user who knows it would), the folder run through ``configs/inference.yaml`` as a user runs
it, and the landmarks compared with the senior doctor's: MRE, SDR@2mm, the mean expected error the pipeline gives
(``uncertainty_mm``) and how many images it asks to check. It is what ``coarse_pixel_mm`` (inference.yaml,
evaluate.yaml: the check that an image's pixels are coarser than that) rests on.

    python scripts/probe_resolution.py --dataset_dir ../shared/data/isbi2015 --folder TrainingData \
        --names 001 002 003 004 005 006 007 008 009 010 --factors 1 4 8 12 16 24 32 48 64 \
        --out docs/results/resolution_probe_train.json
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    from bundle.engine import cpu_facts
    from bundle.io import print_json_report, read_landmarks

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset_dir", required=True, help="an ISBI 2015-layout folder (RawImage/, AnnotationsByMD/)")
    ap.add_argument("--folder", default="TrainingData", help="RawImage/ subfolder: TrainingData or Test1Data")
    ap.add_argument("--names", nargs="+", required=True, help="image names without suffix, e.g. 001 002")
    ap.add_argument("--factors", nargs="+", type=float, default=[1, 4, 8, 16, 32])
    ap.add_argument("--spacing_mm", type=float, default=0.1, help="the images' pixel spacing as they are (ISBI: 0.1)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    from PIL import Image

    data = Path(args.dataset_dir)
    truth = {n: read_landmarks(data / "AnnotationsByMD" / "400_senior" / f"{n}.txt", 19) * args.spacing_mm
             for n in args.names}  # mm
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in args.factors:
            folder, out = Path(tmp) / f"in_{f:g}", Path(tmp) / f"out_{f:g}"
            folder.mkdir()
            for n in args.names:
                src = next((data / "RawImage" / args.folder).glob(f"{n}.*"))
                with Image.open(src) as im:
                    im = im.convert("L")
                    size = (max(1, round(im.width / f)), max(1, round(im.height / f)))
                    im.resize(size, Image.LANCZOS).save(folder / f"{n}.png")
            cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
                   "--input_dir", str(folder), "--output_dir", str(out), "--pixel_spacing_mm", f"{args.spacing_mm * f:g}",
                   "--overlay", "false", "--analysis", "false", "--progress_bar", "false"]
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if res.returncode != 0:
                raise SystemExit(f"factor {f:g}: inference failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
            found = list(csv.DictReader(open(out / "landmarks.csv")))
            errors, expected = [], []
            for n in args.names:
                mine = [r for r in found if r["image"] in (n, f"{n}.png")]
                if len(mine) != 19:
                    continue  # not read (errors.csv)
                pred = np.array([[float(r["y_mm"]), float(r["x_mm"])] for r in mine])
                errors.append(np.linalg.norm(pred - truth[n], axis=1))
                expected += [float(r["uncertainty_mm"]) for r in mine]
            checks = list(csv.DictReader(open(out / "checks.csv"))) if (out / "checks.csv").is_file() else []
            err = np.concatenate(errors) if errors else np.array([np.nan])
            rows.append({"factor": f, "pixel_mm": round(args.spacing_mm * f, 4), "size_wh": list(size), "images_read": len(errors),
                         "mre_mm": round(float(err.mean()), 3), "sdr_2mm": round(float((err <= 2).mean() * 100), 1),
                         "expected_error_mm": round(statistics.mean(expected), 3) if expected else None,
                         "images_checked": len({c["image"] for c in checks}),
                         "checks": sorted({c["check"].split(":")[0][:80] for c in checks})})
            print(rows[-1], file=sys.stderr, flush=True)
    result = {"what": "the shipped inference pipeline on ISBI images shrunk by each factor, against the senior doctor",
              "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:])),
              "folder": args.folder, "images": args.names, **cpu_facts(), "rows": rows}
    print_json_report(result, args.out)
    return result


if __name__ == "__main__":
    main()
