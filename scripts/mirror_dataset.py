"""A mirrored copy of an ISBI 2015-layout folder: every image flipped left to right and the x of every annotated
landmark mirrored with it (x -> W - 1 - x, pixel centres at integers), so its faces look left. With it the
evaluation measures the pipeline on faces looking the other way (``--face auto|left|right``).

    python scripts/mirror_dataset.py ../shared/data/isbi2015 /tmp/isbi_mirror --folders Test1Data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageOps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="an ISBI 2015-layout folder")
    ap.add_argument("dst", help="where the mirrored copy goes (created)")
    ap.add_argument("--folders", nargs="+", default=["TrainingData", "Test1Data"], help="RawImage sub-folders to copy")
    ap.add_argument("--n_landmarks", type=int, default=19, help="annotation lines holding x,y (later lines are copied)")
    args = ap.parse_args(argv)
    src, dst = Path(args.src), Path(args.dst)
    doctors = sorted(p.name for p in (src / "AnnotationsByMD").iterdir() if p.is_dir())
    n = 0
    for folder in args.folders:
        (dst / "RawImage" / folder).mkdir(parents=True, exist_ok=True)
        for image_path in sorted((src / "RawImage" / folder).iterdir()):
            with Image.open(image_path) as im:
                width = im.width
                ImageOps.mirror(im).save(dst / "RawImage" / folder / image_path.name)
            for doctor in doctors:
                ann = src / "AnnotationsByMD" / doctor / f"{image_path.stem}.txt"
                if not ann.is_file():
                    continue
                lines = ann.read_text().splitlines()
                for i, line in enumerate(lines[: args.n_landmarks]):
                    x, y = line.replace(",", " ").split()
                    lines[i] = f"{width - 1 - float(x):g},{y}"
                (dst / "AnnotationsByMD" / doctor).mkdir(parents=True, exist_ok=True)
                (dst / "AnnotationsByMD" / doctor / ann.name).write_text("\n".join(lines) + "\n")
            n += 1
    print(f"{n} images mirrored into {dst}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
