"""The bundle's train -> evaluate -> inference -> export workflow on a tiny synthetic set, as model-zoo tests do."""

import csv
import json
import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata

from tests.helpers import evaluated_positions

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# inference.yaml defaults to the shipped MAHT-Net; the tiny run here trains train.yaml's U-Net baseline
UNET_INFERENCE = [str(CONFIGS / "inference.yaml"), str(CONFIGS / "inference_unet.yaml")]
# the test's U-Net as trained; and images read as they are (a 2-epoch model is unsure of everything, so "auto" could
# read any image mirrored or inverted: tests/test_orientation.py tests that)
UNET_AS_TRAINED = {"network_def#channels": [16, 32, 64, 128, 256], "face": "right", "bone": "bright"}


class TestBundleWorkflow(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        cls.data = cls.tmp / "synthetic"
        cls.runs = cls.tmp / "runs"
        cls.common = {
            "bundle_root": str(ROOT),
            "synthetic_dir": str(cls.data),
            "dataset_dir": str(cls.data),
            "synthetic_n_train": 10,
            "synthetic_n_test": 3,
            "output_dir": str(cls.runs),
            "image_size": [64, 48],
            "heatmap_sigma": 1.5,
            "batch_size": 2,
            "num_workers": 0,
            "face": "right",  # a 2-epoch model is unsure of everything: "auto" could read any image mirrored
            "bone": "bright",  # ... or inverted
        }
        train = ConfigWorkflow(
            workflow_type="train", config_file=str(CONFIGS / "train.yaml"), logging_file=False,
            meta_file=str(CONFIGS / "metadata.json"), max_epochs=2, val_interval=1, **cls.common,
        )
        train.initialize()
        cls.train_ok = train.check_properties()
        train.run()
        train.finalize()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_1_training_wrote_best_model(self):
        self.assertFalse(self.train_ok, f"missing bundle properties: {self.train_ok}")
        self.assertTrue((self.runs / "model.pt").is_file())
        self.assertTrue((self.runs / "checkpoint_last.pt").is_file())
        curve = json.loads((self.runs / "learning_curve.json").read_text())
        self.assertEqual([p["epoch"] for p in curve], [1, 2])
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        tags = {"images": set(), "scalars": set()}
        for f in self.runs.glob("events.out.tfevents*"):
            acc = EventAccumulator(str(f))
            acc.Reload()
            for kind in tags:
                tags[kind] |= set(acc.Tags()[kind])
        self.assertIn("val_overlay", tags["images"])
        self.assertIn("val_mre", tags["scalars"])
        self.assertTrue(any(t.startswith("grad_norm") for t in tags["scalars"]), tags["scalars"])
        self.assertTrue(any(t.startswith("lr") for t in tags["scalars"]), tags["scalars"])

    def test_2_evaluate_writes_metrics(self):
        wf = ConfigWorkflow(
            workflow_type="eval", config_file=[str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")],
            logging_file=False, meta_file=str(CONFIGS / "metadata.json"), **self.common,
        )
        wf.initialize()
        wf.run()
        wf.finalize()
        out = self.runs / "eval_test"
        spacing_mm = json.loads((self.data / "dataset.json").read_text())["pixel_spacing_mm"]
        metrics = json.loads((out / "metrics.json").read_text())
        self.assertEqual(metrics["n_images"], 3)
        self.assertEqual(len(metrics["per_landmark"]), 19)
        self.assertEqual(set(metrics["sdr"]), {"2", "2.5", "3", "4"})
        self.assertGreater(metrics["mre_mm"], 0.0)
        with open(out / "per_image_errors.csv") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), 3)
        mean_of_rows = sum(float(r["mean_mm"]) for r in rows) / 3
        self.assertAlmostEqual(mean_of_rows, metrics["mre_mm"], places=3)
        # the optional bias correction moves every prediction by its landmark's offset ("global": no refinement here)
        biased = self.tmp / "eval_biased"
        wf = ConfigWorkflow(
            workflow_type="eval", config_file=[str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")],
            logging_file=False, meta_file=str(CONFIGS / "metadata.json"), **self.common, eval_dir=str(biased),
            eval_pictures=False, bias_correction=str(ROOT / "models" / "bias_correction.json"),
        )
        wf.initialize()
        wf.run()
        wf.finalize()
        bias = json.loads((ROOT / "models" / "bias_correction.json").read_text())["global"]
        with open(out / "predictions.csv") as f, open(biased / "predictions.csv") as g:
            for a, b in zip(csv.DictReader(f), csv.DictReader(g)):
                dx_mm, dy_mm = bias[int(a["landmark"]) - 1]
                self.assertAlmostEqual((float(a["x_pred"]) - float(b["x_pred"])) * spacing_mm, dx_mm, places=1)
                self.assertAlmostEqual((float(a["y_pred"]) - float(b["y_pred"])) * spacing_mm, dy_mm, places=1)
        self.assertFalse((biased / "errors_by_landmark.png").exists())
        # pictures to look at: the per-landmark chart, and the worst images (all 3 here) ranked by their mean error
        from PIL import Image

        with Image.open(out / "errors_by_landmark.png") as chart:
            self.assertGreater(chart.height, 19 * 20)
        worst = sorted(p.name for p in (out / "worst_cases").glob("*.png"))
        ranked = [r["image"].split(".")[0] for r in sorted(rows, key=lambda r: -float(r["mean_mm"]))]
        self.assertEqual(worst, [f"{i:02d}_{stem}.png" for i, stem in enumerate(ranked, start=1)])

    def test_3_inference_contract(self):
        inp = self.tmp / "in"
        inp.mkdir()
        for p in sorted((self.data / "RawImage" / "Test1Data").iterdir())[:2]:
            shutil.copy(p, inp / p.name)
        (inp / "corrupt.jpg").write_bytes(b"not an image")
        out = self.tmp / "out"
        wf = ConfigWorkflow(
            workflow_type="infer", config_file=UNET_INFERENCE, logging_file=False,
            meta_file=str(CONFIGS / "metadata.json"), bundle_root=str(ROOT), input_dir=str(inp), output_dir=str(out),
            ckpt_path=str(self.runs / "model.pt"), image_size=[64, 48], num_workers=0, **UNET_AS_TRAINED,
        )
        wf.initialize()
        wf.run()
        wf.finalize()
        with open(out / "landmarks.csv") as f:
            reader = csv.DictReader(f)
            self.assertEqual(reader.fieldnames, ["image", "landmark", "name", "x", "y", "x_mm", "y_mm", "uncertainty_mm"])
            rows = list(reader)
        self.assertEqual(len(rows), 2 * 19)
        self.assertEqual(rows[0]["name"], "Sella")
        spacing = json.loads((self.data / "dataset.json").read_text())["pixel_spacing_mm"]
        self.assertAlmostEqual(float(rows[0]["x_mm"]), float(rows[0]["x"]) * 0.1, places=2)  # inference spacing default
        self.assertGreater(spacing, 0)
        for name in sorted(p.name for p in inp.iterdir() if p.name != "corrupt.jpg"):
            stem = name.split(".")[0]
            mrk = json.loads((out / f"{stem}.mrk.json").read_text())
            self.assertEqual(len(mrk["markups"][0]["controlPoints"]), 19)
            # a plain picture: Slicer shows pixel (x, y) at LPS (x, y, 0)
            positions = [p["position"] for p in mrk["markups"][0]["controlPoints"]]
            listed = [[float(r["x"]), float(r["y"]), 0.0] for r in rows if r["image"] == name]
            self.assertTrue(np.allclose(positions, listed, atol=0.01))
            self.assertTrue((out / f"{stem}_overlay.png").stat().st_size > 1000)
        with open(out / "errors.csv") as f:
            errors = list(csv.DictReader(f))
        self.assertEqual([e["image"] for e in errors], ["corrupt.jpg"])
        self.assertIn("cannot read image", errors[0]["error"])
        with open(out / "measurements.csv") as f:  # the cephalometric analysis of each image read
            reader = csv.DictReader(f)
            self.assertEqual(reader.fieldnames, ["image", "measurement", "value", "unit", "type", "meaning"])
            measured = list(reader)
        self.assertEqual([r["measurement"] for r in measured[:8]], ["ANB", "SNB", "SNA", "ODI", "APDI", "FHI", "FMA", "MW"])
        self.assertEqual(sorted({r["image"] for r in measured}), sorted(p.name for p in inp.iterdir() if p.name != "corrupt.jpg"))
        self.assertEqual(len(measured), 2 * 8)
        from bundle.analysis import classify, measure

        first = [r for r in rows if r["image"] == measured[0]["image"]]
        values = measure(np.array([[float(r["x_mm"]), float(r["y_mm"])] for r in first]))  # from landmarks.csv
        for r in measured[:8]:  # landmarks.csv rounds to 1 um; an untrained model's landmarks may sit close together
            expected = float(values[r["measurement"]])
            self.assertAlmostEqual(float(r["value"]), expected, delta=0.01 * max(1.0, abs(expected)))
            self.assertEqual(int(r["type"]), classify(r["measurement"], float(r["value"]))[0])
        report = (out / "report.html").read_text()  # one page to review the batch
        for name in sorted(p.name for p in inp.iterdir() if p.name != "corrupt.jpg"):
            self.assertIn(f"<a href='{name.split('.')[0]}_overlay.png'>", report)
        self.assertIn("<td>corrupt.jpg</td>", report)

        # a batch killed after its first image, run again with --resume true: the finished image stays as it was,
        # the one cut off (its overlay not yet written) and the unreadable one are done again
        good = sorted(p.name for p in inp.iterdir() if p.name != "corrupt.jpg")
        before = {r["image"]: r for r in rows if r["landmark"] == "1"}
        (out / f"{good[1].split('.')[0]}_overlay.png").unlink()
        with open(out / "landmarks.csv", "a") as f:
            f.write(f"{good[1]},1,Sella,1.0")  # a row cut short by the kill
        mrk_first = (out / f"{good[0].split('.')[0]}.mrk.json").stat().st_mtime_ns
        wf = ConfigWorkflow(
            workflow_type="infer", config_file=UNET_INFERENCE, logging_file=False,
            meta_file=str(CONFIGS / "metadata.json"), bundle_root=str(ROOT), input_dir=str(inp), output_dir=str(out),
            ckpt_path=str(self.runs / "model.pt"), image_size=[64, 48], num_workers=0, resume=True, **UNET_AS_TRAINED,
        )
        wf.initialize()
        self.assertEqual(sorted(Path(i["image"]).name for i in wf.parser.get_parsed_content("datalist")), sorted(["corrupt.jpg", good[1]]))
        wf.run()
        wf.finalize()
        with open(out / "landmarks.csv") as f:
            again = list(csv.DictReader(f))
        self.assertEqual(len(again), 2 * 19)
        self.assertEqual({r["image"]: r for r in again if r["landmark"] == "1"}, before)
        self.assertEqual((out / f"{good[0].split('.')[0]}.mrk.json").stat().st_mtime_ns, mrk_first)  # not redone
        self.assertTrue((out / f"{good[1].split('.')[0]}_overlay.png").is_file())
        with open(out / "measurements.csv") as f:
            self.assertEqual(len(list(csv.DictReader(f))), 2 * 8)
        with open(out / "errors.csv") as f:
            self.assertEqual([e["image"] for e in csv.DictReader(f)], ["corrupt.jpg"])
        report = (out / "report.html").read_text()
        self.assertIn("2 image(s) read, 1 could not be read", report)
        for name in good:
            self.assertIn(f"<h2>{name}</h2>", report)

    def test_3b_inference_on_a_folder_tree(self):
        """--recursive true on a PACS-like tree (the same file name in two series) with the output folder inside the
        input folder: each image is named by its path, its outputs go to the same subfolders of the output folder,
        report.html links them there, and nothing of the output folder is read as input; --resume finds them."""
        inp = self.tmp / "tree"
        images = sorted((self.data / "RawImage" / "Test1Data").iterdir())[:2]
        for series, image in zip(("p1/s1", "p2/s1"), images):
            (inp / series).mkdir(parents=True)
            shutil.copy(image, inp / series / "ceph.png")
        out = inp / "out"
        common = dict(workflow_type="infer", config_file=UNET_INFERENCE, logging_file=False,
                      meta_file=str(CONFIGS / "metadata.json"), bundle_root=str(ROOT), input_dir=str(inp),
                      output_dir=str(out), ckpt_path=str(self.runs / "model.pt"), image_size=[64, 48], num_workers=0,
                      recursive="true", **UNET_AS_TRAINED)
        wf = ConfigWorkflow(**common)
        wf.initialize()
        wf.run()
        wf.finalize()
        with open(out / "landmarks.csv") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(sorted({r["image"] for r in rows}), ["p1/s1/ceph.png", "p2/s1/ceph.png"])
        report = (out / "report.html").read_text()
        for series in ("p1/s1", "p2/s1"):
            self.assertTrue((out / series / "ceph.mrk.json").is_file())
            self.assertTrue((out / series / "ceph_overlay.png").is_file())
            self.assertIn(f"<a href='{series}/ceph_overlay.png'>", report)
        wf = ConfigWorkflow(**common, resume=True)  # the overlays now in out/ are not inputs, and both are done
        wf.initialize()
        self.assertEqual(wf.parser.get_parsed_content("datalist"), [])

    def test_5_resume_continues_the_run(self):
        ckpt = torch.load(self.runs / "checkpoint_last.pt", map_location="cpu", weights_only=True)
        self.assertEqual(ckpt["epoch"], 2)
        best_before = ckpt["validation"]["best_metric"]
        self.assertIn("decided_epochs", ckpt["time_budget"])  # the TimeBudget handler (train#handlers#2) is saved
        wf = ConfigWorkflow(
            workflow_type="train", config_file=str(CONFIGS / "train.yaml"), logging_file=False,
            meta_file=str(CONFIGS / "metadata.json"), max_epochs=3, val_interval=1, resume=True, **self.common,
        )
        wf.initialize()
        wf.run()
        state = wf.parser.get_parsed_content("validate#evaluator").state
        wf.finalize()
        self.assertEqual(torch.load(self.runs / "checkpoint_last.pt", weights_only=True)["epoch"], 3)
        self.assertLessEqual(state.best_metric, best_before)  # the restored best is kept unless epoch 3 beats it
        curve = json.loads((self.runs / "learning_curve.json").read_text())
        self.assertEqual([p["epoch"] for p in curve], [1, 2, 3])

    def test_7_refit_trains_on_every_image_and_keeps_the_last_epoch(self):
        """configs/refit.yaml: all training images, one validation after the last epoch, model.pt = the last epoch."""
        refit_runs = self.tmp / "refit_runs"
        wf = ConfigWorkflow(
            workflow_type="train", config_file=[str(CONFIGS / "train.yaml"), str(CONFIGS / "refit.yaml")],
            logging_file=False, meta_file=str(CONFIGS / "metadata.json"), max_epochs=3,
            **{**self.common, "output_dir": str(refit_runs)},
        )
        wf.initialize()
        n_train = len(wf.parser.get_parsed_content("train#datalist"))
        n_val = len(wf.parser.get_parsed_content("validate#datalist"))
        wf.run()
        wf.finalize()
        self.assertEqual(n_train, 10)  # every synthetic training image, the validation ones included
        self.assertEqual(n_val, 2)
        curve = json.loads((refit_runs / "learning_curve.json").read_text())
        self.assertEqual([p["epoch"] for p in curve], [3])  # train.yaml alone validates at epochs 2 and 3
        last = torch.load(refit_runs / "checkpoint_last.pt", map_location="cpu", weights_only=True)["model"]
        model = torch.load(refit_runs / "model.pt", map_location="cpu", weights_only=True)
        self.assertEqual(set(model), set(last))
        for k in model:
            self.assertTrue(torch.equal(model[k], last[k]), k)

    def test_6_coarse_to_fine(self):
        """A refinement network trained on crops (configs/refine.yaml) plugs into evaluation and inference."""
        refine_runs = self.tmp / "refine_runs"
        crops = {"refine_spacing_mm": 0.5, "crop_size": [32, 32]}
        wf = ConfigWorkflow(
            workflow_type="train", config_file=[str(CONFIGS / "train.yaml"), str(CONFIGS / "refine.yaml")],
            logging_file=False, meta_file=str(CONFIGS / "metadata.json"), max_epochs=2, val_interval=1,
            crop_offset_sd=3.0, crop_max_offset=10.0, amp="none", **{**self.common, "output_dir": str(refine_runs)}, **crops,
        )
        wf.initialize()
        wf.run()
        wf.finalize()
        curve = json.loads((refine_runs / "learning_curve.json").read_text())
        self.assertEqual([p["epoch"] for p in curve], [1, 2])
        refine_ckpt = str(refine_runs / "model.pt")
        ev = ConfigWorkflow(
            workflow_type="eval", config_file=[str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")],
            logging_file=False, meta_file=str(CONFIGS / "metadata.json"), refine=True, refine_ckpt_path=refine_ckpt,
            eval_dir=str(self.tmp / "eval_refined"), **self.common, **crops,
        )
        ev.initialize()
        ev.run()
        ev.finalize()
        metrics = json.loads((self.tmp / "eval_refined" / "metrics.json").read_text())
        self.assertEqual(metrics["n_images"], 3)
        # an ensemble of refinement checkpoints (here the same one twice) averages the crops' heatmaps: the same
        # landmarks as the single network, loaded without refine_ckpt_path
        ev = ConfigWorkflow(
            workflow_type="eval", config_file=[str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")],
            logging_file=False, meta_file=str(CONFIGS / "metadata.json"), refine=True,
            refine_ckpt_path=str(self.tmp / "missing.pt"), refine_ensemble=[refine_ckpt, refine_ckpt],
            eval_dir=str(self.tmp / "eval_refined_ens"), **self.common, **crops,
        )
        ev.initialize()
        ev.run()
        ev.finalize()
        ensembled = evaluated_positions(self.tmp / "eval_refined_ens")
        single = evaluated_positions(self.tmp / "eval_refined")
        self.assertEqual(ensembled.keys(), single.keys())
        for k, (x, y) in single.items():
            self.assertAlmostEqual(ensembled[k][0], x, delta=0.01)
            self.assertAlmostEqual(ensembled[k][1], y, delta=0.01)
        # runtime: openvino (bundle/runtime.py) runs both networks in OpenVINO after the weights are loaded: the same
        # landmarks as PyTorch's, the CSV's 0.01-pixel rounding apart (but for near-ties of a heatmap's maximum:
        # measured, none here)
        ev = ConfigWorkflow(
            workflow_type="eval", config_file=[str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")],
            logging_file=False, meta_file=str(CONFIGS / "metadata.json"), refine=True, refine_ckpt_path=refine_ckpt,
            runtime="openvino", amp="none", eval_dir=str(self.tmp / "eval_refined_openvino"), **self.common, **crops,
        )
        ev.initialize()
        ev.run()
        from bundle.runtime import OpenVINOForward

        self.assertIsInstance(ev.parser.get_parsed_content("network").forward, OpenVINOForward)
        self.assertIsInstance(ev.parser.get_parsed_content("refine_network").backbone.forward, OpenVINOForward)
        ev.finalize()
        openvino = evaluated_positions(self.tmp / "eval_refined_openvino")
        self.assertEqual(openvino.keys(), single.keys())
        for k, (x, y) in single.items():
            self.assertAlmostEqual(openvino[k][0], x, delta=0.011)
            self.assertAlmostEqual(openvino[k][1], y, delta=0.011)
        out = self.tmp / "out_refined"
        wf = ConfigWorkflow(
            workflow_type="infer", config_file=UNET_INFERENCE, logging_file=False,
            meta_file=str(CONFIGS / "metadata.json"), bundle_root=str(ROOT),
            input_dir=str(self.data / "RawImage" / "Test1Data"), output_dir=str(out), ckpt_path=str(self.runs / "model.pt"),
            image_size=[64, 48], num_workers=0, refine=True, refine_ckpt_path=refine_ckpt, **UNET_AS_TRAINED, **crops,
            amp="none",  # the precision evaluation ran in, so both give the same landmarks
            pixel_spacing_mm=json.loads((self.data / "dataset.json").read_text())["pixel_spacing_mm"],  # crops in mm
        )
        wf.initialize()
        wf.run()
        wf.finalize()
        with open(out / "landmarks.csv") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), 3 * 19)
        evaluated = evaluated_positions(self.tmp / "eval_refined")
        for r in rows:  # inference and evaluation run the same two passes (the U-Net's crops at its own estimates)
            x, y = evaluated[(r["image"], r["landmark"])]
            self.assertAlmostEqual(float(r["x"]), x, delta=0.05)
            self.assertAlmostEqual(float(r["y"]), y, delta=0.05)

    def test_4_metadata_and_torchscript_export(self):
        verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(CONFIGS / "schema" / "metadata_schema.json"))
        ts_path = self.tmp / "model.ts"
        ckpt_export(
            net_id="network_def", filepath=str(ts_path), ckpt_file=str(self.runs / "model.pt"),
            meta_file=str(CONFIGS / "metadata.json"), config_file=UNET_INFERENCE,
            bundle_root=str(ROOT), image_size=[64, 48], **UNET_AS_TRAINED,
        )
        from monai.bundle import ConfigParser

        from bundle.heatmaps import heatmap_to_landmarks

        parser = ConfigParser()
        parser.read_config(UNET_INFERENCE)
        parser.update(UNET_AS_TRAINED)
        net = parser.get_parsed_content("network_def")
        net.load_state_dict(torch.load(self.runs / "model.pt", map_location="cpu"))
        net.eval()
        ts = torch.jit.load(str(ts_path))
        x = torch.rand(2, 1, 64, 48)
        with torch.no_grad():
            a, _ = heatmap_to_landmarks(net(x), log_scale=True)
            b, _ = heatmap_to_landmarks(ts(x), log_scale=True)
        self.assertLess(float((a - b).abs().max()), 1e-3)
        # MONAI's onnx_export, with the options README gives (the TorchScript-based exporter, which needs onnx but not
        # onnxscript): an ONNX file that OpenVINO reads and runs to the same landmarks
        from monai.bundle import onnx_export
        import openvino

        onnx_path = self.tmp / "model.onnx"
        onnx_export(
            net_id="network_def", filepath=str(onnx_path), ckpt_file=str(self.runs / "model.pt"),
            meta_file=str(CONFIGS / "metadata.json"), config_file=UNET_INFERENCE, input_shape=[1, 1, 64, 48],
            use_trace=True, converter_kwargs={"dynamo": False, "opset_version": 17},
            bundle_root=str(ROOT), image_size=[64, 48], **UNET_AS_TRAINED,
        )
        # fp32 as the bundle's runtime: on a CPU with native bf16 OpenVINO's default is bf16 (measured here: landmarks
        # 0.0034 pixel apart)
        compiled = openvino.Core().compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        x1 = x[:1]
        with torch.no_grad():
            a, _ = heatmap_to_landmarks(net(x1), log_scale=True)
        b, _ = heatmap_to_landmarks(torch.from_numpy(compiled({0: x1.numpy()})[0]), log_scale=True)
        self.assertLess(float((a - b).abs().max()), 1e-3)


if __name__ == "__main__":
    unittest.main()
