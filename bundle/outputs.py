"""Inference outputs: ``landmarks.csv``, a 3D Slicer point list and an overlay PNG per image, ``errors.csv``,
``measurements.csv`` (the cephalometric analysis of :mod:`bundle.analysis`, for the 19 ISBI landmarks),
``report.html`` (one page to review the batch); and the evaluation's pictures (the per-landmark error chart and the worst images).

Files take ``(x, y)`` in pixels of the original image (x right, y down, first pixel centre at 0, 0); the bundle's
``(y, x)`` arrays are converted here, at the edge.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "LANDMARKS_CSV_HEADER",
    "MEASUREMENTS_CSV_HEADER",
    "slicer_markups",
    "overlay_picture",
    "draw_overlay",
    "landmark_error_chart",
    "save_picture",
    "OverlayImageLogger",
    "LandmarkOutputWriter",
    "batch_report_html",
    "finished_images",
    "pending_datalist",
]

logger = logging.getLogger(__name__)

LANDMARKS_CSV_HEADER = ["image", "landmark", "name", "x", "y", "x_mm", "y_mm", "uncertainty_mm"]
MEASUREMENTS_CSV_HEADER = ["image", "measurement", "value", "unit", "type", "meaning"]
CHECKS_CSV_HEADER = ["image", "check"]
READINGS_CSV_HEADER = ["image", "reading"]  # how an image was read, where not as it is: mirrored, inverted, widened, reframed
READINGS = ("mirrored", "inverted", "widened", "reframed")
_SLICER_SCHEMA = "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#"


def slicer_markups(points_xy: np.ndarray, names: Sequence[str], pixel_to_lps: np.ndarray | None = None,
                   descriptions: Sequence[str] | None = None) -> dict:
    """A 3D Slicer markups point list (``.mrk.json``) for a 2D image, its points in LPS millimetres where Slicer
    shows the image.

    Args:
        points_xy: ``(N, 2)`` ``(x, y)`` pixels of the original image.
        names: one label per point.
        pixel_to_lps: the image's ``(3, 3)`` geometry (:func:`bundle.io.read_image_geometry`: the header's spacing,
            direction and origin). None: a plain picture (PNG, JPEG, BMP), which Slicer shows with 1 mm pixels from
            the origin, so that pixel ``(x, y)`` is at ``(x, y, 0)``.
    """
    from .io import PICTURE_GEOMETRY

    geometry = PICTURE_GEOMETRY if pixel_to_lps is None else np.asarray(pixel_to_lps, dtype=np.float64)
    pts = np.asarray(points_xy, dtype=float)
    lps = pts @ geometry[:, :2].T + geometry[:, 2]
    control_points = [
        {
            "id": str(i + 1),
            "label": names[i] if i < len(names) else f"L{i + 1}",
            "description": descriptions[i] if descriptions else "",
            "associatedNodeID": "",
            "position": [float(v) for v in lps[i]],
            "orientation": [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0],
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }
        for i in range(len(pts))
    ]
    return {
        "@schema": _SLICER_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "locked": False,
                "fixedNumberOfControlPoints": False,
                "labelFormat": "%N-%d",
                "lastUsedControlPointNumber": len(pts),
                "controlPoints": control_points,
                "measurements": [],
            }
        ],
    }


def overlay_picture(image: np.ndarray, points_xy: np.ndarray, uncertainty_px: np.ndarray | None = None,
                    truth_xy: np.ndarray | None = None, max_side: int = 1200, caption: Sequence[str] = ()):
    """A PIL picture of the radiograph with the landmarks drawn on it: a numbered red cross per landmark, an orange
    circle of the expected error when ``uncertainty_px`` is given, and the ground truth as a green circle with a
    yellow line to the prediction when ``truth_xy`` is given. Shrunk to at most ``max_side`` pixels. ``caption``
    lines are written on a black band added above the picture (the first in yellow, the others smaller, in grey).

    Args:
        image: ``(H, W)`` grey image, any range.
        points_xy: ``(N, 2)`` ``(x, y)`` pixels of ``image``.
    """
    from PIL import Image, ImageDraw, ImageFont

    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, (0.5, 99.5))
    grey = np.clip((img - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    pic = Image.fromarray(grey).convert("RGB")
    f = min(1.0, max_side / max(pic.size))
    if f < 1.0:
        pic = pic.resize((max(1, round(pic.width * f)), max(1, round(pic.height * f))), Image.BILINEAR)
    draw = ImageDraw.Draw(pic)
    r = max(2, round(max(pic.size) / 150))
    font = ImageFont.load_default(size=max(8, 2 * r + 2))
    pts = np.asarray(points_xy, dtype=float) * f
    if truth_xy is not None:
        tru = np.asarray(truth_xy, dtype=float) * f
        for (px, py), (tx, ty) in zip(pts, tru):
            draw.line([(px, py), (tx, ty)], fill=(255, 255, 0), width=1)
            draw.ellipse([tx - r, ty - r, tx + r, ty + r], outline=(0, 255, 0), width=2)
    for i, (x, y) in enumerate(pts):
        if uncertainty_px is not None:
            u = float(uncertainty_px[i]) * f
            draw.ellipse([x - u, y - u, x + u, y + u], outline=(255, 140, 0), width=1)
        draw.line([(x - r, y), (x + r, y)], fill=(255, 0, 0), width=2)
        draw.line([(x, y - r), (x, y + r)], fill=(255, 0, 0), width=2)
        draw.text((x + r + 1, y - 2 * r), str(i + 1), fill=(255, 60, 60), font=font)
    if caption:  # a black band added above the picture, so that it hides nothing
        size, small = max(12, pic.width // 60), max(10, pic.width // 80)
        band = size + (small + 4) * (len(caption) - 1) + 12
        framed = Image.new("RGB", (pic.width, pic.height + band), (0, 0, 0))
        framed.paste(pic, (0, band))
        pic, draw = framed, ImageDraw.Draw(framed)
        draw.text((8, 4), caption[0], fill=(255, 255, 0), font=ImageFont.load_default(size=size))
        for k, line in enumerate(caption[1:]):
            draw.text((8, size + 8 + k * (small + 4)), line, fill=(220, 220, 220), font=ImageFont.load_default(size=small))
    return pic


def draw_overlay(image: np.ndarray, points_xy: np.ndarray, names: Sequence[str], path: str | Path,
                 uncertainty_px: np.ndarray | None = None, truth_xy: np.ndarray | None = None, max_side: int = 1200,
                 caption: Sequence[str] = ()) -> None:
    """Save :func:`overlay_picture` as a PNG at ``path`` (written to a temporary name, then renamed).
    ``names`` are numbered in the picture in their order (1 = ``names[0]``)."""
    save_picture(overlay_picture(image, points_xy, uncertainty_px, truth_xy, max_side, caption), path)


def measurement_text(row: dict, digits: int = 1) -> str:
    """One measurement's value with its unit (a row of :func:`bundle.analysis.analyse`): ``4.1°``, ``2.3 mm``,
    ``0.70`` (a ratio, always two decimals)."""
    if row["unit"] == "ratio":
        return f"{row['value']:.2f}"
    return f"{row['value']:.{digits}f}{'°' if row['unit'] == 'deg' else ' mm'}"


def analysis_caption(rows: Sequence[dict]) -> list[str]:
    """Overlay caption lines for one image's analysis (:func:`bundle.analysis.analyse`): a title, then each
    measurement's value and the type it indicates, two to a line."""
    cells = [f"{r['measurement']} {measurement_text(r)}: {r['meaning']}" for r in rows]
    return ["Cephalometric analysis (ISBI 2015 types; not a diagnosis)",
            *("      ".join(cells[k:k + 2]) for k in range(0, len(cells), 2))]


def save_picture(pic, path: str | Path) -> None:
    """Save a PIL picture as PNG at ``path`` (written to a temporary name, then renamed)."""
    tmp = Path(str(path) + ".tmp.png")
    pic.save(tmp)
    os.replace(tmp, path)


def landmark_error_chart(summary: dict, threshold_mm: float = 2.0, width: int = 900):
    """A PIL bar chart of an evaluation summary (:func:`bundle.metrics.summarize_errors`): per landmark its MRE (bar),
    MRE + SD (thin line) and SDR at ``threshold_mm`` (text), with the ``threshold_mm`` line and the overall MRE."""
    from PIL import Image, ImageDraw, ImageFont

    rows = summary["per_landmark"]
    key = f"{threshold_mm:g}"
    font = ImageFont.load_default(size=13)
    row_h, top, left, right = 22, 46, 190, 150
    height = top + row_h * len(rows) + 34
    pic = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(pic)
    top_mm = max([r["mre_mm"] + r["sd_mm"] for r in rows] + [threshold_mm * 1.5])
    scale = (width - left - right) / top_mm

    def x_of(mm: float) -> float:
        return left + mm * scale

    title = (f"{summary['n_images']} images: MRE {summary['mre_mm']:.2f} ± {summary['sd_mm']:.2f} mm, "
             f"SDR@{key} mm {summary['sdr'].get(key, float('nan')):.1f}%")
    draw.text((10, 10), title, fill="black", font=ImageFont.load_default(size=16))
    for i, r in enumerate(rows):
        y = top + i * row_h
        colour = (46, 139, 87) if r["mre_mm"] <= threshold_mm else (205, 92, 60)
        draw.text((10, y + 3), f"{r['index']:>2} {r['name'][:24]}", fill="black", font=font)
        draw.rectangle([x_of(0), y + 4, x_of(r["mre_mm"]), y + row_h - 4], fill=colour)
        draw.line([(x_of(r["mre_mm"]), y + row_h / 2), (x_of(r["mre_mm"] + r["sd_mm"]), y + row_h / 2)], fill="black", width=1)
        sdr = r["sdr"].get(key)
        draw.text((width - right + 8, y + 3), f"{r['mre_mm']:.2f} mm  {sdr:.0f}%" if sdr is not None else f"{r['mre_mm']:.2f} mm",
                  fill="black", font=font)
    bottom = top + row_h * len(rows)
    draw.line([(x_of(threshold_mm), top - 4), (x_of(threshold_mm), bottom)], fill=(90, 90, 90), width=1)
    draw.line([(x_of(0), bottom), (x_of(top_mm), bottom)], fill="black", width=1)
    step = 1 if top_mm <= 8 else 2 if top_mm <= 16 else 5
    for t in range(0, int(top_mm) + 1, step):
        draw.line([(x_of(t), bottom), (x_of(t), bottom + 4)], fill="black")
        draw.text((x_of(t) - 3, bottom + 6), str(t), fill="black", font=font)
    draw.text((x_of(top_mm) + 8, bottom + 6), "mm", fill="black", font=font)
    draw.text((width - right + 8, top - 20), f"MRE  SDR@{key}", fill="black", font=font)
    draw.text((left, top - 20), f"bar: MRE (red above {key} mm), line: + 1 SD", fill=(90, 90, 90), font=font)
    return pic


class OverlayImageLogger:
    """Evaluator handler: every ``every`` validations, draws the first validation image with its predicted (red)
    and true (green) landmarks and writes it to TensorBoard as ``tag``.

    Args:
        summary_writer: a ``SummaryWriter`` (None: the handler does nothing, e.g. on DDP ranks > 0).
        trainer: the trainer, whose epoch is the TensorBoard step (set in ``run``).
        every: log every this many validations.
    """

    def __init__(self, summary_writer=None, trainer=None, every: int = 1, tag: str = "val_overlay"):
        self.writer, self.trainer, self.every, self.tag = summary_writer, trainer, max(1, every), tag
        self._count = 0
        self._armed = False

    def set_trainer(self, trainer) -> None:
        self.trainer = trainer

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._arm)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _arm(self, engine) -> None:
        self._armed = True

    def __call__(self, engine) -> None:
        if not self._armed:
            return  # only the first batch of each validation
        self._armed = False
        self._count += 1
        if self.writer is None or (self._count - 1) % self.every:
            return
        out = engine.state.output[0] if isinstance(engine.state.output, list) else engine.state.output
        item = engine.state.batch[0] if isinstance(engine.state.batch, list) else engine.state.batch
        if "pred_landmarks" not in out:
            return
        image = torch.as_tensor(item["image"]).float().cpu()[0].numpy()  # the network input, (H, W)
        scale = torch.as_tensor(item["scale"]).float().cpu()
        from .transforms import resized_from_original

        to_input = lambda p: resized_from_original(torch.as_tensor(p).float().cpu(), scale).numpy()[:, ::-1]  # noqa: E731
        truth = to_input(item["landmarks_orig"]) if "landmarks_orig" in item else None
        pic = overlay_picture(image, to_input(out["pred_landmarks"]), truth_xy=truth, max_side=max(image.shape))
        step = int(self.trainer.state.epoch) if self.trainer is not None else int(engine.state.epoch)
        self.writer.add_image(self.tag, np.asarray(pic), step, dataformats="HWC")


def batch_report_html(entries: Sequence[dict], errors: Sequence[tuple[str, str]], title: str) -> str:
    """``report.html``: one page to review a batch. Per image (``entries``: ``{"image", "overlay" (file name or
    None), "landmarks": [(number, name, x, y, uncertainty_mm)], "analysis": [row of bundle.analysis.analyse],
    "mirrored", "inverted", "widened", "reframed" (optional: how the image was read, bundle.orientation and
    bundle.framing), "checks" (optional: what to check in this image, the pipeline's warnings)}``)
    its overlay (click for full size), its cephalometric analysis with the types outside the normal range in bold,
    and its landmarks (folded); then the files that could not be read (``errors``: ``(image, message)``)."""
    from html import escape

    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + escape(title) + "</title><style>"
           "body{font-family:sans-serif;margin:1.5em;max-width:1100px}table{border-collapse:collapse;margin:.4em 0}"
           "td,th{border:1px solid #bbb;padding:2px 8px;text-align:left}.img{display:flex;gap:1.5em;margin:1.2em 0;"
           "border-top:1px solid #888;padding-top:1em}.img img{max-width:420px}.check{background:#fff3cd;"
           "padding:4px 8px;border-left:4px solid #e0a800}</style></head><body>",
           f"<h1>{escape(title)}</h1>",
           f"<p>{len(entries)} image(s) read, {len(errors)} could not be read. Positions are pixels of the original "
           "image (x right, y down); <i>expected error</i> is the calibrated uncertainty. Types are the ISBI 2015 "
           "challenge's ranges (1: normal), not a diagnosis; a clinician reviews every landmark.</p>"]
    flagged = [escape(str(e["image"])) for e in entries if e.get("checks")]
    if flagged:
        out.append(f"<p class='check'>{len(flagged)} image(s) to check first: "
                   + ", ".join(f"<a href='#{n}'>{n}</a>" for n in flagged) + "</p>")
    for e in entries:
        name = escape(str(e["image"]))
        out.append(f"<div class='img' id='{name}'><div>")
        if e.get("overlay"):
            ov = escape(str(e["overlay"]))
            out.append(f"<a href='{ov}'><img src='{ov}' alt='{name}'></a>")
        out.append(f"</div><div><h2>{name}</h2>")
        notes = [text for key, text in (("mirrored", "the face looks left: read mirrored (<code>face</code>)"),
                                        ("inverted", "the bone is dark, a negative: read inverted (<code>bone</code>)"),
                                        ("widened", "unsure as it was: the global pass read it again in the middle "
                                                    "of a wider frame (<code>reframe_unsure_widen</code>)"),
                                        ("reframed", "framed unlike the training images: the global pass read it again "
                                                     "cut to their frame (<code>reframe</code>)"))
                 if e.get(key)]
        if notes:
            out.append(f"<p>{'; '.join(notes).capitalize()}.</p>")
        for check in e.get("checks") or []:
            out.append(f"<p class='check'>{escape(str(check))}</p>")
        if e.get("analysis"):
            out.append("<table><tr><th>measurement</th><th>value</th><th>type</th></tr>")
            for r in e["analysis"]:
                kind = f"{r['type']}: {escape(r['meaning'])}"
                out.append(f"<tr><td>{r['measurement']}</td><td>{measurement_text(r, 2)}</td>"
                           f"<td>{kind if r['type'] == 1 else '<b>' + kind + '</b>'}</td></tr>")
            out.append("</table>")
        out.append("<details><summary>landmarks</summary><table><tr><th>#</th><th>name</th><th>x</th><th>y</th>"
                   "<th>expected error (mm)</th></tr>")
        for number, lname, x, y, unc in e["landmarks"]:
            out.append(f"<tr><td>{number}</td><td>{escape(str(lname))}</td><td>{x:.1f}</td><td>{y:.1f}</td>"
                       f"<td>{unc:.2f}</td></tr>")
        out.append("</table></details></div></div>")
    if errors:
        out.append("<h2>Not read</h2><table><tr><th>image</th><th>error</th></tr>")
        out.extend(f"<tr><td>{escape(str(n))}</td><td>{escape(str(m))}</td></tr>" for n, m in errors)
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _rows_by_image(path: Path, header: Sequence[str]) -> dict[str, list[list[str]]]:
    """The rows of one of our CSV files grouped by their ``image`` cell; rows cut short (a run killed while writing)
    are left out. A file with another header is refused: it is not ours to rewrite."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if rows and rows[0] != list(header):
        raise ValueError(f"{path}: not written by this bundle (header {rows[0]}, expected {list(header)}); "
                         "choose another --output_dir or move the file away")
    out: dict[str, list[list[str]]] = {}
    for r in rows[1:]:
        if len(r) == len(header):
            out.setdefault(r[0], []).append(r)
    return out


def nothing_to_do(input_dir: str | Path, output_dir: str | Path, recursive=False) -> None:
    """What inference says when its data list is empty: every image of ``input_dir`` already done (``--resume
    true``), or no image there at all, which is an error that names the folder (and says ``--recursive true`` when its
    subfolders hold images)."""
    from monai.utils import str2bool

    from .io import IMAGE_SUFFIXES, folder_datalist

    recursive = str2bool(str(recursive), raise_exc=False)
    if not folder_datalist(input_dir, recursive=recursive, exclude=[output_dir]):
        nested = not recursive and folder_datalist(input_dir, recursive=True, exclude=[output_dir])
        raise FileNotFoundError(
            f"{input_dir}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} and DICOM files by their content)"
            + (f"; its subfolders hold {len(nested)}: add --recursive true to read them" if nested else ""))
    logger.info("every image of %s already has its results in %s", input_dir, output_dir)


def finished_images(output_dir: str | Path, n_landmarks: int, overlay: bool = True,
                    stems: dict[str, str] | None = None) -> dict[str, list[list[str]]]:
    """The images an earlier inference run into ``output_dir`` finished: all ``n_landmarks`` rows in
    ``landmarks.csv``, its ``<stem>.mrk.json`` and (with ``overlay``) its ``<stem>_overlay.png`` written (the writer's
    last step). Returns their ``landmarks.csv`` rows by image name; an image cut off half-way is not among them and is
    done again. ``stems``, when given, receives the output stem of each finished image (:func:`bundle.io.output_stems`:
    the stems were handed out in the order of ``landmarks.csv``)."""
    from .io import output_stems

    out = Path(output_dir)
    landmarks = _rows_by_image(out / "landmarks.csv", LANDMARKS_CSV_HEADER)
    done = {}
    for name, stem in output_stems(list(landmarks)).items():
        rows = landmarks[name]
        if (len(rows) == n_landmarks and (out / f"{stem}.mrk.json").is_file()
                and (not overlay or (out / f"{stem}_overlay.png").is_file())):
            done[name] = rows
            if stems is not None:
                stems[name] = stem
    return done


def pending_datalist(items: Sequence[dict], output_dir: str | Path, names: Sequence[str], resume=False,
                     overlay=True) -> list[dict]:
    """The inference data list: every item, or with ``resume`` only those whose image (by name) an earlier run
    into ``output_dir`` has not finished (:func:`finished_images`); images that could not be read are tried again."""
    from monai.utils import str2bool

    from .io import item_image_name

    items = list(items)
    if not str2bool(str(resume), raise_exc=False):
        return items
    done = finished_images(output_dir, len(names), str2bool(str(overlay), raise_exc=False))
    pending = [item for item in items if item_image_name(item) not in done]
    logger.info("resuming in %s: %d of %d image(s) already done, %d to do", output_dir, len(items) - len(pending),
                len(items), len(pending))
    return pending


class LandmarkOutputWriter:
    """Ignite handler for the inference evaluator: for each image it appends its rows to ``landmarks.csv``
    (flushed at once, so a crash loses nothing already written), writes ``<stem>.mrk.json`` and
    ``<stem>_overlay.png``; an image that could not be read gets a row in ``errors.csv`` and the batch goes on; an
    image the pipeline asks to check (its ``checks``: unsure however read, a suspect pixel spacing) gets a row per
    check in ``checks.csv``, and an image not read as it is (mirrored, inverted, widened, reframed) a row per reading in
    ``readings.csv``.
    With the 19 ISBI landmarks it also appends the image's cephalometric analysis (:mod:`bundle.analysis`: ANB,
    SNB, SNA, ODI, APDI, FHI, FMA, MW with the anatomical type each indicates) to ``measurements.csv`` and writes
    the values on the overlay; other landmark sets get no analysis (logged once). ``report.html`` shows the batch on
    one page (rewritten as the batch goes, at most every few seconds, and at its end).

    Args:
        output_dir: the output folder (created if missing).
        names: landmark names.
        overlay: write the overlay PNGs.
        analysis: write the cephalometric analysis (where the landmarks allow it).
        resume: keep the images an earlier run into ``output_dir`` finished (their rows, point lists, pictures and
            report entries; :func:`finished_images`) and add this run's, whose data list
            :func:`pending_datalist` leaves them out of. Off: an earlier run's CSV files are replaced (with a warning).
    """

    REPORT_EVERY_S = 5.0  # report.html is rewritten at most this often during a batch, and at its end

    def __init__(self, output_dir: str, names: Sequence[str], overlay: bool = True, analysis: bool = True,
                 resume: bool = False):
        from monai.utils import str2bool

        from .analysis import has_analysis_landmarks

        self.output_dir = Path(output_dir)
        self.names = list(names)
        self.overlay = str2bool(str(overlay), raise_exc=False)
        self.resume = str2bool(str(resume), raise_exc=False)
        self.n_kept = 0
        self.analysis_asked = str2bool(str(analysis), raise_exc=False)
        self.analysis = self.analysis_asked and has_analysis_landmarks(self.names)
        self._entries: list[dict] = []
        self._errors: list[tuple[str, str]] = []
        self._taken: dict[str, str] = {}  # output stem -> the image whose files it names (bundle.io.output_stems)
        self._reported_at = float("-inf")
        self.n_ok = 0
        self.n_failed = 0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write)
        engine.add_event_handler(Events.COMPLETED, self._finish)

    def _start(self, engine) -> None:
        from .io import atomic_write_csv

        self.output_dir.mkdir(parents=True, exist_ok=True)
        kept, kept_measurements, kept_checks, kept_readings, kept_stems = {}, {}, {}, {}, {}
        if self.resume:  # the images an earlier run finished stay, and pending_datalist left them out of this one
            kept = finished_images(self.output_dir, len(self.names), self.overlay, kept_stems)

            def kept_rows(file: str, header: Sequence[str]) -> dict[str, list[list[str]]]:
                return {n: rows for n, rows in _rows_by_image(self.output_dir / file, header).items() if n in kept}

            kept_measurements = kept_rows("measurements.csv", MEASUREMENTS_CSV_HEADER)
            kept_checks = kept_rows("checks.csv", CHECKS_CSV_HEADER)
            kept_readings = kept_rows("readings.csv", READINGS_CSV_HEADER)
        else:
            earlier = _rows_by_image(self.output_dir / "landmarks.csv", LANDMARKS_CSV_HEADER)
            if earlier:
                logger.warning("%s: replacing the results of an earlier run (%d image(s)); --resume true keeps them and "
                               "does only the images not done yet", self.output_dir, len(earlier))
        atomic_write_csv(self.output_dir / "landmarks.csv",
                         [LANDMARKS_CSV_HEADER] + [r for rows in kept.values() for r in rows])
        atomic_write_csv(self.output_dir / "errors.csv", [["image", "error"]])  # failures are tried again
        atomic_write_csv(self.output_dir / "checks.csv", [CHECKS_CSV_HEADER] + [r for rows in kept_checks.values() for r in rows])
        atomic_write_csv(self.output_dir / "readings.csv",
                         [READINGS_CSV_HEADER] + [r for rows in kept_readings.values() for r in rows])
        if self.analysis:
            atomic_write_csv(self.output_dir / "measurements.csv",
                             [MEASUREMENTS_CSV_HEADER] + [r for rows in kept_measurements.values() for r in rows])
        elif self.analysis_asked:
            logger.info("no cephalometric analysis: it needs the 19 ISBI landmarks in their order, this run has %d",
                        len(self.names))
        self.n_ok = self.n_failed = 0
        self.n_kept = len(kept)
        self._taken = {stem: name for name, stem in kept_stems.items()}
        self._entries = [self._entry_from_rows(name, rows, kept_measurements.get(name), kept_checks.get(name),
                                               kept_readings.get(name), kept_stems[name]) for name, rows in kept.items()]
        self._errors = []
        self._reported_at = float("-inf")
        self._report(force=True)

    def _entry_from_rows(self, name: str, rows: list[list[str]], measurements: list[list[str]] | None,
                         checks: list[list[str]] | None = None, readings: list[list[str]] | None = None,
                         stem: str | None = None) -> dict:
        """A report entry of an image kept from an earlier run, from its CSV rows."""
        analysis = None
        if measurements:
            analysis = [{"measurement": m[1], "value": float(m[2]), "unit": m[3], "type": int(m[4]), "meaning": m[5]}
                        for m in measurements]
        from .io import image_stem

        stem = stem or image_stem(name)
        return {"image": name, "overlay": f"{stem}_overlay.png" if self.overlay else None,
                "analysis": analysis,
                "landmarks": [(int(r[1]), r[2], float(r[3]), float(r[4]), float(r[7])) for r in rows],
                "checks": [r[1] for r in checks or []],
                **{key: any(r[1] == key for r in readings or []) for key in READINGS}}

    def _write(self, engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batches = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for out, item in zip(outputs, batches):
            name = str(item["image_name"])
            if item.get("error"):
                self._error(name, str(item["error"]))
                continue
            try:
                self._write_one(name, str(item["image_path"]), out, item)
            except Exception as e:  # a failure on one image must not stop the batch
                logger.exception("writing outputs for %s failed", name)
                self._error(name, f"writing outputs failed: {type(e).__name__}: {e}")

    def _error(self, name: str, message: str) -> None:
        self.n_failed += 1
        self._append("errors.csv", [[name, message]])
        self._errors.append((name, message))
        self._report()

    def _append(self, file: str, rows: Sequence[Sequence[object]]) -> None:
        """Append ``rows`` to one of the output CSV files, flushed at once (nothing when there are none)."""
        if rows:
            with open(self.output_dir / file, "a", newline="") as f:
                csv.writer(f).writerows(rows)
                f.flush()

    def _report(self, force: bool = False) -> None:
        """Rewrite ``report.html`` (atomically) with every image so far, at most every ``REPORT_EVERY_S`` seconds
        unless ``force`` (a long batch would otherwise rewrite a growing page after every image); a failure here
        never stops the batch."""
        import time

        from .io import atomic_write_text

        now = time.monotonic()
        if not force and now - self._reported_at < self.REPORT_EVERY_S:
            return
        self._reported_at = now
        try:
            atomic_write_text(self.output_dir / "report.html",
                              batch_report_html(self._entries, self._errors, f"Landmarks of {self.output_dir.name}"))
        except Exception:  # noqa: BLE001 - the report is a convenience; the CSV files hold the results
            logger.exception("writing report.html failed")

    def _write_one(self, name: str, path: str, out: dict, item: dict) -> None:
        from .io import atomic_write_text, read_image

        pred_yx = torch.as_tensor(out["pred_landmarks"]).float().cpu().numpy()
        pred_mm = torch.as_tensor(out["pred_mm"]).float().cpu().numpy()
        unc = torch.as_tensor(out["uncertainty_mm"]).float().cpu().numpy()
        xy = pred_yx[:, ::-1]
        labels = [self.names[i] if i < len(self.names) else f"L{i + 1}" for i in range(len(xy))]
        rows = [
            [name, i + 1, labels[i], f"{xy[i, 0]:.2f}", f"{xy[i, 1]:.2f}", f"{pred_mm[i, 1]:.3f}", f"{pred_mm[i, 0]:.3f}",
             f"{unc[i]:.3f}"]
            for i in range(len(xy))
        ]
        self._append("landmarks.csv", rows)
        checks = [str(c) for c in out.get("checks") or []]
        self._append("checks.csv", [[name, c] for c in checks])
        readings = {key: bool(out.get(key, False)) for key in READINGS}
        self._append("readings.csv", [[name, key] for key, on in readings.items() if on])
        caption: list[str] = []
        analysis = None
        if self.analysis:
            from .analysis import analyse

            try:
                analysis = analyse(pred_mm[:, ::-1])  # (y, x) -> (x, y) mm
            except ValueError as e:  # degenerate landmarks (e.g. two at one point): the landmarks still stand
                logger.warning("%s: no cephalometric analysis: %s", name, e)
            if analysis is not None:
                self._append("measurements.csv", [[name, r["measurement"], f"{r['value']:.4f}", r["unit"], r["type"],
                                                   r["meaning"]] for r in analysis])
                caption = analysis_caption(analysis)
        stem = self._stem(name)
        (self.output_dir / stem).parent.mkdir(parents=True, exist_ok=True)  # an image in a subfolder: the same one here
        geometry = item.get("pixel_to_lps")
        geometry = None if geometry is None else torch.as_tensor(geometry).double().cpu().numpy()
        markups = slicer_markups(xy, self.names, geometry, [f"uncertainty {u:.2f} mm" for u in unc])
        atomic_write_text(self.output_dir / f"{stem}.mrk.json", json.dumps(markups, indent=2))
        if self.overlay:
            spacing = torch.as_tensor(item["spacing"]).float().cpu()
            if "image_fine" in item:  # the refinement pass's 0.2 mm copy is in the batch: no second read of the file
                from .transforms import resized_from_original

                scale = torch.as_tensor(item["image_fine_scale"]).float().cpu()
                image = torch.as_tensor(item["image_fine"]).float().cpu()[0].numpy()
                points = resized_from_original(torch.as_tensor(pred_yx), scale).numpy()[:, ::-1]
                px_per_mm = float((scale / spacing).mean())
            else:
                image, _ = read_image(path)
                points, px_per_mm = xy, float(1 / spacing.mean())
            draw_overlay(image, points, self.names, self.output_dir / f"{stem}_overlay.png", uncertainty_px=unc * px_per_mm,
                         caption=caption)
        self.n_ok += 1
        self._entries.append({"image": name, "overlay": f"{stem}_overlay.png" if self.overlay else None, "analysis": analysis,
                              "landmarks": [(i + 1, labels[i], float(x), float(y), float(u))
                                            for i, ((x, y), u) in enumerate(zip(xy, unc))],
                              **readings, "checks": checks})
        self._report()

    def _stem(self, name: str) -> str:
        """The stem of ``name``'s output files (:func:`bundle.io.output_stems`), said when another image holds the
        usual one."""
        from .io import image_stem, output_stems

        stem = output_stems([name], self._taken)[name]
        if stem != image_stem(name):
            logger.warning("%s: another image's outputs are named %s.*; this one's are %s.*", name, image_stem(name), stem)
        return stem

    def _finish(self, engine) -> None:
        self._report(force=True)
        engine.logger.info(
            "wrote landmarks of %d image(s) to %s%s; %d could not be read (see errors.csv); to review them: %s",
            self.n_ok, self.output_dir / "landmarks.csv",
            f" beside the {self.n_kept} of an earlier run" if self.n_kept else "", self.n_failed,
            self.output_dir / "report.html",
        )
