"""A changed copy of an ISBI 2015-layout folder, to measure the pipeline on images unlike ISBI's: ``--mirror`` flips
every image left to right (its faces look left), ``--invert`` makes it a negative (bone dark), ``--pad_width W`` puts
it in the middle of a black canvas W pixels wide (a landscape picture), ``--pad_height H`` in the middle of one H
pixels high (with both: a wide border all round), ``--crop Y0 X0 Y1 X1`` keeps only those rows and columns (first,
before the rest; a tight crop, refused if it cuts off an annotated landmark), ``--crop_to_landmarks MARGIN`` cuts each
image to the box of its own annotated landmarks widened by MARGIN pixels (a tight crop of each head); every annotated
landmark moves with the
image (cropped: x -> x - X0, y -> y - Y0; mirrored: x -> W - 1 - x, pixel centres at integers; padded: x -> x + left
margin, y -> y + top margin).

    python scripts/variant_dataset.py ../shared/data/isbi2015 /tmp/isbi_mirror --mirror --folders Test1Data
    python scripts/variant_dataset.py ../shared/data/isbi2015 /tmp/isbi_negative --invert --folders Test1Data
    python scripts/variant_dataset.py ../shared/data/isbi2015 /tmp/isbi_wide --pad_width 3000 --folders Test1Data
    python scripts/variant_dataset.py ../shared/data/isbi2015 /tmp/isbi_border --pad_width 3000 --pad_height 3600 --folders Test1Data
    python scripts/variant_dataset.py ../shared/data/isbi2015 /tmp/isbi_tight --crop 740 420 2360 1820 --folders Test1Data
    python scripts/variant_dataset.py ../shared/data/isbi2015 /tmp/isbi_heads --crop_to_landmarks 60
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def landmark_box(src: Path, doctors: list[str], stem: str, n_landmarks: int, margin: int, width: int,
                 height: int) -> list[int]:
    """``[y0, x0, y1, x1]``: the box of an image's annotated landmarks (every doctor's) widened by ``margin`` pixels,
    within the image."""
    xy = []
    for doctor in doctors:
        ann = src / "AnnotationsByMD" / doctor / f"{stem}.txt"
        if ann.is_file():
            xy += [[float(v) for v in line.replace(",", " ").split()] for line in ann.read_text().splitlines()[:n_landmarks]]
    if not xy:
        raise SystemExit(f"--crop_to_landmarks: no annotation of {stem} in {src / 'AnnotationsByMD'}")
    xy = np.array(xy)
    x0, y0 = np.floor(xy.min(0)).astype(int) - margin
    x1, y1 = np.ceil(xy.max(0)).astype(int) + margin + 1
    return [max(int(y0), 0), max(int(x0), 0), min(int(y1), height), min(int(x1), width)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="an ISBI 2015-layout folder")
    ap.add_argument("dst", help="where the changed copy goes (created)")
    ap.add_argument("--mirror", action="store_true", help="flip every image left to right")
    ap.add_argument("--invert", action="store_true", help="make every image a negative (grey values 255 - v)")
    ap.add_argument("--pad_width", type=int, default=None, help="centre every image on a black canvas this wide")
    ap.add_argument("--pad_height", type=int, default=None, help="centre every image on a black canvas this high")
    ap.add_argument("--crop", type=int, nargs=4, default=None, metavar=("Y0", "X0", "Y1", "X1"),
                    help="keep rows Y0..Y1-1 and columns X0..X1-1 of every image (pixels)")
    ap.add_argument("--crop_to_landmarks", type=int, default=None, metavar="MARGIN",
                    help="cut every image to the box of its annotated landmarks (all doctors) widened by MARGIN "
                         "pixels on each side (a tight crop of each head)")
    ap.add_argument("--folders", nargs="+", default=["TrainingData", "Test1Data"], help="RawImage sub-folders to copy")
    ap.add_argument("--n_landmarks", type=int, default=19, help="annotation lines holding x,y (later lines are copied)")
    args = ap.parse_args(argv)
    if (not args.mirror and not args.invert and args.pad_width is None and args.pad_height is None and args.crop is None
            and args.crop_to_landmarks is None):
        ap.error("nothing to change: give --mirror, --invert, --pad_width, --pad_height, --crop and/or --crop_to_landmarks")
    if args.crop is not None and args.crop_to_landmarks is not None:
        ap.error("give --crop or --crop_to_landmarks, not both")
    src, dst = Path(args.src), Path(args.dst)
    doctors = sorted(p.name for p in (src / "AnnotationsByMD").iterdir() if p.is_dir())
    n = 0
    for folder in args.folders:
        (dst / "RawImage" / folder).mkdir(parents=True, exist_ok=True)
        for image_path in sorted((src / "RawImage" / folder).iterdir()):
            with Image.open(image_path) as im:
                crop_y, crop_x = 0, 0
                box = args.crop
                if args.crop_to_landmarks is not None:
                    box = landmark_box(src, doctors, image_path.stem, args.n_landmarks, args.crop_to_landmarks,
                                       im.width, im.height)
                if box is not None:
                    crop_y, crop_x, y1, x1 = box
                    if not (0 <= crop_y < y1 <= im.height and 0 <= crop_x < x1 <= im.width):
                        ap.error(f"--crop {box} does not fit in {image_path} ({im.width} x {im.height} pixels)")
                    im = im.crop((crop_x, crop_y, x1, y1))
                width, height = im.width, im.height
                out = ImageOps.mirror(im) if args.mirror else im.copy()
            if args.invert:
                out = ImageOps.invert(out.convert("L"))
            left = top = 0
            if args.pad_width is not None or args.pad_height is not None:
                canvas_w, canvas_h = args.pad_width or width, args.pad_height or height
                if canvas_w < width or canvas_h < height:
                    ap.error(f"the canvas {canvas_w} x {canvas_h} is smaller than {image_path} ({width} x {height} pixels)")
                left, top = (canvas_w - width) // 2, (canvas_h - height) // 2
                canvas = np.zeros((canvas_h, canvas_w), dtype=np.uint8)
                canvas[top:top + height, left:left + width] = np.asarray(out.convert("L"))
                out = Image.fromarray(canvas)
            out.save(dst / "RawImage" / folder / image_path.name)
            for doctor in doctors:
                ann = src / "AnnotationsByMD" / doctor / f"{image_path.stem}.txt"
                if not ann.is_file():
                    continue
                lines = ann.read_text().splitlines()
                for i, line in enumerate(lines[: args.n_landmarks]):
                    x, y = (float(v) for v in line.replace(",", " ").split())
                    x, y = x - crop_x, y - crop_y
                    if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
                        ap.error(f"--crop {box} cuts off landmark {i + 1} of {ann}")
                    x = width - 1 - x if args.mirror else x
                    lines[i] = f"{x + left:g},{y + top:g}"
                (dst / "AnnotationsByMD" / doctor).mkdir(parents=True, exist_ok=True)
                (dst / "AnnotationsByMD" / doctor / ann.name).write_text("\n".join(lines) + "\n")
            n += 1
    print(f"{n} images written to {dst}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
