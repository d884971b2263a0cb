"""Reading cephalograms and landmark files; building data lists.

Everything that touches the file system on the way in lives here. Readers return arrays in MONAI's array order
(``(H, W)`` images; ``(N, 2)`` landmarks as ``(y, x)`` pixels) and raise :class:`CephDataError`, a ``ValueError``
whose message names the file and what is wrong with it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

__all__ = [
    "print_json_report",
    "CephDataError",
    "IMAGE_SUFFIXES",
    "ISBI_SPACING_MM",
    "read_image",
    "read_image_geometry",
    "is_dicom",
    "is_image_file",
    "image_stem",
    "output_stems",
    "DICOM_SPACING_TAGS",
    "image_geometry",
    "PICTURE_GEOMETRY",
    "read_landmarks",
    "read_isbi_landmarks",
    "read_csv_landmarks",
    "read_slicer_landmarks",
    "isbi_datalist",
    "split_datalist",
    "n_cv_folds",
    "folder_datalist",
    "landmark_datalist",
    "annotated_positions_mm",
    "read_model_json",
    "check_model_landmarks",
    "if_for_landmarks",
    "dataset_spacing",
    "atomic_write_text",
    "atomic_write_csv",
]

logger = logging.getLogger(__name__)

ISBI_SPACING_MM = 0.1
IMAGE_SUFFIXES = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")
_PIL_SUFFIXES = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff")


class CephDataError(ValueError):
    """An input file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, renamed into place: a reader (or a
    run killed meanwhile) sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def print_json_report(report: dict, out: str | Path | None = None, indent: int = 2) -> None:
    """What the benchmark and probe scripts end with: ``report`` printed as JSON on stdout and, with ``out``, kept
    there too (:func:`atomic_write_text`)."""
    text = json.dumps(report, indent=indent)
    print(text)
    if out:
        atomic_write_text(out, text + "\n")


def atomic_write_csv(path: str | Path, rows: list) -> None:
    """:func:`atomic_write_text` of CSV ``rows`` (lists of cells, the header first)."""
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _has_dicom_preamble(path: Path) -> bool:
    """Whether the file starts as a DICOM Part 10 file does: a 128-byte preamble, then ``DICM``."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom(path: str | Path) -> bool:
    """Whether :func:`read_image` reads ``path`` as DICOM: a ``.dcm`` file, or a file without a known image suffix
    that starts as a DICOM file does (PACS exports name files ``IM0001`` or by their UID, ``1.2.840.113619.2.55``)."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix == ".dcm":
        return True
    return suffix not in IMAGE_SUFFIXES and path.is_file() and _has_dicom_preamble(path)


def is_image_file(path: str | Path) -> bool:
    """Whether a folder's file is an image to read: a file with one of :data:`IMAGE_SUFFIXES`, or a DICOM file by
    its content (:func:`is_dicom`); not a ``DICOMDIR`` (an index of other files)."""
    path = Path(path)
    if not path.is_file() or path.name.upper() == "DICOMDIR":
        return False
    return _suffix(path) in IMAGE_SUFFIXES or is_dicom(path)


def item_image_name(item: dict) -> str:
    """The name an item's image goes by in the outputs and on resume: the data list's ``image_name`` (its path under the
    input folder, :func:`folder_datalist`), else its file name."""
    return str(item.get("image_name") or Path(str(item["image"])).name)


def image_stem(name: str | Path) -> str:
    """An image's name without its image suffix: ``1.2.840.1.dcm`` -> ``1.2.840.1``, ``ceph.nii.gz`` -> ``ceph``;
    a name without one (a DICOM found by its content) stays whole. The folders of a name relative to the input folder
    stay (``series1/IM0001.dcm`` -> ``series1/IM0001``: :func:`folder_datalist` with ``recursive``). Its landmark file
    is ``<stem><landmark_suffix>`` and its inference outputs ``<stem>.mrk.json``, ``<stem>_overlay.png`` (see
    :func:`output_stems`)."""
    path = PurePosixPath(Path(name).as_posix())
    name = path.name
    suffix = _suffix(Path(name))
    stem = name[: -len(suffix)] if suffix in IMAGE_SUFFIXES and len(suffix) < len(name) else name
    return (path.parent / stem).as_posix()


def output_stems(names: Sequence[str], taken: dict[str, str] | None = None) -> dict[str, str]:
    """The stem of each image's output files, in the order the images are written: :func:`image_stem`, except that an
    image whose stem an earlier one (in ``names``, or in ``taken``: stem -> image name) already holds (``a.png``,
    then ``a.jpg``) gets its whole name with its dots turned into underscores (``a_jpg``; ``a_jpg_2``, ``a_jpg_3``
    ... when that is held too), so that no image's outputs overwrite another's. ``taken`` is updated in place when
    given."""
    taken = {} if taken is None else taken
    stems = {}
    for name in names:
        stem = image_stem(name)
        if taken.setdefault(stem, name) != name:
            path = PurePosixPath(Path(name).as_posix())
            base = stem = (path.parent / path.name.replace(".", "_")).as_posix()
            k = 1
            while taken.setdefault(stem, name) != name:
                k += 1
                stem = f"{base}_{k}"
        stems[name] = stem
    return stems


def read_image(path: str | Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Read a 2D radiograph as a float32 ``(H, W)`` array.

    Args:
        path: BMP, JPEG, PNG or TIFF (colour images are converted to grey), DICOM (uncompressed, or compressed as
            pydicom decodes with Pillow and python-gdcm: JPEG, JPEG Lossless, JPEG-LS, JPEG 2000, RLE), NIfTI,
            MHA/MHD or NRRD.

    Returns:
        ``(image, spacing)``: the image ``(H, W)`` in the file's grey values and the pixel spacing ``(row, col)`` in
        mm when the file states it (DICOM ``PixelSpacing`` / ``ImagerPixelSpacing`` / ``NominalScannedPixelSpacing``,
        NIfTI / MHA headers), else None. A DICOM without any of those tags has lost its calibration: the loader
        (:class:`bundle.transforms.LoadCephalogramd`) refuses it unless a spacing for such files is configured.

    Raises:
        CephDataError: missing, empty, unreadable or not 2D.
    """
    image, spacing, _ = read_image_geometry(path)
    return image, spacing


def read_image_geometry(path: str | Path) -> tuple[np.ndarray, tuple[float, float] | None, np.ndarray]:
    """:func:`read_image`, and where each pixel lies in the patient (LPS) space that 3D Slicer shows the file in.

    Returns:
        ``(image, spacing, pixel_to_lps)``; ``pixel_to_lps`` is a ``(3, 3)`` float64 matrix whose columns are the
        LPS step (mm) of one pixel along x, one along y, and the position of pixel ``(0, 0)``:
        ``lps = pixel_to_lps @ (x, y, 1)``. From the header's origin, direction and spacing (DICOM
        ``ImagePositionPatient`` / ``ImageOrientationPatient``; NIfTI / MHA / NRRD as ITK reads them, a NIfTI's RAS
        turned to LPS); a plain picture (PNG, JPEG, BMP, TIFF), which Slicer shows with 1 mm pixels from the
        origin, maps ``(x, y)`` to ``(x, y, 0)``; a DICOM without pixel spacing, which Slicer shows with 1 mm pixels
        too, steps 1 mm per pixel.
    """
    path = Path(path)
    if not path.is_file():
        raise CephDataError(path, "image file not found")
    if path.stat().st_size == 0:
        raise CephDataError(path, "image file is empty (0 bytes)")
    suffix = _suffix(path)
    spacing: tuple[float, float] | None = None
    geometry = PICTURE_GEOMETRY.copy()
    try:
        if suffix in _PIL_SUFFIXES:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    arr = np.asarray(im, dtype=np.float32)
                else:
                    arr = np.asarray(im.convert("L"), dtype=np.float32)
        elif is_dicom(path):
            arr, spacing, geometry = _read_dicom(path)
        else:
            arr, spacing, geometry = _read_itk(path)
    except CephDataError:
        raise
    except Exception as e:  # the readers raise many types for corrupt files; report them all the same way
        raise CephDataError(path, f"cannot read image ({type(e).__name__}: {e})") from e
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise CephDataError(path, f"expected a 2D image, got an array of shape {tuple(arr.shape)}")
    if arr.size == 0 or min(arr.shape) < 8:
        raise CephDataError(path, f"image is empty or too small ({arr.shape[1]}x{arr.shape[0]} pixels)")
    if not np.isfinite(arr).all():
        raise CephDataError(path, "image contains NaN or infinite values")
    if arr.min() == arr.max():
        raise CephDataError(path, f"image is blank (every pixel is {arr.flat[0]:g})")
    return arr.astype(np.float32, copy=False), spacing, geometry


def image_geometry(path: str | Path) -> np.ndarray:
    """The ``pixel_to_lps`` matrix of :func:`read_image_geometry`, reading only the header (pictures, DICOM, and
    the formats ITK reads: NIfTI, MHA, NRRD); a file whose header cannot be read is read whole, so that the error
    is :func:`read_image_geometry`'s."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix in _PIL_SUFFIXES:
        return PICTURE_GEOMETRY.copy()
    if is_dicom(path) and path.is_file():
        import pydicom

        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as e:  # noqa: BLE001 - as read_image reports a corrupt file
            raise CephDataError(path, f"cannot read image ({type(e).__name__}: {e})") from e
        return _dicom_geometry(ds, _dicom_spacing(ds) or (1.0, 1.0), path)
    if path.is_file() and path.stat().st_size > 0:
        try:
            import itk

            io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
            if io is not None:
                io.SetFileName(str(path))
                io.ReadImageInformation()  # the header alone
                dim = io.GetNumberOfDimensions()
                geometry = _itk_geometry([io.GetDimensions(i) for i in range(dim)], [io.GetSpacing(i) for i in range(dim)],
                                         np.array([list(io.GetDirection(i)) for i in range(dim)], dtype=float).T,
                                         [io.GetOrigin(i) for i in range(dim)])[1]
                if geometry is not None:
                    return geometry
        except Exception:  # noqa: BLE001 - read_image_geometry below reports it
            pass
    return read_image_geometry(path)[2]


PICTURE_GEOMETRY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


DICOM_SPACING_TAGS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")


def _dicom_spacing(ds) -> tuple[float, float] | None:
    """``(row, col)`` mm from the first of :data:`DICOM_SPACING_TAGS` that holds two positive numbers, else None."""
    for tag in DICOM_SPACING_TAGS:
        value = getattr(ds, tag, None)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return float(value[0]), float(value[1])
    return None


def _dicom_geometry(ds, spacing: tuple[float, float], path: Path) -> np.ndarray:
    """``pixel_to_lps`` of a DICOM image: ``ImagePositionPatient`` is pixel (0, 0); ``ImageOrientationPatient``
    gives the directions of a row (x) and a column (y); both default as Slicer reads a radiograph without them."""
    position = getattr(ds, "ImagePositionPatient", None)
    orientation = getattr(ds, "ImageOrientationPatient", None)
    geometry = np.zeros((3, 3))
    geometry[:, 0], geometry[:, 1] = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)
    if orientation is not None and len(orientation) == 6:
        row, col = np.array([float(v) for v in orientation[:3]]), np.array([float(v) for v in orientation[3:]])
        if abs(np.linalg.norm(row) - 1) < 0.01 and abs(np.linalg.norm(col) - 1) < 0.01 and abs(row @ col) < 0.01:
            geometry[:, 0], geometry[:, 1] = row, col
        else:
            logger.warning("%s: ImageOrientationPatient %s is not two perpendicular unit vectors; ignored (Slicer "
                           "point lists assume rows along x, columns along y)", path, list(orientation))
    geometry[:, 0] *= spacing[1]  # column spacing: the step along a row
    geometry[:, 1] *= spacing[0]
    if position is not None and len(position) == 3:
        geometry[:, 2] = [float(v) for v in position]
    return geometry


def _read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None, np.ndarray]:
    import pydicom

    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array.astype(np.float32)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour DICOM: average the colour channels
        arr = arr[..., :3].mean(-1)
    slope = float(getattr(ds, "RescaleSlope", 1.0))
    intercept = float(getattr(ds, "RescaleIntercept", 0.0))
    arr = arr * slope + intercept
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() - arr  # MONOCHROME1 stores bone dark; flip so bone is bright as in every other format
    spacing = _dicom_spacing(ds)
    return arr, spacing, _dicom_geometry(ds, spacing or (1.0, 1.0), path)


def _read_itk(path: Path) -> tuple[np.ndarray, tuple[float, float] | None, np.ndarray]:
    import itk

    img = itk.imread(str(path))
    arr = itk.array_from_image(img).astype(np.float32)  # array order: itk's axes reversed, (y, x) for a 2D image
    spacing, geometry = _itk_geometry(list(img.GetLargestPossibleRegion().GetSize()), list(img.GetSpacing()),
                                      itk.array_from_matrix(img.GetDirection()), list(img.GetOrigin()))
    if geometry is None:
        return arr, None, PICTURE_GEOMETRY.copy()  # not a 2D picture: read_image says so
    return arr, spacing, geometry


def _itk_geometry(size, spacing, direction, origin) -> tuple[tuple[float, float] | None, np.ndarray | None]:
    """``(spacing (y, x), pixel_to_lps)`` from ITK's size, spacing, direction matrix (a column per axis) and origin,
    an image's or its header's; ``(None, None)`` unless exactly two axes have more than one pixel (a 3D file may
    hold one slice)."""
    dim = len(size)
    sp = np.asarray(spacing, dtype=float)
    axes = [i for i in range(dim) if int(size[i]) > 1]  # the picture's axes, x first
    if len(axes) != 2:
        return None, None
    direction = np.asarray(direction, dtype=float)
    geometry = np.zeros((3, 3))
    rows = min(dim, 3)
    geometry[:rows, 0] = direction[:rows, axes[0]] * sp[axes[0]]
    geometry[:rows, 1] = direction[:rows, axes[1]] * sp[axes[1]]
    geometry[:rows, 2] = np.asarray(origin, dtype=float)[:rows]
    return (float(sp[axes[1]]), float(sp[axes[0]])), geometry


def _check_landmarks(path: Path, xy: np.ndarray, n_landmarks: int | None) -> np.ndarray:
    if n_landmarks is not None and xy.shape[0] != n_landmarks:
        raise CephDataError(path, f"expected {n_landmarks} landmarks, found {xy.shape[0]}")
    if xy.shape[0] == 0:
        raise CephDataError(path, "no landmarks found")
    bad = np.where(~np.isfinite(xy).all(axis=1))[0]
    if bad.size:
        raise CephDataError(path, f"landmark {int(bad[0]) + 1} is not a finite number (NaN or inf)")
    return xy[:, ::-1].astype(np.float32).copy()  # (x, y) in files -> (y, x) array order


def read_isbi_landmarks(path: str | Path, n_landmarks: int | None = 19) -> np.ndarray:
    """Read an ISBI 2015 annotation: the first ``n_landmarks`` lines are ``x,y`` in pixels (later lines, which
    the challenge files use for class labels, are ignored).

    Returns:
        ``(N, 2)`` float32 landmarks as ``(y, x)`` pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise CephDataError(path, "landmark file not found")
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        parts = [p for p in line.replace(",", " ").split() if p]
        if len(parts) != 2:
            break  # end of the coordinate block
        try:
            rows.append((float(parts[0]), float(parts[1])))
        except ValueError:
            raise CephDataError(path, f"line {line_no} is not 'x,y': {line.strip()!r}") from None
        if n_landmarks is not None and len(rows) == n_landmarks:
            break
    return _check_landmarks(path, np.asarray(rows, dtype=np.float64).reshape(-1, 2), n_landmarks)


def read_csv_landmarks(path: str | Path, n_landmarks: int | None = None, image_name: str | None = None) -> np.ndarray:
    """Read landmarks from a CSV with columns ``x,y`` (optionally ``image`` and ``landmark`` as well, as written
    by our inference); with ``image_name`` only that image's rows are used.

    Returns:
        ``(N, 2)`` float32 landmarks as ``(y, x)`` pixels, ordered by the ``landmark`` column when present.
    """
    path = Path(path)
    if not path.is_file():
        raise CephDataError(path, "landmark file not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"x", "y"} <= set(reader.fieldnames):
            raise CephDataError(path, "CSV needs columns 'x' and 'y'")
        rows = [r for r in reader if image_name is None or r.get("image", image_name) == image_name]
    if "landmark" in (reader.fieldnames or []):
        rows.sort(key=lambda r: int(r["landmark"]))
    try:
        xy = np.asarray([(float(r["x"]), float(r["y"])) for r in rows], dtype=np.float64).reshape(-1, 2)
    except ValueError as e:
        raise CephDataError(path, f"non-numeric coordinate ({e})") from None
    return _check_landmarks(path, xy, n_landmarks)


def read_slicer_landmarks(path: str | Path, n_landmarks: int | None = None,
                          pixel_to_lps: np.ndarray | None = None) -> np.ndarray:
    """Read a 3D Slicer point list (``.mrk.json``, LPS or RAS millimetres) placed on a 2D image, as our inference
    writes it or as Slicer saves it.

    Args:
        pixel_to_lps: the image's geometry (:func:`read_image_geometry`): where Slicer shows each of its pixels.
            None: a plain picture, which Slicer shows with 1 mm pixels from the origin.

    Returns:
        ``(N, 2)`` float32 landmarks as ``(y, x)`` pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise CephDataError(path, "landmark file not found")
    try:
        doc = json.loads(path.read_text())
        points = doc["markups"][0]["controlPoints"]
        lps = np.asarray([(list(p["position"]) + [0.0, 0.0, 0.0])[:3] for p in points], dtype=np.float64).reshape(-1, 3)
        if doc["markups"][0].get("coordinateSystem", "LPS") == "RAS":
            lps[:, :2] = -lps[:, :2]
    except (KeyError, IndexError, TypeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise CephDataError(path, f"not a Slicer markups file ({type(e).__name__}: {e})") from None
    return _check_landmarks(path, _lps_to_pixels(lps, pixel_to_lps), n_landmarks)


def _lps_to_pixels(lps: np.ndarray, pixel_to_lps: np.ndarray | None) -> np.ndarray:
    """``(N, 2)`` ``(x, y)`` pixels of ``(N, 3)`` LPS points in an image's plane (``pixel_to_lps``: its geometry,
    :func:`read_image_geometry`; None: a plain picture, 1 mm pixels from the origin)."""
    geometry = PICTURE_GEOMETRY if pixel_to_lps is None else np.asarray(pixel_to_lps, dtype=np.float64)
    # least squares: the image plane's two steps against the point's offset from pixel (0, 0)
    return np.linalg.lstsq(geometry[:, :2], (np.asarray(lps) - geometry[:, 2]).T, rcond=None)[0].T


LABEL_MAP_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".mhd")


def _label_centre(mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(row, col)`` of a landmark's region: the centre of the circle fitted to its edge where it meets the
    background (a disc cut by a neighbour's, or by the image's edge, keeps its centre; its centroid would move away),
    or the region's centroid when fewer than 8 such edge points are left or the circle's centre falls outside the
    region's bounding box (a region painted by hand into another shape). The edge points are the midpoints between a
    region pixel and a background pixel next to it, away from other regions and from the image's edge."""
    rows, cols = np.nonzero(mask)
    centroid = np.array([rows.mean(), cols.mean()])
    h, w = labels.shape
    from scipy.ndimage import binary_dilation

    # within 2 pixels of another region: the cut, not the circle
    near_others = binary_dilation((labels != 0) & ~mask, structure=np.ones((5, 5), dtype=bool))
    points = []
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        r, c = rows + dr, cols + dc
        inside = (r >= 2) & (r < h - 2) & (c >= 2) & (c < w - 2)
        r0, c0, r, c = rows[inside], cols[inside], r[inside], c[inside]
        edge = (labels[r, c] == 0) & ~near_others[r, c] & ~near_others[r0, c0]
        points.append(np.stack([(r0[edge] + r[edge]) / 2, (c0[edge] + c[edge]) / 2], axis=1))
    pts = np.concatenate(points).astype(np.float64)
    if len(pts) < 8:
        return centroid
    # algebraic circle fit (Kasa): r^2 + c^2 + D r + E c + F = 0 in the least-squares sense
    a = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    sol = np.linalg.lstsq(a, -(pts ** 2).sum(axis=1), rcond=None)[0]
    centre = -sol[:2] / 2
    if not (rows.min() - 1 <= centre[0] <= rows.max() + 1 and cols.min() - 1 <= centre[1] <= cols.max() + 1):
        return centroid
    return centre


def read_label_map_landmarks(path: str | Path, n_landmarks: int | None = None,
                             pixel_to_lps: np.ndarray | None = None) -> np.ndarray:
    """Read landmarks from a label map (NRRD, NIfTI, MHA) in which landmark ``i`` is the region of value ``i``: the
    discs that :func:`bundle.serving.write_label_map` draws (the MONAI Label app's answer), as 3D Slicer saves them
    after a landmark was moved or painted again. Each landmark is its region's centre (:func:`_label_centre`), taken
    through the label map's own geometry (origin, spacing, direction) to the image's pixels with the image's
    ``pixel_to_lps`` (None: a plain picture, 1 mm pixels from the origin), so a label map on another grid than the
    image's is read right too.

    Returns:
        ``(N, 2)`` float32 landmarks as ``(y, x)`` pixels; ``N`` is ``n_landmarks``, else the largest label value.
    """
    path = Path(path)
    if not path.is_file():
        raise CephDataError(path, "landmark file not found")
    try:
        import itk

        image = itk.imread(str(path))
        labels = np.asarray(itk.array_from_image(image))
    except Exception as e:  # noqa: BLE001 - ITK raises RuntimeError and others for files it cannot read
        raise CephDataError(path, f"cannot read label map ({type(e).__name__}: {e})") from None
    dims = image.GetImageDimension()
    if not (dims == 2 or (dims == 3 and labels.shape[0] == 1)) or min(labels.shape[-2:]) < 2:
        raise CephDataError(path, f"expected a 2D label map (or a volume of one slice), got size "
                                  f"{' x '.join(map(str, labels.shape[::-1]))}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise CephDataError(path, "not a label map: its values are not whole numbers")
        labels = labels.astype(np.int64)
    plane = labels.reshape(labels.shape[-2:])  # (rows, cols): ITK's index (x = col, y = row[, slice 0])
    n = int(n_landmarks) if n_landmarks else int(plane.max())
    if n < 1:
        raise CephDataError(path, "the label map holds no landmark (every value is 0)")
    extra = int(plane.max())
    if extra > n:
        raise CephDataError(path, f"label value {extra} found, but {n} landmarks are expected")
    from scipy.ndimage import find_objects

    centres, missing = [], []
    h, w = plane.shape
    boxes = find_objects(plane, max_label=n)  # each label's bounding box, in one pass (None: no region)
    for i, box in enumerate(boxes, start=1):
        if box is None:
            missing.append(i)
            continue
        r0, r1 = max(box[0].start - 3, 0), min(box[0].stop + 3, h)  # the region and 3 pixels around it
        c0, c1 = max(box[1].start - 3, 0), min(box[1].stop + 3, w)
        crop = plane[r0:r1, c0:c1]
        centres.append(_label_centre(crop == i, crop) + (r0, c0))
    if missing:
        raise CephDataError(path, f"no region for landmark(s) {', '.join(map(str, missing))} (label values 1 to {n} "
                                  "expected, one per landmark)")
    index = np.zeros((n, dims))  # ITK's index: x = col, y = row (a one-slice volume: the slice index stays 0)
    index[:, :2] = np.asarray(centres)[:, ::-1]
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(itk.array_from_matrix(image.GetDirection()), dtype=np.float64)
    points = origin + (spacing * index) @ direction.T
    lps = np.zeros((n, 3))
    lps[:, :dims] = points[:, :3]
    return _check_landmarks(path, _lps_to_pixels(lps, pixel_to_lps), n_landmarks)


def read_landmarks(path: str | Path, n_landmarks: int | None = 19, image_name: str | None = None,
                   pixel_to_lps: np.ndarray | None = None) -> np.ndarray:
    """Read landmarks from an ISBI ``.txt``, a ``.csv``, a Slicer ``.mrk.json`` file or a label map (``.nrrd``,
    ``.nii.gz``, ``.mha``: :func:`read_label_map_landmarks`): ``(N, 2)`` ``(y, x)`` px. A Slicer file's
    millimetres and a label map's geometry are turned into pixels with the image's ``pixel_to_lps`` (see
    :func:`read_slicer_landmarks`)."""
    name = str(path).lower()
    if name.endswith(".csv"):
        return read_csv_landmarks(path, n_landmarks, image_name)
    if name.endswith(".json"):
        return read_slicer_landmarks(path, n_landmarks, pixel_to_lps)
    if name.endswith(LABEL_MAP_SUFFIXES):
        return read_label_map_landmarks(path, n_landmarks, pixel_to_lps)
    return read_isbi_landmarks(path, n_landmarks)


def dataset_spacing(dataset_dir: str | Path, default: float = ISBI_SPACING_MM) -> float:
    """Pixel spacing in mm of an ISBI-layout folder: ``dataset.json``'s ``pixel_spacing_mm`` (our synthetic set
    writes one) or ``default`` (0.1 mm, the ISBI 2015 images)."""
    meta = Path(dataset_dir) / "dataset.json"
    if meta.is_file():
        return float(json.loads(meta.read_text()).get("pixel_spacing_mm", default))
    return default


def isbi_datalist(
    dataset_dir: str | Path,
    split: str = "train",
    ground_truth: str = "mean",
    val_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
    fold: int | None = None,
) -> list[dict]:
    """Data list of an ISBI 2015-layout folder.

    Args:
        dataset_dir: folder with ``RawImage/{TrainingData,Test1Data}`` and ``AnnotationsByMD/400_{senior,junior}``.
        split: ``"train"`` and ``"val"`` split ``TrainingData`` (a seeded shuffle, ``val_fraction`` held out),
            ``"trainval"`` is all of it, ``"test"`` is ``Test1Data``.
        ground_truth: ``"senior"``, ``"junior"`` or ``"mean"`` (the mean of both doctors).
        limit: keep only the first ``limit`` items (for quick runs).
        fold: cross-validation fold whose part validates (see :func:`split_datalist`); None: the plain split.

    Returns:
        ``[{"image": path, "label_files": [txt, ...], "spacing_mm": s}, ...]``; the loader averages the files
        listed in ``label_files``.
    """
    root = Path(dataset_dir)
    if split not in ("train", "val", "trainval", "test"):
        raise ValueError(f"split should be train, val, trainval or test, got {split!r}.")
    doctors = {"senior": ["400_senior"], "junior": ["400_junior"], "mean": ["400_senior", "400_junior"]}
    if ground_truth not in doctors:
        raise ValueError(f"ground_truth should be senior, junior or mean, got {ground_truth!r}.")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction should be in [0, 1), got {val_fraction}.")
    image_dir = root / "RawImage" / ("Test1Data" if split == "test" else "TrainingData")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: not found; is {root} an ISBI 2015-layout folder?")
    images = sorted(p for p in image_dir.iterdir() if _suffix(p) in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"{image_dir}: no images found")
    if split in ("train", "val"):
        images = split_datalist(images, split, val_fraction, seed, fold)
    spacing = dataset_spacing(root)
    items = [
        {
            "image": str(p),
            "label_files": [str(root / "AnnotationsByMD" / d / f"{p.name.split('.')[0]}.txt") for d in doctors[ground_truth]],
            "spacing_mm": spacing,
        }
        for p in images
    ]
    return items[:limit] if limit else items


def split_datalist(items: list, split: str, val_fraction: float = 0.2, seed: int = 0, fold: int | None = None) -> list:
    """The ``"train"`` or ``"val"`` part of ``items``: a seeded shuffle holds out ``round(len * val_fraction)``
    items for validation; each part keeps the original order. ``"trainval"`` (or ``"all"``) returns everything.

    ``fold`` (k-fold cross-validation): the same shuffled order cut into ``round(1 / val_fraction)`` parts (5 for
    0.2); part ``fold`` validates and the rest trains. The folds' validation parts cover ``items`` exactly once, and
    where ``1 / val_fraction`` is a whole number fold 0 is the split that ``fold=None`` gives (other runs' validation).
    """
    if split in ("trainval", "all"):
        return list(items)
    if split not in ("train", "val"):
        raise ValueError(f"split should be train, val or trainval, got {split!r}.")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    if fold is None:
        lo, hi = 0, int(round(len(items) * val_fraction))
    else:
        n_folds = n_cv_folds(val_fraction)
        if not 0 <= int(fold) < n_folds:
            raise ValueError(f"fold should be in [0, {n_folds}) for val_fraction {val_fraction}, got {fold}.")
        bounds = [int(round(len(items) * k / n_folds)) for k in range(n_folds + 1)]
        lo, hi = bounds[int(fold)], bounds[int(fold) + 1]
    keep = sorted(order[lo:hi]) if split == "val" else sorted(order[:lo] + order[hi:])
    return [items[i] for i in keep]


def n_cv_folds(val_fraction: float) -> int:
    """Folds of a k-fold cross-validation whose validation share is ``val_fraction`` (0.2: 5)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"cross-validation needs val_fraction in (0, 1), got {val_fraction}.")
    return max(2, int(round(1.0 / val_fraction)))


def folder_datalist(input_dir: str | Path, landmark_suffix: str | None = None, recursive: bool | str = False,
                    exclude: Sequence[str | Path | None] = ()) -> list[dict]:
    """Every image in ``input_dir`` (sorted by name), for inference or for a user's own data set. Each item names its
    image by its path relative to ``input_dir`` (``image_name``: the file name, or ``series1/IM0001`` in a subfolder).

    Args:
        landmark_suffix: when given (``".csv"``, ``".txt"``, ``".mrk.json"``, a label map's ``".nrrd"``), each
            image ``NAME.ext`` takes its landmarks from ``NAME<landmark_suffix>`` beside it; files ending in it are
            landmark files, not images.
        recursive: the images in the subfolders too, at any depth (a PACS export's tree of patients and series);
            hidden folders (``.name``) and those in ``exclude`` are left out, and a folder linked twice is read once.
        exclude: folders not to look in (inference passes its output folder, which may lie inside ``input_dir``).
    """
    from monai.utils import str2bool

    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input folder not found")
    recursive = str2bool(str(recursive), raise_exc=False)
    seen = {Path(e).resolve() for e in exclude if e}

    def images(folder: Path, deep: bool):
        seen.add(folder.resolve())
        for p in sorted(folder.iterdir()):
            if p.is_dir():
                if deep and not p.name.startswith(".") and p.resolve() not in seen:
                    yield from images(p, deep)
            elif is_image_file(p) and not (landmark_suffix and p.name.lower().endswith(landmark_suffix.lower())):
                yield p  # a landmark file (a label map NAME.nrrd beside NAME.png) is not an image to read

    items = []
    for p in images(root, recursive):
        item: dict = {"image": str(p), "image_name": p.relative_to(root).as_posix()}
        if landmark_suffix:
            item["label_files"] = [str(p.parent / f"{image_stem(p.name)}{landmark_suffix}")]
        items.append(item)
    if items and not recursive:  # say so when subfolders hold images too (the first one found ends the look)
        subfolders = (d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".") and d.resolve() not in seen)
        sub = next((q for d in subfolders for q in images(d, True)), None)
        if sub is not None:
            logger.info("%s: reading the %d image(s) in the folder itself; its subfolders hold more (e.g. %s): "
                        "--recursive true reads them too", root, len(items), sub.relative_to(root).as_posix())
    return items


def landmark_datalist(
    data_root: str | Path,
    split: str = "train",
    ground_truth: str = "mean",
    val_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
    fold: int | None = None,
    landmark_suffix: str | None = None,
    recursive: bool | str = False,
) -> list[dict]:
    """The data list of either layout, one call for training, validation and evaluation configs.

    Without ``landmark_suffix``, ``data_root`` is an ISBI 2015-layout folder (:func:`isbi_datalist`, all arguments
    as there). With one (``".csv"``, ``".txt"``, ``".mrk.json"``), it is a folder of images with their landmarks
    beside them (:func:`folder_datalist`, ``configs/folder_data.yaml``): ``"train"`` / ``"val"`` (and ``fold``) split
    it as :func:`split_datalist` does, ``"trainval"`` and ``"test"`` take every image in it (evaluate a test set by
    pointing ``--dataset_dir`` at its own folder), and ``ground_truth`` does not apply (one annotation per image);
    ``recursive`` takes the images of its subfolders too (each with its landmark file beside it).
    """
    if not landmark_suffix:
        return isbi_datalist(data_root, split, ground_truth, val_fraction, seed, limit, fold)
    if split not in ("train", "val", "trainval", "test"):
        raise ValueError(f"split should be train, val, trainval or test, got {split!r}.")
    items = folder_datalist(data_root, landmark_suffix, recursive=recursive)
    if not items:
        raise FileNotFoundError(f"{data_root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} and DICOM "
                                "files by their content)")
    if split in ("train", "val"):
        items = split_datalist(items, split, val_fraction, seed, fold)
    return items[:limit] if limit else items


def annotated_positions_mm(items: Sequence[dict], n_landmarks: int | None = 19) -> np.ndarray:
    """The annotations of a data list's items as ``(images, N, 2)`` (x, y) mm, each item's ``label_files`` averaged
    as the loader averages them (ISBI ``mean``: both doctors) and scaled by its ``spacing_mm``."""
    def pixels(item: dict, f: str | Path) -> np.ndarray:  # a Slicer file needs its image's geometry
        geometry = image_geometry(item["image"]) if str(f).lower().endswith(".json") else None
        return read_landmarks(f, n_landmarks, image_name=Path(item["image"]).name, pixel_to_lps=geometry)

    return np.stack([np.mean([pixels(item, f) for f in item["label_files"]], axis=0)[:, ::-1]
                     * float(item["spacing_mm"]) for item in items]).astype(np.float64)


def read_model_json(model: str | Path | dict | None, what: str, writer: str) -> tuple[dict | None, str]:
    """The fitted model (shape model, bias correction, ...) that a config names: ``(None, ...)`` for ``None`` / ``""`` /
    ``"none"`` / ``"null"`` (switched off), a dict as it is, or the JSON file at a path (``FileNotFoundError`` naming
    it and the ``writer`` script that makes one); with the source to name in later errors."""
    if model is None or model == "" or (isinstance(model, str) and model.lower() in ("none", "null")):
        return None, f"the {what}"
    if isinstance(model, dict):
        return model, f"the {what}"
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found ({writer} writes one).")
    return json.loads(path.read_text()), str(path)


def check_model_landmarks(source: str, what: str, n: int, own_names, landmark_names: Sequence[str], fix: str) -> None:
    """Refuse a model of ``n`` landmarks (named ``own_names``, when it records them) for a run whose landmarks are
    ``landmark_names``, saying what to do (``fix``)."""
    names = [str(x) for x in landmark_names]
    if n != len(names):
        raise ValueError(f"{source}: the {what} has {n} landmarks, this run {len(names)}: {fix}.")
    if own_names and [str(x) for x in own_names] != names:
        raise ValueError(f"{source}: the {what}'s landmarks {list(own_names)} are not this run's {names}: {fix}.")


def if_for_landmarks(load, path: str | Path, landmark_names: Sequence[str], off: str, log: logging.Logger) -> str | None:
    """``path`` when ``load(path, landmark_names)`` accepts the model there, else None with a warning starting with
    ``off``: the configs' default for a bundled model, so that other landmark sets run without it instead of failing
    (a model named explicitly is checked strictly by ``load``)."""
    try:
        load(path, landmark_names)
    except (OSError, ValueError) as e:
        log.warning(f"{off}: {e}")
        return None
    return str(path)
