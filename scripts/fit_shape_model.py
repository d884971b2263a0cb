"""Fit the shape model of the global pass's shape check (bundle/shape.py) from training annotations and write it
as JSON: the Procrustes mean of the landmarks (mm), each landmark's RMS distance from it, and the landmarks' names;
with the frame model of the reframing (bundle/framing.py): where the landmarks sit in the training images on
average, the images' mean size, and the range of their framings.

    python scripts/fit_shape_model.py --dataset_dir ../shared/data/isbi2015 --out models/shape_model.json
    python scripts/fit_shape_model.py --dataset_dir ... --split train --val_fold 2 --out runs/cv/shape_fold2.json
    python scripts/fit_shape_model.py --dataset_dir MY_IMAGES --landmark_suffix .csv --n_landmarks 5 \\
        --landmark_names "a,b,c,d,e" --pixel_spacing_mm 0.15 --split train --out runs/mine/shape_model.json

Without ``--landmark_suffix`` the folder has the ISBI 2015 layout (only its annotation files are read). With one,
it is a folder of images with landmark files beside them, as ``configs/folder_data.yaml`` reads it: each image is
loaded for its pixel spacing (file header, else ``--pixel_spacing_mm``), and one that cannot be read is reported
and left out. ``--split trainval`` (the default) uses every image, as the shipped weights do; ``--split train``
(with ``--val_fold K``) only the training part, with the same split arguments as the training run, so that the
validation images stay unseen. Evaluation and inference use it with ``--shape_model PATH``; the names must be the
run's ``landmark_names`` (ISBI: the 19 ISBI names; a folder: L1, L2, ... unless given).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle import ISBI_LANDMARK_NAMES  # noqa: E402
from bundle.io import CephDataError, isbi_datalist, landmark_datalist, read_landmarks  # noqa: E402
from bundle.framing import fit_frame_model  # noqa: E402
from bundle.shape import fit_shape_model  # noqa: E402


def folder_shapes(items: list[dict], n_landmarks: int, spacing_mm: float | None,
                  dicom_spacing_mm: float | None = None) -> tuple[list, list, list[str]]:
    """``(y, x)`` mm landmark sets of a folder data list, read as training reads them, the images' ``(H, W)``
    extents in mm, and the problems met."""
    from bundle.transforms import LoadCephalogramd

    load = LoadCephalogramd(keys="image", n_landmarks=n_landmarks, spacing_mm=spacing_mm, dicom_spacing_mm=dicom_spacing_mm)
    shapes, extents, problems = [], [], []
    for item in items:
        try:
            d = load(item)
        except (CephDataError, FileNotFoundError, ValueError) as e:
            problems.append(str(e))
            print(f"skipped: {e}", file=sys.stderr, flush=True)
            continue
        shapes.append(d["landmarks"].numpy() * d["spacing"].numpy())
        extents.append(d["orig_size"].numpy() * d["spacing"].numpy())
    return shapes, extents, problems


def picture_extent_mm(path: str, spacing_mm: float) -> list[float]:
    """``(H, W)`` mm of an ISBI picture, from its header (PIL does not decode the pixels for this)."""
    from PIL import Image

    with Image.open(path) as im:
        return [im.height * spacing_mm, im.width * spacing_mm]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", required=True, help="an ISBI 2015-layout folder, or an own folder with --landmark_suffix")
    ap.add_argument("--out", required=True, help="the JSON file to write")
    ap.add_argument("--landmark_suffix", default=None, help=".csv | .txt | .mrk.json: a folder of images with landmark files beside them")
    ap.add_argument("--recursive", action="store_true", help="with --landmark_suffix: the subfolders' images too, as "
                    "training's --recursive true")
    ap.add_argument("--split", default="trainval", choices=["trainval", "train"])
    ap.add_argument("--val_fold", type=int, default=None, help="cross-validation fold held out (with --split train)")
    ap.add_argument("--ground_truth", default="mean", choices=["mean", "senior", "junior"], help="ISBI layout only")
    ap.add_argument("--val_fraction", type=float, default=0.2)
    ap.add_argument("--split_seed", type=int, default=0)
    ap.add_argument("--n_landmarks", type=int, default=19)
    ap.add_argument("--landmark_names", default=None, help="comma-separated, in file order (default: ISBI's for an ISBI "
                    "folder, else L1, L2, ... as configs/folder_data.yaml)")
    ap.add_argument("--pixel_spacing_mm", type=float, default=0.1, help="for images whose file gives no spacing")
    ap.add_argument("--dicom_spacing_mm", type=float, default=None,
                    help="for DICOMs whose header gives no spacing, as the configs' dicom_spacing_mm (default: such a "
                    "DICOM is skipped and reported)")
    args = ap.parse_args(argv)
    if args.landmark_names:
        names = [n.strip() for n in args.landmark_names.split(",")]
    elif args.landmark_suffix is None and args.n_landmarks == len(ISBI_LANDMARK_NAMES):
        names = list(ISBI_LANDMARK_NAMES)
    else:
        names = [f"L{i + 1}" for i in range(args.n_landmarks)]
    if len(names) != args.n_landmarks:
        ap.error(f"--landmark_names gives {len(names)} names for --n_landmarks {args.n_landmarks}")
    problems: list[str] = []
    if args.landmark_suffix is None:
        items = isbi_datalist(args.dataset_dir, args.split, args.ground_truth, args.val_fraction, args.split_seed,
                              None, args.val_fold)
        shapes = [np.mean([read_landmarks(f, args.n_landmarks) for f in item["label_files"]], axis=0) * item["spacing_mm"]
                  for item in items]  # (y, x) mm, the frame of the decoded landmarks
        extents = [picture_extent_mm(item["image"], item["spacing_mm"]) for item in items]
    else:
        items = landmark_datalist(args.dataset_dir, args.split, args.ground_truth, args.val_fraction, args.split_seed,
                                  None, args.val_fold, args.landmark_suffix, args.recursive)
        shapes, extents, problems = folder_shapes(items, args.n_landmarks, args.pixel_spacing_mm, args.dicom_spacing_mm)
    if len(shapes) < 2:
        print(f"error: {len(shapes)} readable annotated images in {args.dataset_dir}; a shape model needs at least 2",
              file=sys.stderr)
        return 1
    model = fit_shape_model(shapes)
    model.update(fit_frame_model(shapes, extents))
    model.update({"landmark_names": names, "dataset_dir": str(args.dataset_dir), "split": args.split,
                  "val_fold": args.val_fold, "frame": "(y, x) mm"})
    if args.landmark_suffix is None:
        model["ground_truth"] = args.ground_truth
    else:
        model["landmark_suffix"] = args.landmark_suffix
        model["skipped"] = problems
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(model, indent=1) + "\n")
    print(json.dumps({k: v for k, v in model.items() if k not in ("mean", "landmark_names")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
