"""Landmarks corrected in 3D Slicer through MONAI Label, as a training folder for the bundle.

The MONAI Label app (scripts/monailabel_app) answers with a label map, landmark ``i`` a disc of value ``i``; a
landmark moved or painted again in Slicer's Segment Editor and saved ("Submit Label") lands in the studies folder
as ``labels/final/<image id>.nrrd``. This writes, for every image with such a label, a copy of the image and its
landmarks as ``NAME.csv`` (``landmark,name,x,y`` in pixels of the image: each region's centre,
:func:`bundle.io.read_label_map_landmarks`) into ``--out``; a label that cannot be read (a landmark with no region,
a value too many) is listed in ``--out/errors.csv`` and the rest go on. Then train on it as on any own folder:

    python scripts/monailabel_labels.py --studies IMAGES_DIR --out runs/corrected
    python -m monai.bundle run training --config_file "['configs/train.yaml','configs/folder_data.yaml']" \\
        --dataset_dir runs/corrected --landmark_suffix .csv --output_dir runs/mine

Prints JSON (images written, errors) and exits non-zero when no image could be written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", required=True, help="the MONAI Label studies folder (images, labels/<tag>/)")
    ap.add_argument("--out", required=True, help="the training folder to write (images and NAME.csv beside them)")
    ap.add_argument("--tag", default="final", help="which labels: final (submitted), original (the app's answers)")
    ap.add_argument("--n_landmarks", type=int, default=19, help="landmarks per image (label values 1 to N)")
    ap.add_argument("--landmark_names", default=None, help="comma-separated names for the CSVs (default: ISBI's)")
    args = ap.parse_args()

    from bundle.io import LABEL_MAP_SUFFIXES, folder_datalist, image_stem
    from bundle.serving import labels_to_training_folder

    studies, out = Path(args.studies), Path(args.out)
    label_dir = studies / "labels" / args.tag
    if not label_dir.is_dir():
        print(json.dumps({"error": f"{label_dir}: no labels folder (nothing submitted from Slicer yet?)"}))
        return 1
    images = {image_stem(p.name): p for p in (Path(item["image"]) for item in folder_datalist(studies))}
    pairs, missing = [], []
    for label in sorted(label_dir.iterdir()):
        if not label.name.lower().endswith(LABEL_MAP_SUFFIXES):
            continue
        stem = image_stem(label.name)
        if stem in images:
            pairs.append({"image": str(images[stem]), "label": str(label)})
        else:
            missing.append([label.name, f"no image {stem}.* in {studies}"])
    names = args.landmark_names.split(",") if args.landmark_names else None
    written, errors = labels_to_training_folder(pairs, out, args.n_landmarks, names, errors=missing)
    print(json.dumps({"studies": str(studies), "out": str(out), "tag": args.tag, "written": written,
                      "errors": [{"label": a, "error": b} for a, b in errors]}, indent=1))
    return 0 if written else 1


if __name__ == "__main__":
    raise SystemExit(main())
