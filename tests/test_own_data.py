"""A user's own data set through the whole bundle: a folder of images with a CSV of 5 landmarks beside each
(configs/folder_data.yaml), trained, evaluated, given its own shape model and calibration, and run by inference,
with the shipped ISBI-specific defaults (19-landmark shape model and calibrations) kept out of the way."""

import csv
import json
import shutil
import sys
import tempfile
import unittest
from pathlib import Path

from monai.bundle import ConfigWorkflow

from bundle.io import read_isbi_landmarks
from bundle.synthetic import generate_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
sys.path.insert(0, str(ROOT / "scripts"))
import fit_shape_model  # noqa: E402

KEEP = [0, 1, 6, 7, 9]  # Sella, Nasion, Pogonion, Menton, Gonion of the synthetic annotations
NAMES = ["S", "N", "Pog", "Me", "Go"]
OWN = [str(CONFIGS / "train.yaml"), str(CONFIGS / "folder_data.yaml")]


def error_chain(e: BaseException) -> str:
    """The messages of an exception and its causes (MONAI wraps a component's error in its own)."""
    out = []
    while e is not None:
        out.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(out)


def own_folder(src: Path, dst: Path) -> None:
    """Images of an ISBI-layout folder copied to ``dst``, each with NAME.csv holding the KEEP landmarks (x, y)."""
    dst.mkdir(parents=True)
    ann = src.parents[1] / "AnnotationsByMD" / "400_senior"
    for p in sorted(src.iterdir()):
        stem = p.name.split(".")[0]
        shutil.copy(p, dst / p.name)
        yx = read_isbi_landmarks(ann / f"{stem}.txt")[KEEP]
        with open(dst / f"{stem}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["x", "y"])
            w.writerows([[f"{x:.1f}", f"{y:.1f}"] for y, x in yx])


class TestOwnDataWorkflow(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        synth = generate_synthetic_dataset(cls.tmp / "synthetic", n_train=10, n_test=3)
        cls.spacing = json.loads((synth / "dataset.json").read_text())["pixel_spacing_mm"]
        cls.train_dir, cls.test_dir = cls.tmp / "mine" / "train", cls.tmp / "mine" / "test"
        own_folder(synth / "RawImage" / "TrainingData", cls.train_dir)
        own_folder(synth / "RawImage" / "Test1Data", cls.test_dir)
        cls.runs = cls.tmp / "runs"
        cls.common = {
            "bundle_root": str(ROOT), "dataset_dir": str(cls.train_dir), "output_dir": str(cls.runs),
            "num_landmarks": len(NAMES), "landmark_names": NAMES, "pixel_spacing_mm": cls.spacing,
            "image_size": [64, 48], "heatmap_sigma": 1.5, "batch_size": 2, "num_workers": 0,
        }
        train = ConfigWorkflow(workflow_type="train", config_file=OWN, logging_file=False, max_epochs=2,
                               val_interval=1, **cls.common)
        train.initialize()
        train.run()
        train.finalize()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def evaluate(self, eval_dir: Path, **overrides) -> dict:
        wf = ConfigWorkflow(workflow_type="eval", config_file=OWN + [str(CONFIGS / "evaluate.yaml")], logging_file=False,
                            **{**self.common, "eval_dir": str(eval_dir), **overrides})
        wf.initialize()
        wf.run()
        wf.finalize()
        return json.loads((eval_dir / "metrics.json").read_text())

    def test_1_training_used_the_folder(self):
        self.assertTrue((self.runs / "model.pt").is_file())
        curve = json.loads((self.runs / "learning_curve.json").read_text())
        self.assertEqual(len(curve), 2)

    def test_2_evaluation_on_the_held_out_part_and_on_a_test_folder(self):
        val = self.evaluate(self.tmp / "eval_val", eval_split="val")
        self.assertEqual(val["n_images"], 2)  # 20% of 10
        self.assertEqual([r["name"] for r in val["per_landmark"]], NAMES)
        test = self.evaluate(self.tmp / "eval_test", eval_split="test", dataset_dir=str(self.test_dir))
        self.assertEqual(test["n_images"], 3)
        with open(self.tmp / "eval_test" / "predictions.csv") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), 3 * len(NAMES))
        self.assertEqual({r["name"] for r in rows}, set(NAMES))
        self.assertTrue((self.tmp / "eval_test" / "calibration.json").is_file())

    def test_3_own_shape_model_and_the_bundled_one_refused(self):
        out = self.tmp / "shape.json"
        self.assertEqual(fit_shape_model.main([
            "--dataset_dir", str(self.train_dir), "--landmark_suffix", ".csv", "--n_landmarks", str(len(NAMES)),
            "--landmark_names", ",".join(NAMES), "--pixel_spacing_mm", str(self.spacing), "--split", "train",
            "--out", str(out)]), 0)
        model = json.loads(out.read_text())
        self.assertEqual(model["landmark_names"], NAMES)
        self.assertEqual(model["n_shapes"], 8)  # the training part only
        self.assertEqual(len(model["mean"]), len(NAMES))
        # the frame model of --reframe, from the same images: their size in mm, the landmarks inside them
        from PIL import Image

        with Image.open(sorted(p for p in self.train_dir.iterdir() if p.suffix != ".csv")[0]) as im:
            size_mm = [im.height * self.spacing, im.width * self.spacing]
        self.assertEqual(len(model["frame_mean_mm"]), len(NAMES))
        self.assertEqual(model["frame_size_mm"], [round(v, 4) for v in size_mm])  # the drawn images share one size
        self.assertTrue(all(0 < y < size_mm[0] and 0 < x < size_mm[1] for y, x in model["frame_mean_mm"]))
        self.assertEqual(model["frame_range"]["aspect"], [1.0, 1.0])
        lo, hi = model["frame_range"]["scale_y"]
        self.assertTrue(0.5 < lo <= 1.0 <= hi < 2.0, (lo, hi))
        metrics = self.evaluate(self.tmp / "eval_shape", eval_split="val", shape_model=str(out))
        self.assertEqual(metrics["n_images"], 2)
        # named explicitly, the 19-landmark ISBI model is refused before any image is read, saying what to do
        with self.assertRaises(Exception) as ctx:
            self.evaluate(self.tmp / "eval_isbi_shape", eval_split="val", shape_model=str(ROOT / "models" / "shape_model.json"))
        self.assertRegex(error_chain(ctx.exception), "shape_model.json: the shape model has 19 landmarks, this run 5.*--shape_model null")
        self.assertFalse((self.tmp / "eval_isbi_shape" / "metrics.json").exists())

    def test_4_inference_with_own_weights_shape_model_and_calibration(self):
        if not (self.tmp / "eval_test" / "calibration.json").is_file():
            self.evaluate(self.tmp / "eval_test", eval_split="test", dataset_dir=str(self.test_dir))
        out = self.tmp / "out"
        infer = {
            "bundle_root": str(ROOT), "input_dir": str(self.test_dir), "output_dir": str(out),
            "ckpt_path": str(self.runs / "model.pt"), "num_landmarks": len(NAMES), "landmark_names": NAMES,
            "pixel_spacing_mm": self.spacing, "image_size": [64, 48], "num_workers": 0, "refine": False,
            "network_def#channels": [16, 32, 64, 128, 256],
        }
        config = [str(CONFIGS / "inference.yaml"), str(CONFIGS / "inference_unet.yaml")]
        # the shipped weights' 19 per-landmark intercepts cannot describe 5 landmarks: refused, saying what to pass
        with self.assertRaises(Exception) as ctx:
            wf = ConfigWorkflow(workflow_type="infer", config_file=config, logging_file=False, **infer)
            wf.initialize()
            wf.run()
        self.assertRegex(error_chain(ctx.exception), "19 per-landmark intercepts for 5 landmarks.*calibration.json")
        self.assertFalse((out / "landmarks.csv").exists())
        wf = ConfigWorkflow(workflow_type="infer", config_file=config, logging_file=False, **infer,
                            uncertainty_calibration=str(self.tmp / "eval_test" / "calibration.json"))
        wf.initialize()
        wf.run()
        wf.finalize()
        with open(out / "landmarks.csv") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), 3 * len(NAMES))
        self.assertEqual([r["name"] for r in rows[: len(NAMES)]], NAMES)
        self.assertTrue(all(float(r["uncertainty_mm"]) > 0 for r in rows))
        self.assertFalse((out / "errors.csv").exists() and (out / "errors.csv").read_text().count("\n") > 1)


if __name__ == "__main__":
    unittest.main()
