import unittest
import unittest.mock
from pathlib import Path

import torch

from bundle.metrics import LandmarkRadialErrorMetric, radial_errors_mm, summarize_errors


class TestMetrics(unittest.TestCase):
    def test_radial_error_by_hand(self):
        pred = torch.tensor([[[0.0, 0.0], [3.0, 4.0]]])
        true = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
        self.assertTrue(torch.allclose(radial_errors_mm(pred, true), torch.tensor([[1.0, 5.0]])))

    def test_summary_by_hand(self):
        # 2 images x 3 landmarks; errors chosen so every number can be worked out by hand
        e = torch.tensor([[1.0, 2.0, 3.0], [2.5, 4.0, 5.5]])
        s = summarize_errors(e, names=["a", "b", "c"])
        self.assertAlmostEqual(s["mre_mm"], 3.0)  # 18 / 6
        # population SD: deviations -2, -1, 0, -0.5, 1, 2.5 -> squares 4, 1, 0, 0.25, 1, 6.25 = 12.5 / 6
        self.assertAlmostEqual(s["sd_mm"], round((12.5 / 6) ** 0.5, 4))
        self.assertEqual(s["sdr"], {"2": 33.33, "2.5": 50.0, "3": 66.67, "4": 83.33})
        self.assertEqual(s["per_landmark"][1]["name"], "b")
        self.assertAlmostEqual(s["per_landmark"][1]["mre_mm"], 3.0)
        self.assertEqual(s["per_landmark"][2]["sdr"]["4"], 50.0)
        self.assertEqual((s["n_images"], s["n_landmarks"]), (2, 3))

    def test_cumulative_metric(self):
        mre, sdr = LandmarkRadialErrorMetric("mre"), LandmarkRadialErrorMetric("sdr", threshold_mm=2.0)
        for m in (mre, sdr):
            m(y_pred=torch.tensor([[[0.0, 0.0], [0.0, 3.0]]]), y=torch.zeros(1, 2, 2))
            m(y_pred=torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), y=torch.zeros(1, 2, 2))
        self.assertAlmostEqual(float(mre.aggregate()), 1.0)  # (0 + 3 + 1 + 0) / 4
        self.assertAlmostEqual(float(sdr.aggregate()), 75.0)
        self.assertEqual(tuple(mre.get_buffer().shape), (2, 2))

    def test_ill_arg(self):
        with self.assertRaises(ValueError):
            LandmarkRadialErrorMetric("median")
        with self.assertRaises(ValueError):
            radial_errors_mm(torch.zeros(3, 2), torch.zeros(4, 2))
        with self.assertRaises(ValueError):
            summarize_errors(torch.zeros(0, 3))


class TestCalibration(unittest.TestCase):
    def test_recovers_shared_slope_and_landmark_intercepts(self):
        from bundle.metrics import fit_uncertainty_calibration

        spread = torch.tensor([[1.0, 2.0, 3.0], [4.0, 6.0, 5.0], [2.0, 1.0, 7.0]])
        errors = 0.5 * spread + torch.tensor([0.25, 1.0, 2.0])
        cal = fit_uncertainty_calibration(spread, errors)
        self.assertEqual(cal["uncertainty_calibration"], [0.5, [0.25, 1.0, 2.0]])
        self.assertAlmostEqual(cal["pearson_r"], 1.0, places=4)
        self.assertAlmostEqual(cal["mean_abs_deviation_mm"], 0.0, places=4)
        # an inverse relation is clamped to a = 0: the intercepts become each landmark's mean error
        cal = fit_uncertainty_calibration(spread, 10.0 - spread)
        a, b = cal["uncertainty_calibration"]
        self.assertEqual(a, 0.0)
        self.assertEqual(b, [round(10.0 - 7.0 / 3, 4), 7.0, 5.0])
        with self.assertRaises(ValueError):
            fit_uncertainty_calibration(torch.ones(1, 3), torch.ones(1, 3))

    def test_parsed_from_a_list_or_an_evaluations_file(self):
        """Inference takes the calibration as [a, b] or as the calibration.json an evaluation wrote; per-landmark
        intercepts for another number of landmarks are refused with what to pass instead."""
        import json
        import tempfile

        from bundle.transforms import parse_calibration

        a, b = parse_calibration([0.5, [0.25, 1.0, 2.0]], 3)
        self.assertEqual(a, 0.5)
        torch.testing.assert_close(b, torch.tensor([0.25, 1.0, 2.0]))
        self.assertEqual(float(parse_calibration([1.0, 0.0], 7)[1]), 0.0)  # one intercept fits any count
        with self.assertRaisesRegex(ValueError, "3 per-landmark intercepts for 5 landmarks.*calibration.json"):
            parse_calibration([0.5, [0.25, 1.0, 2.0]], 5)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "calibration.json"
            path.write_text(json.dumps({"uncertainty_calibration": [0.5, [0.25, 1.0, 2.0]], "pearson_r": 0.5}))
            a, b = parse_calibration(str(path), 3)
            self.assertEqual(a, 0.5)
            torch.testing.assert_close(b, torch.tensor([0.25, 1.0, 2.0]))
            with self.assertRaises(FileNotFoundError):
                parse_calibration(str(Path(tmp) / "missing.json"))
            path.write_text(json.dumps({"a": 1}))
            with self.assertRaisesRegex(ValueError, "calibration.json: not a calibration.json"):
                parse_calibration(path)

    def test_pooled_over_evaluation_folders(self):
        """calibration_from_evaluations pools the images of several predictions.csv files before fitting."""
        import csv
        import tempfile
        from pathlib import Path

        from bundle.metrics import calibration_from_evaluations, fit_uncertainty_calibration

        spread = torch.tensor([[1.0, 2.0], [4.0, 6.0], [2.0, 1.0], [3.0, 5.0]])
        errors = 0.5 * spread + torch.tensor([0.25, 1.0])
        errors[1, 0] += 0.3  # not a perfect line: the fit has something to average
        with tempfile.TemporaryDirectory() as tmp:
            dirs = []
            for part, rows in enumerate([range(0, 3), range(3, 4)]):  # images 0-2 in one folder, image 3 in another
                d = Path(tmp) / f"fold{part}"
                d.mkdir()
                with open(d / "predictions.csv", "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["image", "landmark", "error_mm", "spread_mm"])
                    for i in rows:
                        for k in range(2):
                            w.writerow([f"{i:03d}.bmp", k + 1, float(errors[i, k]), float(spread[i, k])])
                dirs.append(d)
            self.assertEqual(calibration_from_evaluations(dirs), fit_uncertainty_calibration(spread, errors))
            import importlib.util
            import json

            spec = importlib.util.spec_from_file_location(
                "fit_calibration", Path(__file__).resolve().parents[1] / "scripts" / "fit_calibration.py")
            script = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(script)
            out = Path(tmp) / "cal.json"
            with unittest.mock.patch("builtins.print"):
                self.assertEqual(script.main([str(d) for d in dirs] + ["--json", str(out)]), 0)
            self.assertEqual(json.loads(out.read_text())["uncertainty_calibration"],
                             fit_uncertainty_calibration(spread, errors)["uncertainty_calibration"])
            # --check tests a calibration on evaluations: here its own data, nearly a straight line
            checked = Path(tmp) / "check.json"
            with unittest.mock.patch("builtins.print"):
                self.assertEqual(script.main([str(d) for d in dirs] + ["--check", str(out), "--floor_mm", "0.1",
                                                                        "--json", str(checked)]), 0)
            check = json.loads(checked.read_text())
            self.assertEqual(check["n"], 8)
            self.assertGreater(check["pearson_r"], 0.95)
            self.assertEqual(len(check["groups_expected_mm"]), 4)
            self.assertLess(check["groups_expected_mm"][0], check["groups_expected_mm"][3])
            with self.assertRaises(SystemExit):
                script.main([str(Path(tmp) / "missing")])
            with open(dirs[1] / "predictions.csv", "a", newline="") as f:
                csv.writer(f).writerow(["004.bmp", 1, 1.0, 1.0])  # an image without its second landmark
            with self.assertRaises(ValueError):
                calibration_from_evaluations(dirs)


class TestCompareEvals(unittest.TestCase):
    """scripts/compare_evals.py: paired per-image differences between two evaluations."""

    def _write(self, root, name, errors):
        import os

        d = os.path.join(root, name)
        os.makedirs(d)
        with open(os.path.join(d, "predictions.csv"), "w") as f:
            f.write("image,landmark,name,x_pred,y_pred,x_true,y_true,error_mm,spread_mm\n")
            for (image, lm), e in errors.items():
                f.write(f"{image},{lm},L{lm},0,0,0,0,{e},0.5\n")
        return d

    def test_paired_difference_and_standard_error(self):
        import importlib.util
        import tempfile
        from pathlib import Path

        spec = importlib.util.spec_from_file_location(
            "compare_evals", Path(__file__).resolve().parents[1] / "scripts" / "compare_evals.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        a = {(f"{i}.png", lm): 1.0 + 0.1 * i for i in range(4) for lm in (1, 2)}
        # B: image i better by 0.1 * (i + 1) on average (landmark 1 by twice that, landmark 2 not at all)
        b = {(f"{i}.png", 1): a[(f"{i}.png", 1)] - 0.2 * (i + 1) for i in range(4)}
        b.update({(f"{i}.png", 2): a[(f"{i}.png", 2)] for i in range(4)})
        with tempfile.TemporaryDirectory() as tmp:
            result = mod.compare(self._write(tmp, "a", a), self._write(tmp, "b", b))
        diffs = [-0.1 * (i + 1) for i in range(4)]  # per-image means of B - A
        mean = sum(diffs) / 4
        se = (sum((d - mean) ** 2 for d in diffs) / 3 / 4) ** 0.5
        self.assertAlmostEqual(result["b_minus_a_per_image"]["mean_diff_mm"], round(mean, 4))
        self.assertAlmostEqual(result["b_minus_a_per_image"]["se_mm"], round(se, 4))
        self.assertTrue(result["b_better"])
        self.assertFalse(result["a_better"])
        self.assertEqual(result["per_landmark"]["2"]["mean_diff_mm"], 0.0)
        self.assertAlmostEqual(result["per_landmark"]["1"]["mean_diff_mm"], -0.5)

    def test_pairs_of_folds_are_pooled(self):
        import importlib.util
        import tempfile
        from pathlib import Path

        spec = importlib.util.spec_from_file_location(
            "compare_evals", Path(__file__).resolve().parents[1] / "scripts" / "compare_evals.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        # two folds that reuse the same image names: they must stay apart (4 images, not 2)
        a = {(f"{i}.png", 1): 1.0 for i in range(2)}
        b0 = {(f"{i}.png", 1): 1.0 - 0.1 for i in range(2)}
        b1 = {(f"{i}.png", 1): 1.0 + 0.3 for i in range(2)}
        with tempfile.TemporaryDirectory() as tmp:
            dirs = [self._write(tmp, n, e) for n, e in (("a0", a), ("b0", b0), ("a1", a), ("b1", b1))]
            result = mod.compare(*dirs)
            with self.assertRaises(SystemExit):
                mod.compare(*dirs[:3])
        self.assertEqual(result["b_minus_a_per_image"]["n"], 4)
        self.assertAlmostEqual(result["b_minus_a_per_image"]["mean_diff_mm"], 0.1)
        self.assertEqual(result["a"], [dirs[0], dirs[2]])
        self.assertFalse(result["b_better"])


class TestBlendScript(unittest.TestCase):
    def test_leave_one_fold_out_blend(self):
        """scripts/cv_blend.py: where the global position is the better one the fitted weight goes to 0, where the
        refined one is it stays 1, and the held-out folds gain."""
        import csv
        import importlib.util
        import io
        import json
        import tempfile
        from contextlib import redirect_stdout

        spec = importlib.util.spec_from_file_location("cv_blend", Path(__file__).resolve().parents[1] / "scripts" / "cv_blend.py")
        cv_blend = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cv_blend)
        rng = torch.Generator().manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            refined, coarse = [], []
            for k in range(3):
                true = torch.rand(6, 2, 2, generator=rng) * 1000 + 100
                noise = torch.randn(2, 6, 2, 2, generator=rng)
                # landmark 1: refined within 1 px, global 20 px off; landmark 2 the other way round
                ref = true + torch.stack([noise[0, :, 0], 20 * noise[0, :, 1]], 1)
                glob = true + torch.stack([20 * noise[1, :, 0], noise[1, :, 1]], 1)
                for name, pred, dirs in (("r", ref, refined), ("g", glob, coarse)):
                    d = Path(tmp) / f"{name}{k}"
                    d.mkdir()
                    with open(d / "predictions.csv", "w", newline="") as f:
                        w = csv.writer(f)
                        w.writerow(["image", "landmark", "name", "x_pred", "y_pred", "x_true", "y_true", "error_mm", "spread_mm"])
                        for i in range(6):
                            for l in range(2):
                                err = float((pred[i, l] - true[i, l]).norm()) * 0.1
                                w.writerow([f"{k}_{i}.png", l + 1, f"L{l + 1}", f"{pred[i, l, 0]:.2f}", f"{pred[i, l, 1]:.2f}",
                                            f"{true[i, l, 0]:.2f}", f"{true[i, l, 1]:.2f}", f"{err:.4f}", "1.0"])
                    dirs.append(str(d))
            out = io.StringIO()
            with redirect_stdout(out):
                self.assertEqual(cv_blend.main(["--refined", *refined, "--global", *coarse]), 0)
            result = json.loads(out.getvalue())
        self.assertEqual(result["n_images"], 18)
        self.assertEqual(result["weights_all_folds"], [1.0, 0.0])
        self.assertLess(result["blend_minus_refined_per_image"]["mean_mm"], -0.3)
        table = result["refined_error_by_global_error"]  # every landmark in one bin of the global error
        self.assertAlmostEqual(sum(b["share_pct"] for b in table), 100.0, delta=0.3)
        self.assertTrue(any(b["global_error_mm"][0] >= 1.0 for b in table))


class TestPredictionsFile(unittest.TestCase):
    """LandmarkEvaluationSaver's predictions.csv carries each image's pixel spacing, and read_prediction_positions
    turns its positions into mm with it (older files without the columns: one spacing inferred from error_mm)."""

    def _evaluate(self, out, images):
        import logging
        from types import SimpleNamespace

        from bundle.metrics import LandmarkEvaluationSaver

        saver = LandmarkEvaluationSaver(str(out), names=["A", "B"])
        engine = SimpleNamespace(state=SimpleNamespace(), logger=logging.getLogger("test"))
        saver._reset(engine)
        for name, pred_px, true_px, spacing in images:  # (y, x) pixels, (y, x) mm per pixel
            sp = torch.tensor(spacing)
            engine.state.output = {"pred_mm": torch.tensor(pred_px) * sp, "true_mm": torch.tensor(true_px) * sp}
            engine.state.batch = {"image_name": name, "spacing": sp}
            saver._collect(engine)
        saver._write(engine)

    def test_spacing_columns_give_positions_in_mm(self):
        import csv
        import tempfile

        import numpy as np

        from bundle.metrics import read_prediction_positions

        images = [("a.png", [[10.0, 20.0], [30.0, 40.0]], [[12.0, 20.0], [30.0, 45.0]], [0.2, 0.1]),
                  ("b.png", [[5.0, 5.0], [6.0, 6.0]], [[5.0, 8.0], [6.0, 6.0]], [0.3, 0.3])]
        with tempfile.TemporaryDirectory() as tmp:
            self._evaluate(tmp, images)
            with open(Path(tmp) / "predictions.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            self.assertEqual([(r["spacing_x_mm"], r["spacing_y_mm"]) for r in rows],
                             [("0.1", "0.2"), ("0.1", "0.2"), ("0.3", "0.3"), ("0.3", "0.3")])
            p = read_prediction_positions(tmp)
            self.assertEqual(p["images"], ["a.png", "b.png"])
            for k, (_, pred, true, sp) in enumerate(images):  # back to (x, y) mm exactly as given
                np.testing.assert_allclose(p["pred_xy"][k] * p["spacing_mm"][k], (np.array(pred) * sp)[:, ::-1], atol=1e-3)
                np.testing.assert_allclose(p["true_xy"][k] * p["spacing_mm"][k], (np.array(true) * sp)[:, ::-1], atol=1e-3)
            # a file of 0.5.1 or earlier, without the columns: one spacing, inferred from the errors
            with open(Path(tmp) / "predictions.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["image", "landmark", "name", "x_pred", "y_pred", "x_true", "y_true", "error_mm", "spread_mm"])
                w.writerow(["a.png", 1, "A", 0, 0, 30, 40, 12.5, ""])  # 50 px, 12.5 mm
                w.writerow(["a.png", 2, "B", 0, 0, 0, 0, 0.0, ""])
            self.assertAlmostEqual(float(read_prediction_positions(tmp)["spacing_mm"]), 0.25)


if __name__ == "__main__":
    unittest.main()
