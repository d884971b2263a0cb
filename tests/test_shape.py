"""The shape check of the global pass (bundle/shape.py, HeatmapToLandmarksd(shape_model=...))."""

import json
import tempfile
import unittest
import unittest.mock
from pathlib import Path

import numpy as np
import torch

from bundle.heatmaps import render_gaussian_heatmaps
from bundle.shape import default_shape_model, fit_shape_model, load_shape_model, shape_z_scores, similarity_transform
from bundle.transforms import HeatmapToLandmarksd

BASE = np.array([[10.0, 10.0], [10.0, 50.0], [40.0, 60.0], [70.0, 40.0], [60.0, 10.0], [35.0, 30.0]])


def moved(shape, angle, scale, shift):
    c, s = np.cos(angle), np.sin(angle)
    return scale * shape @ np.array([[c, -s], [s, c]]).T + shift


class TestShapeModel(unittest.TestCase):
    def test_similarity_transform_recovers_a_known_one(self):
        target = moved(BASE, 0.3, 1.7, [5.0, -2.0])
        np.testing.assert_allclose(similarity_transform(BASE, target)(BASE), target, atol=1e-9)

    def test_procrustes_mean_and_spread(self):
        rng = np.random.default_rng(0)
        noise = rng.normal(0, 1.0, (200, len(BASE), 2))
        noise[:, 2] *= 3  # landmark 2 varies three times as much
        shapes = [moved(BASE + n, rng.uniform(-0.3, 0.3), rng.uniform(0.8, 1.2), rng.uniform(-20, 20, 2)) for n in noise]
        model = fit_shape_model(shapes)
        mean = similarity_transform(np.array(model["mean"]), BASE)(np.array(model["mean"]))
        np.testing.assert_allclose(mean, BASE, atol=0.6)  # the mean shape, whatever the poses
        sd = np.array(model["sd_mm"])
        self.assertGreater(sd[2], 1.5 * np.delete(sd, 2).max())  # (Procrustes spreads some of it to the rest)
        self.assertEqual(model["n_shapes"], 200)
        with self.assertRaises(ValueError):
            fit_shape_model([BASE])

    def test_a_displaced_landmark_stands_out(self):
        model = {"mean": BASE.tolist(), "sd_mm": [2.0] * len(BASE)}
        points = moved(BASE, -0.2, 1.1, [100.0, 40.0])
        points[3] += [30.0, -25.0]  # one landmark on another structure
        expected, z = shape_z_scores(points, model)
        self.assertGreater(z[3], 10.0)
        self.assertTrue((np.delete(z, 3) < 0.5).all(), z)  # the fit ignored the outlier
        np.testing.assert_allclose(expected[3], moved(BASE, -0.2, 1.1, [100.0, 40.0])[3], atol=1e-6)

    def test_load(self):
        self.assertIsNone(load_shape_model(None))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "shape.json"
            path.write_text(json.dumps({"mean": BASE.tolist(), "sd_mm": [1.0] * len(BASE)}))
            self.assertEqual(len(load_shape_model(str(path))["mean"]), len(BASE))
            with self.assertRaises(FileNotFoundError):
                load_shape_model(str(Path(tmp) / "missing.json"))
            with self.assertRaises(ValueError):
                load_shape_model({"mean": BASE.tolist(), "sd_mm": [1.0]})

    def test_landmarks_must_match_the_run(self):
        """A shape model names its landmarks: one for other landmarks is refused when named explicitly, and the
        bundled default quietly steps aside (None, with a warning) so that other landmark sets still run."""
        names = [f"P{i}" for i in range(len(BASE))]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "shape.json"
            path.write_text(json.dumps({"mean": BASE.tolist(), "sd_mm": [1.0] * len(BASE), "landmark_names": names}))
            self.assertIsNotNone(load_shape_model(path, names))
            with self.assertRaisesRegex(ValueError, "shape.json: the shape model has 6 landmarks, this run 4"):
                load_shape_model(path, names[:4])
            with self.assertRaisesRegex(ValueError, "are not this run's"):
                load_shape_model(path, names[::-1])
            self.assertEqual(default_shape_model(path, names), str(path))
            with self.assertLogs("bundle.shape", "WARNING") as logs:
                self.assertIsNone(default_shape_model(path, names[:4]))
            self.assertIn("shape check off", logs.output[0])
            self.assertIsNone(default_shape_model(Path(tmp) / "missing.json", names))
            path.write_text(json.dumps({"mean": BASE.tolist(), "sd_mm": [1.0] * len(BASE)}))  # no names: by count
            self.assertEqual(default_shape_model(path, names[::-1]), str(path))


class TestFitShapeModelScript(unittest.TestCase):
    def test_fits_the_training_annotations_of_an_isbi_folder(self):
        import importlib.util

        from bundle.synthetic import generate_synthetic_dataset

        spec = importlib.util.spec_from_file_location(
            "fit_shape_model", Path(__file__).resolve().parents[1] / "scripts" / "fit_shape_model.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        with tempfile.TemporaryDirectory() as tmp:
            data = generate_synthetic_dataset(Path(tmp) / "synthetic", n_train=10, n_test=1)
            out = Path(tmp) / "shape.json"
            with unittest.mock.patch("builtins.print"):
                script.main(["--dataset_dir", str(data), "--out", str(out), "--split", "train", "--val_fold", "1"])
            model = json.loads(out.read_text())
            self.assertEqual((len(model["mean"]), len(model["sd_mm"]), model["n_shapes"]), (19, 19, 8))
            # the drawn cephalograms vary their anatomy a little: a few mm per landmark, never zero
            self.assertTrue(all(0.0 < v < 15.0 for v in model["sd_mm"]), model["sd_mm"])


class TestShapeCheckedDecoding(unittest.TestCase):
    def test_a_confused_landmark_is_decoded_again_near_its_structure(self):
        """Landmark 3's heatmap peaks more strongly on a wrong structure 30 px away than on its own: plain decoding
        takes the wrong peak, the shape check the right one, and only that landmark is touched."""
        truth = torch.tensor(BASE, dtype=torch.float32) + 10.0  # (y, x) pixels of a 100 x 100 heatmap, 1 mm pixels
        maps = render_gaussian_heatmaps(truth, (100, 100), 2.0)
        wrong = render_gaussian_heatmaps(truth[3:4] + torch.tensor([-30.0, 25.0]), (100, 100), 2.0)[0]
        maps[3] = 0.6 * maps[3] + wrong
        data = {"pred": torch.log(maps.clamp_min(1e-8)), "scale": torch.ones(2), "spacing": torch.ones(2)}
        plain = HeatmapToLandmarksd()(dict(data))
        self.assertGreater(float((plain["pred_landmarks"][3] - truth[3]).norm()), 30.0)
        model = {"mean": BASE.tolist(), "sd_mm": [2.0] * len(BASE)}
        checked = HeatmapToLandmarksd(shape_model=model)(dict(data))
        err = (checked["pred_landmarks"] - truth).norm(dim=-1)
        self.assertLess(float(err.max()), 0.2, err.tolist())
        self.assertEqual(checked["shape_corrected"].tolist(), [False, False, False, True, False, False])
        torch.testing.assert_close(checked["pred_landmarks"][[0, 1, 2, 4, 5]], plain["pred_landmarks"][[0, 1, 2, 4, 5]])
        self.assertGreater(float(checked["spread_mm"][3]), 5.0)  # half the mass is elsewhere: still uncertain


if __name__ == "__main__":
    unittest.main()
