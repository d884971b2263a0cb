"""bundle.serving: the inference bundle held in memory for a server (the MONAI Label app in scripts/monailabel_app),
and the label map it answers with. The app itself runs in a MONAI Label environment: scripts/check_monailabel.sh."""

import csv
import json
import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np
from monai.bundle import ConfigWorkflow
from PIL import Image

from bundle.io import CephDataError, image_geometry
from bundle.serving import LandmarkPredictor, landmark_label_map, write_label_map
from bundle.synthetic import synthesize_cephalogram

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# the shipped weights, one global pass per image (the refinement and the extra readings are inference.yaml's own,
# tested elsewhere): what matters here is that the served pipeline is the folder pipeline
QUICK = {"refine": False, "reframe": False, "face": "right", "bone": "bright", "num_workers": 0, "overlay": False}


def _landmarks_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows: dict[str, list] = {}
        for r in csv.DictReader(f):
            rows.setdefault(r["image"], []).append([float(r["x"]), float(r["y"])])
    return {k: np.array(v) for k, v in rows.items()}


class TestLandmarkPredictor(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        cls.inp = cls.tmp / "in"
        cls.inp.mkdir()
        for seed in (3, 4):
            image, _ = synthesize_cephalogram(np.random.default_rng(seed), (2400, 1935))
            Image.fromarray(image).save(cls.inp / f"ceph{seed}.jpg", quality=95)
        (cls.inp / "corrupt.jpg").write_bytes(b"not an image")
        cls.cli_out = cls.tmp / "cli"
        wf = ConfigWorkflow(workflow_type="infer", config_file=str(CONFIGS / "inference.yaml"), logging_file=False,
                            meta_file=str(CONFIGS / "metadata.json"), bundle_root=str(ROOT), input_dir=str(cls.inp),
                            output_dir=str(cls.cli_out), progress_bar=False, **QUICK)
        wf.initialize()
        wf.run()
        wf.finalize()
        cls.cli = _landmarks_csv(cls.cli_out / "landmarks.csv")
        cls.predictor = LandmarkPredictor(overrides=QUICK)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_one_image_per_call_as_the_folder_pipeline(self):
        """Image after image through one predictor, a file not read between them: each gets the landmarks the
        folder pipeline gives it, and the same again when asked twice."""
        self.assertEqual(sorted(self.cli), ["ceph3.jpg", "ceph4.jpg"])
        first = self.predictor(self.inp / "ceph3.jpg", self.tmp / "a")
        with self.assertRaises(CephDataError) as err:
            self.predictor(self.inp / "corrupt.jpg", self.tmp / "b")
        self.assertIn("corrupt.jpg", str(err.exception))
        self.assertIn("cannot read image", str(err.exception))
        second = self.predictor(self.inp / "ceph4.jpg", self.tmp / "c")
        again = self.predictor(self.inp / "ceph3.jpg", self.tmp / "d")
        for result, name in ((first, "ceph3.jpg"), (second, "ceph4.jpg"), (again, "ceph3.jpg")):
            xy = np.array([[p["x"], p["y"]] for p in result["landmarks"]])
            np.testing.assert_allclose(xy, self.cli[name], atol=0.02)
            self.assertEqual(result["image"], name)
            self.assertEqual([p["name"] for p in result["landmarks"]][:2], ["Sella", "Nasion"])
            self.assertEqual([p["landmark"] for p in result["landmarks"]], list(range(1, 20)))
            self.assertTrue(all(p["uncertainty_mm"] > 0 for p in result["landmarks"]))
            self.assertEqual(len(result["measurements"]), 8)
            self.assertEqual(result["size"], [2400, 1935])
            self.assertEqual(result["spacing_mm"], [0.1, 0.1])
            np.testing.assert_allclose(result["pixel_to_lps"], [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
        # each call's files are its image's alone, as a folder run of that image writes them
        self.assertEqual(sorted(p.name for p in (self.tmp / "c").glob("*.mrk.json")), ["ceph4.mrk.json"])
        self.assertEqual(list(_landmarks_csv(self.tmp / "c" / "landmarks.csv")), ["ceph4.jpg"])
        self.assertIn("corrupt.jpg", (self.tmp / "b" / "errors.csv").read_text())

    def test_the_weights_are_read_once(self):
        """The weights are read at the first call only: later calls keep the networks as they are (a server answers
        many requests), and still give the folder pipeline's landmarks."""
        from unittest import mock

        from monai.handlers import CheckpointLoader

        calls, loads = [], []
        real = CheckpointLoader.__call__
        with mock.patch.object(CheckpointLoader, "__call__", autospec=True,
                               side_effect=lambda h, engine: calls.append(h.load_path) or real(h, engine)):
            for i, name in enumerate(("ceph4.jpg", "ceph3.jpg")):
                before = len(calls)
                result = self.predictor(self.inp / name, self.tmp / f"w{i}")
                loads.append(calls[before:])
                np.testing.assert_allclose([[p["x"], p["y"]] for p in result["landmarks"]], self.cli[name], atol=0.02)
        self.assertIn(loads[0], ([], [str(ROOT / "models" / "model.pt")]))  # [] when an earlier test called first
        self.assertEqual(loads[1], [])

    def test_a_folder_holding_one_image(self):
        """A DICOM series of one radiograph comes as a folder (MONAI Label's DICOMweb store): its one image is read;
        a folder of none or several is an error that says so."""
        series = self.tmp / "series"
        series.mkdir()
        shutil.copy(self.inp / "ceph4.jpg", series / "ceph4.jpg")
        (series / "notes.txt").write_text("not an image")
        result = self.predictor(series, self.tmp / "f")
        np.testing.assert_allclose([[p["x"], p["y"]] for p in result["landmarks"]], self.cli["ceph4.jpg"], atol=0.02)
        self.assertEqual(result["image"], "ceph4.jpg")
        shutil.copy(self.inp / "ceph3.jpg", series / "ceph3.jpg")
        with self.assertRaisesRegex(CephDataError, r"series: expected a folder holding one image .*found 2 images "
                                                   r"\(ceph3.jpg, ceph4.jpg\)"):
            self.predictor(series, self.tmp / "g")
        empty = self.tmp / "empty"
        empty.mkdir()
        with self.assertRaisesRegex(CephDataError, "empty: expected a folder holding one image .*found none"):
            self.predictor(empty, self.tmp / "h")

    def test_the_label_map_lies_over_the_image(self):
        result = self.predictor(self.inp / "ceph4.jpg", self.tmp / "e")
        path = write_label_map(self.tmp / "e" / "label.nrrd", result)
        import itk

        label = itk.array_from_image(itk.imread(str(path)))
        self.assertEqual(label.shape, (1, 2400, 1935))
        for p in result["landmarks"]:
            self.assertEqual(label[0, round(p["y"]), round(p["x"])], p["landmark"])
        # 2 mm discs of 0.1 mm pixels: about pi * 20^2 pixels each, fewer where two overlap
        counts = np.bincount(label.ravel(), minlength=20)[1:]
        self.assertTrue((counts > 0).all() and (counts <= np.pi * 21 ** 2).all(), counts)
        np.testing.assert_allclose(image_geometry(path), result["pixel_to_lps"], atol=1e-9)


class TestLabelMap(unittest.TestCase):
    def result(self, points, size=(60, 80), spacing=(0.1, 0.1), geometry=None):
        return {"landmarks": [{"landmark": i + 1, "x": x, "y": y} for i, (x, y) in enumerate(points)],
                "size": list(size), "spacing_mm": list(spacing),
                "pixel_to_lps": geometry if geometry is not None else [[1, 0, 0], [0, 1, 0], [0, 0, 0]]}

    def test_discs_of_the_radius_in_mm(self):
        # rows 0.2 mm, columns 0.1 mm: a 1 mm disc is 5 rows and 10 columns from its centre
        label = landmark_label_map(self.result([(40.0, 30.0)], spacing=(0.2, 0.1)), radius_mm=1.0)
        self.assertEqual(label.dtype, np.uint8)
        self.assertEqual(label[30, 40], 1)
        self.assertEqual(label[34, 40], 1)
        self.assertEqual(label[36, 40], 0)
        self.assertEqual(label[30, 49], 1)
        self.assertEqual(label[30, 51], 0)
        self.assertEqual(label[0, 0], 0)

    def test_overlapping_discs_go_to_the_nearer_landmark(self):
        label = landmark_label_map(self.result([(30.0, 30.0), (36.0, 30.0)]), radius_mm=1.0)
        self.assertEqual(label[30, 30], 1)
        self.assertEqual(label[30, 32], 1)
        self.assertEqual(label[30, 34], 2)
        self.assertEqual(label[30, 36], 2)
        self.assertEqual(label[30, 45], 2)
        self.assertEqual(label[30, 21], 1)

    def test_a_landmark_off_the_image_draws_nothing(self):
        label = landmark_label_map(self.result([(-50.0, 10.0), (79.4, 59.4)]), radius_mm=0.3)
        self.assertNotIn(1, label)
        self.assertEqual(label[59, 79], 2)
        with self.assertRaisesRegex(ValueError, "radius_mm should be positive"):
            landmark_label_map(self.result([(1.0, 1.0)]), radius_mm=0)

    def test_written_in_the_image_geometry(self):
        """A DICOM-like geometry (rotated axes, 0.12 x 0.15 mm pixels, an origin): ITK places each landmark's
        pixel of the label map where the point list (pixel_to_lps) puts the landmark."""
        import itk

        m = np.array([[0.0, -0.15, 10.0], [0.12, 0.0, 20.0], [0.0, 0.0, 30.0]])  # x runs along P, y along -L
        result = self.result([(12.0, 7.0), (50.0, 40.0)], spacing=(0.15, 0.12), geometry=m.tolist())
        with tempfile.TemporaryDirectory() as tmp:
            for suffix in (".nrrd", ".nii.gz"):
                path = write_label_map(Path(tmp) / f"label{suffix}", result, radius_mm=0.5)
                image = itk.imread(str(path))
                for p in result["landmarks"]:
                    index = [int(p["x"]), int(p["y"]), 0]
                    self.assertEqual(itk.array_from_image(image)[0, index[1], index[0]], p["landmark"])
                    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(index), m @ [p["x"], p["y"], 1],
                                               atol=1e-5)
                np.testing.assert_allclose(image_geometry(path), m, atol=1e-5)


class TestLabelMapLandmarks(unittest.TestCase):
    """A label map the app answered with, as 3D Slicer saves it back (MONAI Label's submitted labels), read as
    landmarks: bundle.io.read_label_map_landmarks and scripts/monailabel_labels.py."""

    POINTS = [(40.3, 30.7), (55.2, 30.1), (66.0, 41.5), (3.0, 50.0)]  # 2 and 3 overlap 1; 4 is cut by the edge

    def result(self, geometry=None, points=POINTS):
        return {"landmarks": [{"landmark": i + 1, "x": x, "y": y} for i, (x, y) in enumerate(points)],
                "size": [70, 90], "spacing_mm": [0.1, 0.1],
                "pixel_to_lps": geometry if geometry is not None else [[1, 0, 0], [0, 1, 0], [0, 0, 0]]}

    def test_discs_read_back_at_their_centres(self):
        """Discs cut by their neighbours' and by the image's edge give back their centres within half a pixel
        (their centroids would be pixels off), in a picture's geometry and in a DICOM-like one."""
        from bundle.io import read_label_map_landmarks, read_landmarks

        rotated = [[0.0, -0.1, 10.0], [0.1, 0.0, 20.0], [0.0, 0.0, 30.0]]
        with tempfile.TemporaryDirectory() as tmp:
            for geometry, suffix in ((None, ".nrrd"), (rotated, ".nii.gz")):
                path = write_label_map(Path(tmp) / f"label{suffix}", self.result(geometry), radius_mm=2.0)
                yx = read_label_map_landmarks(path, 4, None if geometry is None else np.array(geometry))
                np.testing.assert_allclose(yx[:, ::-1], self.POINTS, atol=0.5)
                np.testing.assert_allclose(read_landmarks(path, 4, pixel_to_lps=geometry), yx)
            label = landmark_label_map(self.result())
            rows, cols = np.nonzero(label == 2)
            self.assertGreater(abs(cols.mean() - 55.2), 1.0)  # the centroid of a cut disc is off

    def test_a_region_painted_by_hand_is_read_at_its_centroid(self):
        from bundle.io import read_label_map_landmarks

        label = np.zeros((1, 40, 50), dtype=np.uint8)
        label[0, 10:14, 20:30] = 1  # a thin bar: no circle
        label[0, 30, 5] = 2  # a single pixel
        import itk

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "painted.nrrd"
            itk.imwrite(itk.image_from_array(label), str(path))
            yx = read_label_map_landmarks(path, 2)
        np.testing.assert_allclose(yx, [[11.5, 24.5], [30.0, 5.0]], atol=1e-6)

    def test_a_label_map_that_cannot_be_landmarks(self):
        from bundle.io import read_label_map_landmarks

        with tempfile.TemporaryDirectory() as tmp:
            path = write_label_map(Path(tmp) / "three.nrrd", self.result(points=self.POINTS[:3]))
            with self.assertRaisesRegex(CephDataError, r"three.nrrd: no region for landmark\(s\) 4 "):
                read_label_map_landmarks(path, 4)
            with self.assertRaisesRegex(CephDataError, "three.nrrd: label value 3 found, but 2 landmarks"):
                read_label_map_landmarks(path, 2)
            (Path(tmp) / "bad.nrrd").write_bytes(b"NRRD0004\ngarbage")
            with self.assertRaisesRegex(CephDataError, "bad.nrrd: cannot read label map"):
                read_label_map_landmarks(Path(tmp) / "bad.nrrd", 4)

    def test_submitted_labels_become_a_training_folder(self):
        """scripts/monailabel_labels.py on a studies folder: each image with a submitted label map is copied beside
        its landmark CSV, which the training data list reads back; a label map short of a landmark is listed in
        errors.csv and the rest go on."""
        import json
        import subprocess
        import sys

        from bundle.io import folder_datalist, read_landmarks

        with tempfile.TemporaryDirectory() as tmp:
            studies, out = Path(tmp) / "studies", Path(tmp) / "train"
            (studies / "labels" / "final").mkdir(parents=True)
            rng = np.random.default_rng(0)
            for name in ("a", "b", "c"):
                Image.fromarray((rng.random((70, 90)) * 255).astype(np.uint8)).save(studies / f"{name}.png")
            write_label_map(studies / "labels" / "final" / "a.nrrd", self.result())
            write_label_map(studies / "labels" / "final" / "b.nrrd", self.result(points=self.POINTS[:3]))
            res = subprocess.run([sys.executable, str(ROOT / "scripts" / "monailabel_labels.py"), "--studies",
                                  str(studies), "--out", str(out), "--n_landmarks", "4"],
                                 capture_output=True, text=True, cwd=ROOT)
            self.assertEqual(res.returncode, 0, res.stderr[-2000:])
            report = json.loads(res.stdout)
            self.assertEqual(report["written"], ["a.png"])
            self.assertEqual([e["label"] for e in report["errors"]], ["b.nrrd"])
            self.assertIn("no region for landmark(s) 4", (out / "errors.csv").read_text())
            items = folder_datalist(out, landmark_suffix=".csv")
            self.assertEqual([i["image_name"] for i in items], ["a.png"])
            np.testing.assert_allclose(read_landmarks(items[0]["label_files"][0], 4)[:, ::-1], self.POINTS,
                                       atol=0.5)
            self.assertEqual((out / "a.csv").read_text().splitlines()[1].split(",")[:2], ["1", "Sella"])

    def test_label_maps_beside_their_images_are_training_landmarks(self):
        """A folder of NAME.png with NAME.nrrd label maps beside them, as --landmark_suffix .nrrd reads it for
        training: the label maps are landmark files, not images, and the loader reads them as landmarks."""
        from bundle.io import landmark_datalist
        from bundle.transforms import LoadCephalogramd

        with tempfile.TemporaryDirectory() as tmp:
            rng = np.random.default_rng(1)
            for name in ("a", "b"):
                Image.fromarray((rng.random((70, 90)) * 255).astype(np.uint8)).save(Path(tmp) / f"{name}.png")
                write_label_map(Path(tmp) / f"{name}.nrrd", self.result())
            items = landmark_datalist(tmp, split="trainval", landmark_suffix=".nrrd")
            self.assertEqual([i["image_name"] for i in items], ["a.png", "b.png"])
            d = LoadCephalogramd(n_landmarks=4)(items[0])
            np.testing.assert_allclose(np.asarray(d["landmarks"])[:, ::-1], self.POINTS, atol=0.5)


class TestFineTuning(unittest.TestCase):
    def test_corrected_labels_fine_tune_both_networks(self):
        """Label maps as 3D Slicer submits them -> a training folder -> both networks fine-tuned from the given
        weights, each run validating its starting weights first; the weights land in the model folder with their
        stats, and a failed run leaves what an earlier one wrote."""
        import torch

        from bundle.serving import FineTuner, labels_to_training_folder

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "studies").mkdir()
            pairs = []
            for seed in range(3):
                image, xy = synthesize_cephalogram(np.random.default_rng(seed), (600, 484))  # 0.4 mm pixels
                Image.fromarray(image).save(tmp / "studies" / f"c{seed}.png")
                label = tmp / "studies" / f"c{seed}.nrrd"
                write_label_map(label, {"landmarks": [{"landmark": i + 1, "x": x, "y": y} for i, (x, y) in enumerate(xy)],
                                        "size": [600, 484], "spacing_mm": [1.0, 1.0],
                                        "pixel_to_lps": [[1, 0, 0], [0, 1, 0], [0, 0, 0]]}, radius_mm=5.0)
                pairs.append({"image": str(tmp / "studies" / f"c{seed}.png"), "label": str(label)})
            pairs.append({"image": str(tmp / "studies" / "gone.png"), "label": str(label)})
            written, errors = labels_to_training_folder(pairs, tmp / "train")
            self.assertEqual(written, ["c0.png", "c1.png", "c2.png"])
            self.assertIn("gone.png: image not found", errors[0][1])
            # a series folder holding its one image (DICOMweb), named by its label: two series' IM0001 stay apart
            for k in (0, 1):
                (tmp / "series" / f"s{k}").mkdir(parents=True)
                shutil.copy(tmp / "studies" / f"c{k}.png", tmp / "series" / f"s{k}" / "IM0001.png")
                shutil.copy(tmp / "studies" / f"c{k}.nrrd", tmp / "series" / f"1.2.{k}.nrrd")
            written, _ = labels_to_training_folder(
                [{"image": str(tmp / "series" / f"s{k}"), "label": str(tmp / "series" / f"1.2.{k}.nrrd")} for k in (0, 1)],
                tmp / "series_train")
            self.assertEqual(written, ["1.2.0.png", "1.2.1.png"])
            for k in (0, 1):
                self.assertEqual((tmp / "series_train" / f"1.2.{k}.csv").read_text(), (tmp / "train" / f"c{k}.csv").read_text())
            # a small U-Net for the global stage (the shipped recipe's MAHT-Net at 800 x 640 is too slow for the
            # suite); the shipped refinement network, fine-tuned
            # a recipe with its own time budget (as the GPU recipe's 5 minutes): the epochs asked for decide
            (tmp / "budget.yaml").write_text("time_budget_minutes: 0.001\n")
            tuner = FineTuner(tmp / "models", global_configs=["configs/train.yaml", str(tmp / "budget.yaml"),
                                                              "configs/folder_data.yaml"],
                              start={"global": str(tmp / "start.pt")},
                              overrides={"pixel_spacing_mm": 0.4, "num_workers": 0, "batch_size": 2, "seed": 0})
            from monai.networks.nets import UNet
            torch.save({"model": UNet(2, 1, 19, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2).state_dict()},
                       tmp / "start.pt")
            stats = tuner(tmp / "train", max_epochs=2, refine_max_epochs=1)
            self.assertEqual((stats["n_images"], sorted(stats["stages"])), (3, ["global", "refine"]))
            for stage, name in (("global", "model.pt"), ("refine", "refine.pt")):
                s = stats["stages"][stage]
                self.assertIsNotNone(s["val_mre_mm_start"], stage)  # the starting weights were validated
                self.assertLessEqual(s["val_mre_mm_best"], s["val_mre_mm_start"], stage)
                curve = json.loads((Path(stats["runs"]) / stage / "learning_curve.json").read_text())
                self.assertEqual([p["epoch"] for p in curve], [0, 1, 2] if stage == "global" else [0, 1], stage)
                self.assertTrue((tmp / "models" / name).is_file())
                # the settings the weights need go with them (bundle/settings.py)
                settings = json.loads((tmp / "models" / name.replace(".pt", ".settings.json")).read_text())
                self.assertEqual(settings["kind"], "global" if stage == "global" else "refinement", stage)
            self.assertEqual(stats["stages"]["refine"]["started_from"], str(ROOT / "models" / "refine.pt"))
            self.assertEqual(json.loads((tmp / "models" / "train_stats.json").read_text()), stats)
            self.assertEqual(FineTuner(tmp / "models").weights(),
                             {"global": tmp / "models" / "model.pt", "refine": tmp / "models" / "refine.pt"})
            # a run that fails: an error with its log's end, and the earlier weights stay
            before = (tmp / "models" / "model.pt").read_bytes()
            tuner.overrides["network_def#_target_"] = "NoSuchNetwork"
            with self.assertRaisesRegex(RuntimeError, "fine-tuning the global network failed .*NoSuchNetwork"):
                tuner(tmp / "train", max_epochs=1, refine_max_epochs=0)
            self.assertEqual((tmp / "models" / "model.pt").read_bytes(), before)
            with self.assertRaisesRegex(ValueError, "needs at least 2"):
                tuner(tmp / "studies", max_epochs=1)
