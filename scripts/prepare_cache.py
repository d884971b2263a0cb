"""Write a resampled copy of an ISBI 2015-layout folder: images shrunk by an integer factor (anti-aliased, JPEG),
both doctors' annotations scaled with them, and a ``dataset.json`` that states the new pixel spacing.

The copy is an ISBI-layout folder itself, so training reads it with ``--dataset_dir`` like the original; errors
stay in mm. It is what travels to a lent GPU machine (which does not see ../shared and takes at most 64 MiB):

    python scripts/prepare_cache.py --dataset_dir ../shared/data/isbi2015 --out cache/isbi_f3 --factor 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.io import dataset_spacing, read_image, read_isbi_landmarks  # noqa: E402
from bundle.transforms import ResizeLandmarksd  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--factor", type=int, default=3, help="integer shrink factor (3: 2400x1935 -> 800x645)")
    ap.add_argument("--splits", nargs="+", default=["TrainingData"], help="RawImage sub-folders to copy")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality")
    args = ap.parse_args()
    src, out = Path(args.dataset_dir), Path(args.out)
    spacing = dataset_spacing(src) * args.factor
    n = 0
    for split in args.splits:
        (out / "RawImage" / split).mkdir(parents=True, exist_ok=True)
        for img_path in sorted((src / "RawImage" / split).iterdir()):
            stem = img_path.name.split(".")[0]
            image, _ = read_image(img_path)
            h, w = image.shape
            size = (round(h / args.factor), round(w / args.factor))
            resize = ResizeLandmarksd(spatial_size=size)
            small = resize({"image": torch.as_tensor(image)[None]})["image"][0].numpy()
            Image.fromarray(np.clip(small + 0.5, 0, 255).astype(np.uint8)).save(
                out / "RawImage" / split / f"{stem}.jpg", quality=args.quality
            )
            for doctor in ("400_senior", "400_junior"):
                ann = src / "AnnotationsByMD" / doctor / f"{stem}.txt"
                if not ann.is_file():
                    continue
                yx = torch.as_tensor(read_isbi_landmarks(ann))
                scaled = resize({"image": torch.zeros(1, h, w), "landmarks": yx})["landmarks"].numpy()
                (out / "AnnotationsByMD" / doctor).mkdir(parents=True, exist_ok=True)
                (out / "AnnotationsByMD" / doctor / f"{stem}.txt").write_text(
                    "\n".join(f"{x:.3f},{y:.3f}" for y, x in scaled) + "\n"
                )
            n += 1
    # the resize factor is exact per axis only when the size divides; state the mean spacing of the copy
    (out / "dataset.json").write_text(json.dumps({"pixel_spacing_mm": spacing, "source": str(src), "factor": args.factor}))
    print(json.dumps({"images": n, "out": str(out), "pixel_spacing_mm": spacing}))


if __name__ == "__main__":
    main()
