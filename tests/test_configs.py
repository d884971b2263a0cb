"""evaluate.yaml and inference.yaml state the two-pass pipeline each (evaluate.yaml layers on train.yaml, inference.yaml
stands alone): the settings they share must not drift apart, or Test1 numbers would describe another pipeline than
the one users run."""

import unittest
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SAME = ["refine_spacing_mm", "refine_context_factor", "crop_size", "refine_coarse_weight", "refine_shifts", "shape_model",
        "shape_z_max", "bias_correction", "refine_ckpt_path", "refine_network_def", "refine_network", "fine_transforms",
        "centre_correction", "correct_bias", "use_refine", "tta", "ensemble", "refine_ensemble", "face",
        "bone", "orientation_auto_spread_mm", "restore_orientation", "reframe", "reframe_margin", "reframe_fill", "frame_model",
        "use_reframe", "orient_input"]
# intended differences: evaluation fits calibrations (inference applies them), evaluation can iterate the refinement
# for experiments, and only inference moves the crop centres by default (evaluate.yaml evaluates any checkpoint)
ONLY_INFERENCE = {"calibration"}
ONLY_EVALUATION = {"iterations"}


class TestPipelineSettingsAgree(unittest.TestCase):
    def test_shared_settings_are_identical(self):
        ev = yaml.safe_load((CONFIGS / "evaluate.yaml").read_text())
        inf = yaml.safe_load((CONFIGS / "inference.yaml").read_text())
        for key in SAME:
            self.assertEqual(ev[key], inf[key], key)
        for key in ("orient_image", "reframe_image"):
            e, i = dict(ev[key]), dict(inf[key])
            self.assertEqual((e.pop("inferer"), i.pop("inferer")), ("@validate#inferer", "@inferer"), key)  # each its evaluator's
            self.assertEqual(e, i, key)
        for key in ("decode", "refine_landmarks"):
            e = {k: v for k, v in ev[key].items() if k not in ONLY_EVALUATION}
            i = {k: v for k, v in inf[key].items() if k not in ONLY_INFERENCE}
            self.assertEqual(e, i, key)
        self.assertIsNone(ev["refine_centre_correction"])
        self.assertIn("models/bias_correction.json", inf["refine_centre_correction"])

    def test_reframed_crops_are_scaled_as_the_global_input(self):
        """ReframeImaged scales its crop with the very transform of the config's global input chain, so a change of
        the input scaling in the config reaches the reframed readings too."""
        from monai.bundle import ConfigParser

        inf = ConfigParser()
        inf.read_config(str(CONFIGS / "inference.yaml"))
        chain = inf.get_parsed_content("coarse_transforms")
        self.assertIs(inf.get_parsed_content("reframe_image").intensity, chain[-1])
        ev = ConfigParser()
        ev.read_config([str(CONFIGS / f) for f in ("train.yaml", "isbi_gpu.yaml", "maht_net.yaml", "evaluate.yaml")])
        scale = ev.get_parsed_content("train#deterministic_transforms")[2]
        self.assertEqual(type(scale).__name__, "ScaleIntensityRangePercentilesd")
        self.assertIs(ev.get_parsed_content("reframe_image").intensity, scale)
        self.assertIn(scale, ev.get_parsed_content("validate#preprocessing").transforms)


if __name__ == "__main__":
    unittest.main()
