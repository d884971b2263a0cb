"""Weights carry the settings they were trained with (bundle/settings.py): training writes settings.json, inference
and evaluation check it before they run, and a difference is an error that says what to pass."""

from __future__ import annotations

import json
import shutil
import tempfile
import unittest
from pathlib import Path

from monai.bundle import ConfigWorkflow

from bundle.settings import check_model_settings, network_name, settings_path, write_model_settings
from tests.helpers import CONFIGS, ROOT, run_workflow, tiny_synthetic_run


class TestModelSettings(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.ckpt = self.tmp / "run" / "model.pt"
        self.ckpt.parent.mkdir()
        self.ckpt.write_bytes(b"")

    def test_matching_settings_pass(self):
        write_model_settings(self.ckpt.parent, {"kind": "global", "image_size": (400, 320), "network": "MAHTNet"})
        # numbers compare as numbers (a config may say 400.0)
        self.assertEqual(json.loads((self.tmp / "run" / "settings.json").read_text())["image_size"], [400, 320])
        self.assertEqual(check_model_settings([self.ckpt], {"kind": "global", "image_size": [400.0, 320],
                                                            "network": "MAHTNet", "unknown_to_the_file": 1}), 1)

    def test_no_file_is_not_checked(self):
        self.assertIsNone(settings_path(self.ckpt))
        self.assertEqual(check_model_settings(self.ckpt, {"kind": "global", "image_size": [1, 1]}), 0)
        self.assertEqual(check_model_settings(None, {"kind": "global"}), 0)

    def test_a_difference_names_the_setting_and_the_fix(self):
        write_model_settings(self.ckpt.parent, {"kind": "global", "image_size": [400, 320], "network": "UNet"})
        with self.assertRaises(ValueError) as cm:
            check_model_settings([self.ckpt], {"kind": "global", "image_size": [800, 640], "network": "MAHTNet"})
        msg = str(cm.exception)
        for part in (str(self.ckpt), "image_size: trained with [400, 320], this run uses [800, 640]",
                     '--image_size "[400, 320]"', "network: trained with \"UNet\"", "settings.json"):
            self.assertIn(part, msg)

    def test_kind_mismatch(self):
        write_model_settings(self.ckpt.parent, {"kind": "refinement", "crop_size": [128, 128]})
        with self.assertRaisesRegex(ValueError, "a refinement network's weights"):
            check_model_settings(self.ckpt, {"kind": "global", "image_size": [800, 640]})

    def test_own_file_before_the_folder_file(self):
        write_model_settings(self.ckpt.parent, {"kind": "global", "image_size": [400, 320]})
        own = self.ckpt.with_suffix(".settings.json")
        own.write_text(json.dumps({"kind": "global", "image_size": [800, 640]}))
        self.assertEqual(settings_path(self.ckpt), own)
        self.assertEqual(check_model_settings(self.ckpt, {"kind": "global", "image_size": [800, 640]}), 1)

    def test_unreadable_file(self):
        (self.ckpt.parent / "settings.json").write_text("{not json")
        with self.assertRaisesRegex(ValueError, "could not be read"):
            check_model_settings(self.ckpt, {"kind": "global"})

    def test_network_name_keeps_the_backbone(self):
        from monai.networks.nets import FlexibleUNet, UNet

        import bundle.networks  # noqa: F401  (registers the Lite0 backbones)

        net = FlexibleUNet(in_channels=1, out_channels=2, backbone="efficientnet-lite0-swish", pretrained=False)
        self.assertEqual(network_name(net), "FlexibleUNet(efficientnet-lite0-swish)")
        self.assertEqual(network_name(UNet(2, 1, 1, (4, 8), (2,))), "UNet")


class TestShippedSettings(unittest.TestCase):
    def test_shipped_weights_match_their_configs(self):
        """models/NAME.settings.json says what inference.yaml (and the fast profile) run the shipped weights with;
        each is found and checked, and another image size is refused."""
        from monai.bundle import ConfigParser

        for configs, n_global in (([CONFIGS / "inference.yaml"], 1),
                                  ([CONFIGS / "inference.yaml", CONFIGS / "inference_fast.yaml"], 1)):
            parser = ConfigParser()
            parser.read_config([str(c) for c in configs])
            parser["bundle_root"] = str(ROOT)
            with self.subTest(configs=[c.name for c in configs]):
                self.assertEqual(parser.get_parsed_content("check_weights"), [n_global, 1])
                self.assertIsNotNone(settings_path(parser.get_parsed_content("ckpt_path")))
                self.assertIsNotNone(settings_path(parser.get_parsed_content("refine_ckpt_path")))
                parser["image_size"] = [512, 416]
                with self.assertRaises(RuntimeError) as cm:
                    parser.get_parsed_content("check_weights", lazy=False)
                self.assertIn("--image_size", str(cm.exception.__cause__))


class TestSettingsInTheWorkflows(unittest.TestCase):
    """A U-Net trained on synthetic images at 64 x 48 writes settings.json; evaluation checks it and passes;
    inference at another image size stops before reading any image, saying --image_size."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        cls.common = tiny_synthetic_run(cls.tmp, 4, **{"network_def#channels": [8, 16, 32], "network_def#strides": [2, 2]})
        run_workflow("train", [CONFIGS / "train.yaml"], max_epochs=1, val_interval=1, **cls.common)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_training_wrote_them(self):
        settings = json.loads((self.tmp / "run" / "settings.json").read_text())
        self.assertEqual(settings, {"kind": "global", "image_size": [64, 48], "network": "UNet"})

    def test_evaluation_checks_and_runs(self):
        run_workflow("eval", [CONFIGS / "train.yaml", CONFIGS / "evaluate.yaml"], refine=False, **self.common)
        self.assertTrue((self.tmp / "run" / "eval_test" / "metrics.json").is_file())

    def test_inference_at_another_size_stops(self):
        out = self.tmp / "infer"
        inf = ConfigWorkflow(
            workflow_type="infer", config_file=str(CONFIGS / "inference.yaml"), logging_file=False,
            bundle_root=str(ROOT), input_dir=str(self.tmp / "data" / "RawImage" / "Test1Data"), output_dir=str(out),
            ckpt_path=str(self.tmp / "run" / "model.pt"), refine=False, progress_bar=False,
            network_def={"_target_": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 19,
                         "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 2},
        )
        with self.assertRaises(RuntimeError) as cm:  # MONAI wraps what a config expression raises
            inf.initialize()
        cause = cm.exception.__cause__
        self.assertIsInstance(cause, ValueError)
        self.assertIn('--image_size "[64, 48]"', str(cause))
        self.assertFalse((out / "landmarks.csv").exists())


if __name__ == "__main__":
    unittest.main()
