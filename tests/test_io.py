"""The ISBI reader on a small made-up folder, and clear errors for bad input."""

import json
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bundle.io import CephDataError, folder_datalist, isbi_datalist, read_image, read_landmarks
from bundle.transforms import LoadCephalogramd

W, H = 60, 80


def make_isbi(root: Path, n_train=5, n_test=2) -> np.ndarray:
    rng = np.random.default_rng(0)
    for sub in ("RawImage/TrainingData", "RawImage/Test1Data", "AnnotationsByMD/400_senior", "AnnotationsByMD/400_junior"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    pts = rng.uniform(5, 50, (n_train + n_test, 19, 2)).round()
    for i in range(n_train + n_test):
        folder = "TrainingData" if i < n_train else "Test1Data"
        ext = "bmp" if i % 2 else "jpg"
        Image.fromarray(rng.integers(0, 255, (H, W), dtype=np.uint8)).convert("RGB").save(root / f"RawImage/{folder}/{i + 1:03d}.{ext}")
        for doc, shift in (("senior", 0), ("junior", 2)):
            lines = [f"{int(x) + shift},{int(y)}" for x, y in pts[i]] + ["1", "2"]  # class labels follow, as in ISBI
            (root / f"AnnotationsByMD/400_{doc}/{i + 1:03d}.txt").write_text("\n".join(lines) + "\n")
    return pts


class TestISBIReader(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)
        self.pts = make_isbi(self.root)

    def tearDown(self):
        self.tmp.cleanup()

    def test_layout_and_ground_truth(self):
        train = isbi_datalist(self.root, "train", "senior", val_fraction=0.4)
        val = isbi_datalist(self.root, "val", "senior", val_fraction=0.4)
        test = isbi_datalist(self.root, "test", "mean")
        self.assertEqual((len(train), len(val), len(test)), (3, 2, 2))
        self.assertFalse({d["image"] for d in train} & {d["image"] for d in val})
        self.assertEqual(len(isbi_datalist(self.root, "trainval")), 5)
        load = LoadCephalogramd()
        d = load(test[0])
        self.assertEqual(tuple(d["image"].shape), (1, H, W))
        # mean of senior (x) and junior (x + 2): x + 1; files are (x, y), arrays (y, x)
        expected = torch.tensor(self.pts[5][:, ::-1].copy(), dtype=torch.float32) + torch.tensor([0.0, 1.0])
        self.assertTrue(torch.allclose(d["landmarks"], expected))
        self.assertTrue(torch.allclose(d["spacing"], torch.tensor([0.1, 0.1])))

    def test_dataset_json_spacing(self):
        (self.root / "dataset.json").write_text(json.dumps({"pixel_spacing_mm": 0.5}))
        d = LoadCephalogramd()(isbi_datalist(self.root, "test")[0])
        self.assertTrue(torch.allclose(d["spacing"], torch.tensor([0.5, 0.5])))

    def assert_names(self, err: Exception, path, words: str):
        msg = str(err)
        self.assertIn(str(path), msg)
        self.assertIn(words, msg)

    def test_unreadable_image(self):
        bad = self.root / "RawImage/TrainingData/001.jpg"
        bad.write_bytes(b"this is not a jpeg")
        with self.assertRaises(CephDataError) as cm:
            read_image(bad)
        self.assert_names(cm.exception, bad, "cannot read image")
        bad.write_bytes(b"")
        with self.assertRaises(CephDataError) as cm:
            read_image(bad)
        self.assert_names(cm.exception, bad, "empty")

    def test_eighteen_landmarks(self):
        f = self.root / "AnnotationsByMD/400_senior/002.txt"
        f.write_text("\n".join(f.read_text().splitlines()[:18]) + "\n")
        with self.assertRaises(CephDataError) as cm:
            read_landmarks(f)
        self.assert_names(cm.exception, f, "expected 19 landmarks, found 18")

    def test_blank_image(self):
        """A picture with one grey value everywhere (a failed export, an unexposed plate) is refused, named."""
        path = self.root / "RawImage" / "TrainingData" / "001.jpg"
        Image.fromarray(np.full((H, W), 128, dtype=np.uint8)).save(path)
        with self.assertRaises(CephDataError) as cm:
            read_image(path)
        self.assertIn(str(path), str(cm.exception))
        self.assertIn("image is blank (every pixel is 128)", str(cm.exception))

    def test_nan(self):
        f = self.root / "AnnotationsByMD/400_senior/003.txt"
        lines = f.read_text().splitlines()
        lines[4] = "nan,12"
        f.write_text("\n".join(lines))
        with self.assertRaises(CephDataError) as cm:
            read_landmarks(f)
        self.assert_names(cm.exception, f, "landmark 5 is not a finite number")

    def test_point_outside_image(self):
        f = self.root / "AnnotationsByMD/400_senior/004.txt"
        lines = f.read_text().splitlines()
        lines[2] = "500,10"
        f.write_text("\n".join(lines))
        item = {"image": str(self.root / "RawImage/TrainingData/004.bmp"), "label_files": [str(f)]}
        with self.assertRaises(CephDataError) as cm:
            LoadCephalogramd()(item)
        self.assert_names(cm.exception, f, "landmark 3 at x=500.0")
        self.assertIn("outside", str(cm.exception))

    def test_missing_annotation(self):
        f = self.root / "AnnotationsByMD/400_senior/005.txt"
        f.unlink()
        item = isbi_datalist(self.root, "trainval", "senior")[4]
        with self.assertRaises(CephDataError) as cm:
            LoadCephalogramd()(item)
        self.assert_names(cm.exception, f, "landmark file not found")

    def test_record_mode_goes_on(self):
        bad = self.root / "RawImage/Test1Data/broken.png"
        bad.write_bytes(b"\x89PNG broken")
        items = folder_datalist(self.root / "RawImage/Test1Data")
        self.assertEqual(len(items), 3)
        load = LoadCephalogramd(on_error="record", error_size=(32, 32))
        results = [load(i) for i in items]
        errors = [r["error"] for r in results if r["error"]]
        self.assertEqual(len(errors), 1)
        self.assertIn("broken.png", errors[0])
        self.assertEqual(tuple(results[-1]["image"].shape), (1, 32, 32))

    def test_csv_and_slicer_landmarks(self):
        csv_file = self.root / "pts.csv"
        csv_file.write_text("image,landmark,x,y\na.png,2,5.5,6.5\na.png,1,1.0,2.0\nb.png,1,9,9\n")
        got = read_landmarks(csv_file, n_landmarks=2, image_name="a.png")
        self.assertTrue(np.allclose(got, [[2.0, 1.0], [6.5, 5.5]]))
        from bundle.outputs import slicer_markups

        mrk = self.root / "a.mrk.json"
        mrk.write_text(json.dumps(slicer_markups(np.array([[3.0, 4.0], [7.5, 1.25]]), ["p", "q"])))
        self.assertTrue(np.allclose(read_landmarks(mrk, n_landmarks=2), [[4.0, 3.0], [1.25, 7.5]]))



class TestOwnDataFolder(unittest.TestCase):
    """A user's folder: images with CSV landmarks beside them, any number of landmarks, spacing from the config."""

    def test_folder_with_csv_trains_through_the_pipeline(self):
        from bundle.io import split_datalist

        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            rng = np.random.default_rng(1)
            for i in range(5):
                Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(root / f"case{i}.png")
                rows = "\n".join(f"{x:.1f},{y:.1f}" for x, y in rng.uniform(2, 25, (3, 2)))
                (root / f"case{i}.csv").write_text("x,y\n" + rows + "\n")
            items = folder_datalist(root, ".csv")
            self.assertEqual(len(items), 5)
            self.assertEqual(len(split_datalist(items, "val", 0.4)), 2)
            self.assertEqual(len(split_datalist(items, "train", 0.4)), 3)
            d = LoadCephalogramd(n_landmarks=3, spacing_mm=0.25)(items[0])
            self.assertEqual(tuple(d["landmarks"].shape), (3, 2))
            self.assertTrue(torch.allclose(d["spacing"], torch.tensor([0.25, 0.25])))
            with self.assertRaises(CephDataError):  # the config says 4 landmarks, the file has 3
                LoadCephalogramd(n_landmarks=4)(items[0])
            # the configs' one entry point: the folder split as train/val, every image for trainval and test
            from bundle.io import landmark_datalist

            self.assertEqual(landmark_datalist(root, "val", val_fraction=0.4, landmark_suffix=".csv"), split_datalist(items, "val", 0.4))
            self.assertEqual(landmark_datalist(root, "test", landmark_suffix=".csv"), items)
            self.assertEqual(len(landmark_datalist(root, "trainval", landmark_suffix=".csv", limit=2)), 2)
            with self.assertRaises(FileNotFoundError):  # no suffix: an ISBI 2015-layout folder is expected
                landmark_datalist(root, "train")
            with self.assertRaises(FileNotFoundError):
                landmark_datalist(root / "case0.csv", "test", landmark_suffix=".csv")
            # a folder per patient, each image's CSV beside it naming the image by its file name: read with recursive
            (root / "p9").mkdir()
            Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(root / "p9" / "case0.png")
            (root / "p9" / "case0.csv").write_text("image,x,y\n" + "".join(f"case0.png,{v},{v}\n" for v in (3, 4, 5)))
            self.assertEqual(landmark_datalist(root, "test", landmark_suffix=".csv"), items)  # not without it
            nested = landmark_datalist(root, "test", landmark_suffix=".csv", recursive=True)
            self.assertEqual([i["image_name"] for i in nested], [f"case{i}.png" for i in range(5)] + ["p9/case0.png"])
            d = LoadCephalogramd(n_landmarks=3)(nested[-1])
            self.assertEqual((d["image_name"], d["landmarks"][:, 0].tolist()), ("p9/case0.png", [3.0, 4.0, 5.0]))


def write_dicom(path: Path, pixels: np.ndarray, spacing=None, monochrome1: bool = False, position=None,
                orientation=None) -> None:
    """A minimal secondary-capture DICOM file, written with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    if spacing is not None:
        ds.ImagerPixelSpacing = [str(spacing[0]), str(spacing[1])]
    if position is not None:
        ds.ImagePositionPatient = [str(v) for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [str(v) for v in orientation]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def compress_dicom(src: Path, dst: Path, syntax: str) -> None:
    """``src`` written again with its pixels compressed in transfer syntax ``syntax`` (a ``gdcm.TransferSyntax``
    name), its header kept."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise RuntimeError(f"gdcm cannot read {src}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"gdcm cannot compress {src} as {syntax}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"gdcm cannot write {dst}")


class TestDicom(unittest.TestCase):
    def test_compressed_pixel_data(self):
        """Radiographs often come as JPEG Lossless (process 14, first-order prediction), JPEG-LS, JPEG 2000 or RLE
        DICOMs; pydicom decodes them through python-gdcm (requirements.txt), and the header still gives the spacing
        and the photometric interpretation."""
        import pydicom

        with tempfile.TemporaryDirectory() as tmp:
            pixels = (np.arange(40 * 30, dtype=np.uint32).reshape(40, 30) * 37 % 3000).astype(np.uint16)
            plain = Path(tmp) / "plain.dcm"
            write_dicom(plain, pixels, spacing=(0.12, 0.15), monochrome1=True)
            for syntax, uid in (("JPEGLosslessProcess14_1", "1.2.840.10008.1.2.4.70"),
                                ("JPEGLSLossless", "1.2.840.10008.1.2.4.80"),
                                ("JPEG2000Lossless", "1.2.840.10008.1.2.4.90"),
                                ("RLELossless", "1.2.840.10008.1.2.5")):
                with self.subTest(syntax=syntax):
                    path = Path(tmp) / f"{syntax}.dcm"
                    compress_dicom(plain, path, syntax)
                    self.assertEqual(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID, uid)
                    image, spacing = read_image(path)
                    self.assertEqual(spacing, (0.12, 0.15))
                    # MONOCHROME1: bone bright, as for the uncompressed file
                    self.assertTrue(np.array_equal(image, float(pixels.max()) - pixels.astype(np.float32)))

    def test_spacing_from_header_and_missing_spacing(self):
        with tempfile.TemporaryDirectory() as tmp:
            pixels = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30)
            good = Path(tmp) / "ceph.dcm"
            write_dicom(good, pixels, spacing=(0.12, 0.15))
            image, spacing = read_image(good)
            self.assertEqual(image.shape, (40, 30))
            self.assertEqual(spacing, (0.12, 0.15))
            self.assertTrue(np.array_equal(image, pixels.astype(np.float32)))
            d = LoadCephalogramd(spacing_mm=0.1)({"image": str(good)})
            self.assertTrue(torch.allclose(d["spacing"], torch.tensor([0.12, 0.15])))  # the header wins
            inverted = Path(tmp) / "mono1.dcm"
            write_dicom(inverted, pixels, spacing=(0.1, 0.1), monochrome1=True)
            self.assertEqual(read_image(inverted)[0][0, 0], float(pixels.max()))  # bone bright in every format
            bad = Path(tmp) / "nospacing.dcm"
            write_dicom(bad, pixels)
            self.assertEqual(read_image(bad)[1], None)  # the reader says the header has none ...
            for item in ({"image": str(bad)}, {"image": str(bad), "spacing_mm": 0.1}):
                with self.assertRaises(CephDataError) as cm:  # ... and the loader assumes none for a DICOM
                    LoadCephalogramd(spacing_mm=0.1)(item)
                self.assertIn(str(bad), str(cm.exception))
                self.assertIn("DICOM has no pixel spacing", str(cm.exception))
                self.assertIn("--dicom_spacing_mm", str(cm.exception))  # and says how to give one
            d = LoadCephalogramd(spacing_mm=0.1, dicom_spacing_mm=0.14)({"image": str(bad), "spacing_mm": 0.1})
            self.assertTrue(torch.allclose(d["spacing"], torch.tensor([0.14, 0.14])))
            self.assertTrue(torch.equal(d["image"][0], torch.as_tensor(pixels, dtype=torch.float32)))
            d = LoadCephalogramd(dicom_spacing_mm=0.14)({"image": str(good)})
            self.assertTrue(torch.allclose(d["spacing"], torch.tensor([0.12, 0.15])))  # the header still wins
            record = LoadCephalogramd(on_error="record")({"image": str(bad)})  # inference: errors.csv, the batch goes on
            self.assertIn("DICOM has no pixel spacing", record["error"])
            with self.assertRaises(ValueError):
                LoadCephalogramd(dicom_spacing_mm=0.0)

    def test_dicom_files_found_by_content(self):
        """PACS exports name DICOM files without a suffix (IM0001) or by their UID (1.2.840.113619.2.55): a folder's
        files that start as DICOM files do are read as DICOM; a DICOMDIR (an index) and other files are not images."""
        from bundle.io import folder_datalist, image_stem, is_dicom, output_stems

        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            pixels = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30)
            for name in ("IM0001", "1.2.840.113619.2.55", "DICOMDIR"):
                write_dicom(root / name, pixels, spacing=(0.12, 0.15))
            (root / "notes").write_text("x" * 200)
            (root / "IM0001.csv").write_text("1,2\n")
            self.assertTrue(is_dicom(root / "IM0001"))
            self.assertFalse(is_dicom(root / "notes"))
            self.assertEqual([Path(i["image"]).name for i in folder_datalist(root)], ["1.2.840.113619.2.55", "IM0001"])
            self.assertEqual(folder_datalist(root, ".csv")[1]["label_files"], [str(root / "IM0001.csv")])
            image, spacing = read_image(root / "1.2.840.113619.2.55")
            self.assertEqual(spacing, (0.12, 0.15))
            self.assertTrue(np.array_equal(image, pixels.astype(np.float32)))
        self.assertEqual([image_stem(n) for n in ("1.2.840.5.dcm", "ceph.nii.gz", "a.PNG", "IM0001", ".png")],
                         ["1.2.840.5", "ceph", "a", "IM0001", ".png"])
        self.assertEqual(output_stems(["a.png", "a.jpg", "b.png", "a.nii.gz"]),
                         {"a.png": "a", "a.jpg": "a_jpg", "b.png": "b", "a.nii.gz": "a_nii_gz"})

    def test_a_folder_tree_is_read_with_recursive(self):
        """A PACS export's tree (patient/series/IM0001, the same file name in every series): with ``recursive`` each
        image is found and named by its path under the input folder, so names, output stems and landmark files beside
        the images stay apart; hidden folders, the excluded output folder and a folder linked twice are not read again;
        without ``recursive`` only the top folder's images are."""
        from bundle.io import folder_datalist, image_stem, output_stems
        from bundle.transforms import LoadCephalogramd

        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            pixels = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30)
            for series in ("p1/s1", "p1/s2", "p2/s1", ".cache", "out"):
                (root / series).mkdir(parents=True)
                write_dicom(root / series / "IM0001", pixels, spacing=(0.12, 0.15))
                (root / series / "IM0001.csv").write_text("1,2\n")
            Image.fromarray(pixels.astype(np.uint8)).save(root / "top.png")
            (root / "p2" / "again").symlink_to(root / "p1", target_is_directory=True)  # read once, as p1
            with self.assertLogs("bundle.io", "INFO") as logs:  # and says the subfolders hold more
                self.assertEqual([i["image_name"] for i in folder_datalist(root)], ["top.png"])
            self.assertIn("reading the 1 image(s) in the folder itself; its subfolders hold more (e.g. out/IM0001): "
                          "--recursive true reads them too", logs.output[0])
            with self.assertLogs("bundle.io", "INFO") as logs:  # not the excluded output folder's, nor the hidden one's
                folder_datalist(root, exclude=[root / "out"])
            self.assertIn("(e.g. p1/s1/IM0001)", logs.output[0])
            with self.assertNoLogs("bundle.io", "INFO"):  # a folder without subfolders: nothing to say
                folder_datalist(root / "p2" / "s1")
            items = folder_datalist(root, ".csv", recursive="true", exclude=[root / "out"])
            names = [i["image_name"] for i in items]
            self.assertEqual(names, ["p1/s1/IM0001", "p1/s2/IM0001", "p2/s1/IM0001", "top.png"])
            self.assertEqual(items[1]["label_files"], [str(root / "p1" / "s2" / "IM0001.csv")])
            self.assertEqual([image_stem(n) for n in names], ["p1/s1/IM0001", "p1/s2/IM0001", "p2/s1/IM0001", "top"])
            self.assertEqual(output_stems(["s1/a.png", "s1/a.jpg", "s2/a.png"]),
                             {"s1/a.png": "s1/a", "s1/a.jpg": "s1/a_jpg", "s2/a.png": "s2/a"})
            d = LoadCephalogramd()({k: v for k, v in items[2].items() if k != "label_files"})
            self.assertEqual((d["image_name"], d["image_path"]), ("p2/s1/IM0001", str(root / "p2" / "s1" / "IM0001")))
            self.assertEqual(LoadCephalogramd()({"image": str(root / "top.png")})["image_name"], "top.png")
            (root / "z" / "y").mkdir(parents=True)  # the example is a subfolder's image, not the folder's own first one
            Image.fromarray(pixels.astype(np.uint8)).save(root / "z" / "a.png")
            Image.fromarray(pixels.astype(np.uint8)).save(root / "z" / "y" / "b.png")
            with self.assertLogs("bundle.io", "INFO") as logs:
                folder_datalist(root / "z")
            self.assertIn("(e.g. y/b.png)", logs.output[0])

    def test_dicom_spacing_mm_reaches_every_loader(self):
        """``--dicom_spacing_mm`` on the command line reaches the loaders of training, refinement training and
        inference (evaluation uses training's)."""
        from monai.bundle import ConfigParser

        configs = Path(__file__).resolve().parents[1] / "configs"
        for files, key in (([configs / "train.yaml"], "train#deterministic_transforms#0"),
                           ([configs / "train.yaml", configs / "refine.yaml"], "train#deterministic_transforms#0"),
                           ([configs / "inference.yaml"], "load")):
            with self.subTest(files=[f.name for f in files]):
                parser = ConfigParser()
                parser.read_config([str(f) for f in files])
                parser["dicom_spacing_mm"] = 0.14
                self.assertEqual(parser.get_parsed_content(key).dicom_spacing_mm, 0.14)

    def test_implausible_spacing_is_reported(self):
        """A spacing that makes the picture a few millimetres (or metres) wide is logged with the file's name."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ceph.png"
            Image.fromarray(np.arange(480 * 400, dtype=np.uint32).reshape(480, 400).astype(np.uint8)).save(path)
            with self.assertLogs("bundle.transforms", level="WARNING") as logs:
                LoadCephalogramd(spacing_mm=0.1)({"image": str(path)})  # 48 mm: far too small for a skull
            self.assertIn(str(path), logs.output[0])
            self.assertIn("pixel_spacing_mm of the config", logs.output[0])
            with self.assertNoLogs("bundle.transforms", level="WARNING"):
                LoadCephalogramd(spacing_mm=0.5)({"image": str(path)})  # 240 mm: a cephalogram


class TestImageGeometry(unittest.TestCase):
    """NIfTI, MHA and DICOM headers: the pixel spacing, the pixel order, and where 3D Slicer shows each pixel, so
    that the point lists we write land on the image in Slicer and those Slicer saves read back as pixels."""

    def assert_geometry_is_itk(self, path: Path, geometry: np.ndarray) -> None:
        import itk

        img = itk.imread(str(path))
        for x, y in ((0, 0), (7, 3), (11, 5)):
            index = (x, y) + (0,) * (img.GetImageDimension() - 2)
            expected = list(img.TransformIndexToPhysicalPoint(index))[:3]
            expected += [0.0] * (3 - len(expected))
            self.assertTrue(np.allclose(geometry @ [x, y, 1.0], expected, atol=1e-4), (path.name, x, y, expected))

    def test_nifti_and_mha(self):
        import itk
        import nibabel as nib

        from unittest import mock

        from bundle.io import image_geometry, read_image_geometry

        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            pixels = np.arange(12 * 9, dtype=np.float32).reshape(9, 12)  # (y, x): 9 rows of 12
            affine = np.diag([0.1, 0.2, 1.0, 1.0])
            affine[:3, 3] = (5.0, -6.0, 2.0)
            nib.save(nib.Nifti1Image(pixels.T.copy(), affine), root / "a.nii.gz")  # nibabel stores x first
            nib.save(nib.Nifti1Image(pixels.T[..., None].copy(), affine), root / "slice.nii")  # one slice of a 3D file
            mha = itk.image_from_array(pixels)
            mha.SetSpacing((0.15, 0.25))
            mha.SetOrigin((-3.0, 4.0))
            mha.SetDirection(itk.matrix_from_array(np.array([[0.0, 1.0], [1.0, 0.0]])))  # x and y swapped in space
            itk.imwrite(mha, str(root / "b.mha"))
            for name, spacing in (("a.nii.gz", (0.2, 0.1)), ("slice.nii", (0.2, 0.1)), ("b.mha", (0.25, 0.15))):
                image, got_spacing, geometry = read_image_geometry(root / name)
                self.assertTrue(np.array_equal(image, pixels), name)  # the same (y, x) pixels as written
                self.assertTrue(np.allclose(got_spacing, spacing), (name, got_spacing))  # (row, col) mm
                self.assertEqual(read_image(root / name)[1], got_spacing)
                self.assert_geometry_is_itk(root / name, geometry)
                with mock.patch.object(itk, "imread", side_effect=AssertionError("pixels read")):
                    self.assertTrue(np.allclose(image_geometry(root / name), geometry), name)  # from the header alone
            # a NIfTI's RAS turned to LPS: pixel (0, 0) at R 5, A -6 is L -5, P 6 (ITK keeps no z for a 2D file)
            self.assertTrue(np.allclose(read_image_geometry(root / "a.nii.gz")[2][:, 2], [-5.0, 6.0, 0.0]))

    def test_dicom_position_and_orientation(self):
        from bundle.io import image_geometry, read_image_geometry

        with tempfile.TemporaryDirectory() as tmp:
            pixels = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30)
            path = Path(tmp) / "ceph.dcm"
            write_dicom(path, pixels, spacing=(0.12, 0.15), position=(10.0, -20.0, 30.0), orientation=(0, 1, 0, 0, 0, -1))
            geometry = read_image_geometry(path)[2]
            # pixel (x 4, y 2): 4 columns along the row direction (0, 1, 0) at 0.15 mm, 2 rows along (0, 0, -1) at 0.12
            self.assertTrue(np.allclose(geometry @ [4, 2, 1], [10.0, -20.0 + 0.6, 30.0 - 0.24]))
            self.assertTrue(np.allclose(image_geometry(path), geometry))  # from the header alone
            plain = Path(tmp) / "plain.dcm"  # a radiograph without position or orientation: from the origin
            write_dicom(plain, pixels, spacing=(0.12, 0.15))
            self.assertTrue(np.allclose(read_image_geometry(plain)[2] @ [4, 2, 1], [0.6, 0.24, 0.0]))
            broken = Path(tmp) / "broken.dcm"  # an orientation that is no orientation: said, and left out
            write_dicom(broken, pixels, spacing=(0.12, 0.15), position=(1.0, 2.0, 3.0), orientation=(0, 0, 0, 0, 0, 0))
            with self.assertLogs("bundle.io", level="WARNING") as logs:
                geometry = read_image_geometry(broken)[2]
            self.assertIn("broken.dcm", logs.output[0])
            self.assertTrue(np.allclose(geometry @ [4, 2, 1], [1.6, 2.24, 3.0]))

    def test_slicer_point_lists_round_trip(self):
        """Our point list on a NIfTI image, as Slicer would save it (LPS or RAS), reads back as the same pixels, and
        the loader reads it beside its image."""
        import nibabel as nib

        from bundle.io import read_image_geometry, read_slicer_landmarks
        from bundle.outputs import slicer_markups

        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            affine = np.diag([0.1, 0.1, 1.0, 1.0])
            affine[:3, 3] = (40.0, 12.0, 0.0)
            nib.save(nib.Nifti1Image(np.arange(600, dtype=np.float32).reshape(30, 20), affine), root / "ceph.nii.gz")
            geometry = read_image_geometry(root / "ceph.nii.gz")[2]
            xy = np.array([[3.0, 4.5], [17.25, 11.0], [29.0, 0.0]])
            doc = slicer_markups(xy, ["p", "q", "r"], geometry)
            self.assertTrue(np.allclose(doc["markups"][0]["controlPoints"][1]["position"], [-41.725, -13.1, 0.0]))
            (root / "ceph.mrk.json").write_text(json.dumps(doc))
            self.assertTrue(np.allclose(read_slicer_landmarks(root / "ceph.mrk.json", 3, geometry), xy[:, ::-1]))
            ras = json.loads(json.dumps(doc))
            ras["markups"][0]["coordinateSystem"] = "RAS"
            for p in ras["markups"][0]["controlPoints"]:
                p["position"] = [-p["position"][0], -p["position"][1], p["position"][2]]
            (root / "ras.mrk.json").write_text(json.dumps(ras))
            self.assertTrue(np.allclose(read_slicer_landmarks(root / "ras.mrk.json", 3, geometry), xy[:, ::-1]))
            d = LoadCephalogramd(n_landmarks=3)({"image": str(root / "ceph.nii.gz"), "label_files": [str(root / "ceph.mrk.json")]})
            self.assertTrue(np.allclose(d["landmarks"].numpy(), xy[:, ::-1]))
            self.assertTrue(np.allclose(d["pixel_to_lps"].numpy(), geometry))


class TestCrossValidationFolds(unittest.TestCase):
    def test_folds_partition_and_fold0_is_the_plain_split(self):
        from bundle.io import n_cv_folds, split_datalist

        items = list(range(150))
        self.assertEqual(n_cv_folds(0.2), 5)
        vals = [split_datalist(items, "val", 0.2, 0, fold=k) for k in range(5)]
        self.assertEqual(sorted(sum(vals, [])), items)  # every item validates exactly once
        self.assertEqual([len(v) for v in vals], [30] * 5)
        for k, val in enumerate(vals):
            train = split_datalist(items, "train", 0.2, 0, fold=k)
            self.assertEqual(sorted(train + val), items)
            self.assertFalse(set(train) & set(val))
        self.assertEqual(vals[0], split_datalist(items, "val", 0.2, 0))  # other runs validate on fold 0
        self.assertNotEqual(vals[1], vals[0])
        self.assertEqual(split_datalist(items, "val", 0.2, 1, fold=0), split_datalist(items, "val", 0.2, 1))
        uneven = [split_datalist(list(range(11)), "val", 0.25, 3, fold=k) for k in range(4)]
        self.assertEqual(sorted(sum(uneven, [])), list(range(11)))
        with self.assertRaises(ValueError):
            split_datalist(items, "val", 0.2, 0, fold=5)
        with self.assertRaises(ValueError):
            n_cv_folds(0.0)


if __name__ == "__main__":
    unittest.main()
