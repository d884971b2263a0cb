"""How exactly a label map of landmark discs (the MONAI Label app's answer, bundle.serving.landmark_label_map) reads
back as landmarks (bundle.io.read_label_map_landmarks: each region's centre from a circle fitted to its free edge),
against the regions' centroids, on the senior annotations of ISBI 2015 Train (19 landmarks, 2 mm discs at 0.1 mm
pixels, nearer landmark winning where discs overlap) and on discs packed far more densely (8 random landmarks in a
16 x 12 mm picture). Prints JSON (pixel errors: median, 90th and 99th percentiles, largest; and the pairs of ISBI
landmarks whose discs overlap on more than 5% of the images).

    python scripts/probe_label_map_centres.py --dataset_dir ../shared/data/isbi2015 --out docs/results/label_map_centres.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _summary(errors: list[float]) -> dict:
    e = np.asarray(errors)
    return {"n": int(e.size), "median_px": round(float(np.median(e)), 4), "p90_px": round(float(np.percentile(e, 90)), 4),
            "p99_px": round(float(np.percentile(e, 99)), 4), "max_px": round(float(e.max()), 4)}


def _read_back(points_xy: np.ndarray, size_hw: tuple[int, int], radius_mm: float, spacing_mm: float):
    """(fitted errors, centroid errors) in pixels of each landmark drawn as a disc and read back."""
    from bundle.io import _label_centre
    from bundle.serving import landmark_label_map

    result = {"landmarks": [{"landmark": i + 1, "x": x, "y": y} for i, (x, y) in enumerate(points_xy)],
              "size": list(size_hw), "spacing_mm": [spacing_mm, spacing_mm]}
    labels = landmark_label_map(result, radius_mm)
    fitted, centroid = [], []
    h, w = labels.shape
    for i, (x, y) in enumerate(points_xy):
        rows, cols = np.nonzero(labels == i + 1)
        if rows.size == 0:
            continue  # swallowed by its neighbours: nothing to read (the reader says so)
        r0, r1, c0, c1 = max(rows.min() - 3, 0), min(rows.max() + 4, h), max(cols.min() - 3, 0), min(cols.max() + 4, w)
        crop = labels[r0:r1, c0:c1]  # as read_label_map_landmarks crops each region
        row, col = _label_centre(crop == i + 1, crop) + (r0, c0)
        fitted.append(float(np.hypot(row - y, col - x)))
        centroid.append(float(np.hypot(rows.mean() - y, cols.mean() - x)))
    return fitted, centroid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", default=str(ROOT.parent / "shared" / "data" / "isbi2015"))
    ap.add_argument("--radius_mm", type=float, default=2.0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    from bundle.io import read_isbi_landmarks

    t0 = time.perf_counter()
    report: dict = {"radius_mm": args.radius_mm}
    files = sorted((Path(args.dataset_dir) / "AnnotationsByMD" / "400_senior").glob("*.txt"))[:150]
    if files:
        fitted, centroid, distances = [], [], []
        for f in files:
            xy = read_isbi_landmarks(f)[:, ::-1].astype(np.float64)
            f_err, c_err = _read_back(xy, (2400, 1935), args.radius_mm, 0.1)
            fitted += f_err
            centroid += c_err
            distances.append(np.linalg.norm(xy[:, None] - xy[None], axis=-1) * 0.1)  # mm
        d = np.stack(distances)
        i, j = np.triu_indices(19, 1)
        overlap = (d[:, i, j] < 2 * args.radius_mm).mean(axis=0)  # share of images whose two discs overlap
        pairs = [{"landmarks": [int(a) + 1, int(b) + 1], "median_distance_mm": round(float(np.median(d[:, a, b])), 2),
                  "images_overlapping": round(float(share), 3)}
                 for a, b, share in sorted(zip(i, j, overlap), key=lambda t: -t[2]) if share > 0.05]
        report["isbi_train_senior"] = {"images": len(files), "fitted": _summary(fitted), "centroid": _summary(centroid),
                                       "pairs_overlapping_on_over_5pct": pairs}
    else:
        report["isbi_train_senior"] = {"skipped": f"no annotations in {args.dataset_dir}"}
    rng = np.random.default_rng(0)
    fitted, centroid = [], []
    for _ in range(30):
        f_err, c_err = _read_back(rng.uniform([10, 10], [150, 110], size=(8, 2)), (120, 160), args.radius_mm, 0.1)
        fitted += f_err
        centroid += c_err
    report["dense_random"] = {"pictures": 30, "fitted": _summary(fitted), "centroid": _summary(centroid)}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
