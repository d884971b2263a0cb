"""bundle/bias.py and scripts/fit_bias_correction.py: the per-landmark bias correction of the final positions."""

import contextlib
import csv
import io
import json
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch

from bundle.bias import CorrectBiasd, default_bias_correction, fit_bias, load_bias_correction

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["A", "B", "C"]
BIAS = {"refined": [[1.0, -2.0], [0.0, 0.5], [-0.25, 0.0]], "global": [[2.0, 0.0], [0.0, 0.0], [0.0, 1.0]],
        "landmark_names": NAMES}


class TestCorrectBias(unittest.TestCase):
    def test_subtracts_the_bias_in_mm_and_keeps_pixels_consistent(self):
        spacing = torch.tensor([0.1, 0.2])  # (row, col) mm per pixel
        pred_px = torch.tensor([[100.0, 200.0], [50.0, 60.0], [10.0, 20.0]])  # (y, x)
        d = {"pred_landmarks": pred_px.clone(), "pred_mm": pred_px * spacing, "spacing": spacing, "error": ""}
        out = CorrectBiasd(BIAS, "refined", NAMES)(d)
        bias_yx = torch.tensor(BIAS["refined"]).flip(-1)
        torch.testing.assert_close(out["pred_mm"], pred_px * spacing - bias_yx)
        torch.testing.assert_close(out["pred_landmarks"] * spacing, out["pred_mm"])
        torch.testing.assert_close(out["uncorrected_landmarks"], pred_px)
        out = CorrectBiasd(BIAS, "global", NAMES)(d)
        torch.testing.assert_close(out["pred_mm"][0], pred_px[0] * spacing - torch.tensor([0.0, 2.0]))
        self.assertIs(CorrectBiasd(None)(d)["pred_mm"], d["pred_mm"])  # no correction: nothing changes
        unreadable = {"error": "cannot read image", "spacing": spacing}
        self.assertEqual(CorrectBiasd(BIAS, "refined")(unreadable), unreadable)

    def test_refuses_other_landmarks(self):
        with self.assertRaisesRegex(ValueError, "has 3 landmarks, this run 2"):
            CorrectBiasd(BIAS, "refined", NAMES[:2])
        with self.assertRaisesRegex(ValueError, "are not this run's"):
            load_bias_correction(BIAS, NAMES[::-1])
        with self.assertRaisesRegex(ValueError, "no 'global' entry"):
            CorrectBiasd({"refined": BIAS["refined"]}, "global")
        with self.assertRaises(ValueError):
            load_bias_correction({"refined": [[1.0], [2.0]]})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bias.json"
            path.write_text(json.dumps(BIAS))
            self.assertEqual(load_bias_correction(str(path), NAMES)["refined"], BIAS["refined"])
            with self.assertRaisesRegex(ValueError, "bias.json: the bias correction has 3 landmarks"):
                load_bias_correction(str(path), NAMES[:2])
            with self.assertRaises(FileNotFoundError):
                load_bias_correction(Path(tmp) / "missing.json")
            # the default of inference.yaml steps aside for other landmarks instead of failing
            self.assertEqual(default_bias_correction(path, NAMES), str(path))
            with self.assertLogs("bundle.bias", "WARNING"):
                self.assertIsNone(default_bias_correction(path, NAMES[:2]))
            self.assertIsNone(default_bias_correction(Path(tmp) / "missing.json", NAMES))
        self.assertIsNone(load_bias_correction("null"))

    def test_the_shipped_correction_is_for_the_isbi_landmarks(self):
        from bundle import ISBI_LANDMARK_NAMES

        model = load_bias_correction(ROOT / "models" / "bias_correction.json", ISBI_LANDMARK_NAMES)
        self.assertEqual(np.asarray(model["refined"]).shape, (19, 2))
        self.assertEqual(np.asarray(model["global"]).shape, (19, 2))
        self.assertLess(model["nested_cv"]["refined"]["corrected_minus_uncorrected_per_image"]["mean_mm"], 0)


class TestFitScript(unittest.TestCase):
    def test_recovers_a_constant_offset_and_reports_the_nested_gain(self):
        sys.path.insert(0, str(ROOT / "scripts"))
        import fit_bias_correction

        rng = np.random.default_rng(0)
        offset_px = np.array([[10.0, -5.0], [0.0, 8.0], [-4.0, 0.0]])  # (x, y) pixels at 0.1 mm
        with tempfile.TemporaryDirectory() as tmp:
            dirs = []
            for k in range(3):
                d = Path(tmp) / f"fold{k}"
                d.mkdir()
                with open(d / "predictions.csv", "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["image", "landmark", "name", "x_pred", "y_pred", "x_true", "y_true", "error_mm", "spread_mm"])
                    for i in range(8):
                        true = rng.uniform(200, 1800, (3, 2))
                        pred = true + offset_px + rng.normal(0, 3, (3, 2))
                        for l in range(3):
                            err = float(np.linalg.norm(pred[l] - true[l])) * 0.1
                            w.writerow([f"{k}_{i}.bmp", l + 1, NAMES[l], *[f"{v:.2f}" for v in (*pred[l], *true[l])], f"{err:.4f}", "1.0"])
                dirs.append(str(d))
            out = Path(tmp) / "bias.json"
            with contextlib.redirect_stdout(io.StringIO()):
                self.assertEqual(fit_bias_correction.main(["--refined", *dirs, "--out", str(out)]), 0)
            model = json.loads(out.read_text())
        self.assertEqual(model["landmark_names"], NAMES)
        np.testing.assert_allclose(model["refined"], offset_px * 0.1, atol=0.2)  # noise SD 0.3 mm, 24 images
        self.assertNotIn("global", model)
        gain = model["nested_cv"]["refined"]["corrected_minus_uncorrected_per_image"]
        self.assertLess(gain["mean_mm"], -0.3)
        np.testing.assert_allclose(fit_bias(np.ones((2, 3, 2)), np.zeros((2, 3, 2))), np.ones((3, 2)))


class TestAnnotationBias(unittest.TestCase):
    """bundle.bias.annotation_bias / fit_bias_correction.py --annotations: the offset of a training target (the
    mean of both doctors) from the ground truth (the senior doctor) over the training images, with no model."""

    def _isbi(self, root: Path, n: int = 10) -> np.ndarray:
        rng = np.random.default_rng(1)
        (root / "RawImage" / "TrainingData").mkdir(parents=True)
        offset_px = np.zeros((19, 2))
        offset_px[2] = [12.0, -6.0]  # the junior doctor places landmark 3 12 px right of and 6 px above the senior
        for i in range(1, n + 1):
            (root / "RawImage" / "TrainingData" / f"{i:03d}.bmp").write_bytes(b"")  # only listed, never read
            senior = rng.uniform(100, 1800, (19, 2))
            junior = senior + offset_px + rng.normal(0, 1, (19, 2))
            for doctor, xy in (("400_senior", senior), ("400_junior", junior)):
                folder = root / "AnnotationsByMD" / doctor
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{i:03d}.txt").write_text("".join(f"{x:.2f},{y:.2f}\n" for x, y in xy))
        return offset_px

    def test_mean_minus_senior_in_mm_over_the_training_images(self):
        from bundle.bias import annotation_bias

        sys.path.insert(0, str(ROOT / "scripts"))
        import fit_bias_correction

        with tempfile.TemporaryDirectory() as tmp:
            offset_px = self._isbi(Path(tmp))
            bias, n = annotation_bias(tmp)  # all 10 images, (mean - senior) at ISBI's 0.1 mm
            self.assertEqual(n, 10)
            np.testing.assert_allclose(bias, offset_px / 2 * 0.1, atol=0.05)
            self.assertEqual(annotation_bias(tmp, split="train", fold=1)[1], 8)  # fold 1's training part
            np.testing.assert_allclose(annotation_bias(tmp, "senior", "senior")[0], 0.0)
            out = Path(tmp) / "centre.json"
            with contextlib.redirect_stdout(io.StringIO()):
                self.assertEqual(fit_bias_correction.main(["--annotations", tmp, "--out", str(out)]), 0)
            correction = load_bias_correction(out, fit_bias_correction.ISBI_LANDMARK_NAMES)  # loads for the 19
            np.testing.assert_allclose(correction["global"], bias, atol=1e-4)
            self.assertNotIn("refined", correction)
            with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
                fit_bias_correction.main(["--annotations", tmp, "--global", "a", "b"])  # one source or the other


if __name__ == "__main__":
    unittest.main()


class TestConfigWiring(unittest.TestCase):
    def test_centre_correction_comes_before_the_refinement(self):
        """evaluate.yaml and inference.yaml: decode, move the crop centres by the global bias, refine, then the
        optional correction of the final positions (none by default)."""
        from monai.bundle import ConfigParser

        from bundle.framing import ReframeImaged
        from bundle.orientation import OrientImaged, RestoreOrientationd
        from bundle.refine import RefineLandmarksd
        from bundle.transforms import CoarsePixelCheckd, HeatmapToLandmarksd

        shipped = str(ROOT / "models" / "bias_correction.json")
        for files, post, extra in (
            ([ROOT / "configs" / "train.yaml", ROOT / "configs" / "evaluate.yaml"], "validate#postprocessing",
             {"refine_centre_correction": shipped}),  # evaluate.yaml: only when asked
            ([ROOT / "configs" / "inference.yaml"], "postprocessing", {}),  # inference.yaml: by default
        ):
            parser = ConfigParser()
            parser.read_config([str(f) for f in files])
            parser.update({"bundle_root": str(ROOT), "refine": True, "device": "cpu", **extra})
            chain = parser.get_parsed_content(post).transforms
            chain = [chain[0], *chain[1].transforms.transforms]  # after the decoding: UnlessErrord (test_configs)
            self.assertEqual([type(t) for t in chain],
                             [HeatmapToLandmarksd, OrientImaged, CorrectBiasd, RefineLandmarksd, CorrectBiasd, RestoreOrientationd,
                              CoarsePixelCheckd])
            self.assertIsInstance(chain[1].reframe, ReframeImaged)  # each reading framed first: tests/test_framing.py
            self.assertIsNotNone(chain[1].reframe.model)  # the shipped shape model carries the frame model
            chain = [chain[0], *chain[2:-2]]  # the image's orientation: tests/test_orientation.py
            self.assertEqual(chain[1].entry, "global")
            self.assertIsNotNone(chain[1].bias_yx)
            self.assertIsNone(chain[3].bias_yx)  # the final correction is off by default
        # the U-Net baseline's inference leaves its crops at its own estimates
        parser = ConfigParser()
        parser.read_config([str(ROOT / "configs" / "inference.yaml"), str(ROOT / "configs" / "inference_unet.yaml")])
        parser.update({"bundle_root": str(ROOT), "refine": True, "device": "cpu"})
        self.assertIsNone(parser.get_parsed_content("postprocessing").transforms[1].transforms.transforms[1].bias_yx)
