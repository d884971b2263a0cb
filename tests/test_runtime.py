"""runtime: openvino (bundle/runtime.py): a network exported with MONAI's convert_to_onnx and run by OpenVINO gives
PyTorch's outputs, for any batch size; a runtime that can't run says why before any image is read."""

import builtins
import unittest
from unittest import mock

import torch
from monai.networks.nets import UNet

from bundle.runtime import NetworkRuntime, OpenVINOForward, run_in_openvino


def small_unet(in_channels: int = 2, out_channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=(8, 16, 32),
                strides=(2, 2), num_res_units=1).eval()


class TestOpenVINO(unittest.TestCase):
    def test_same_outputs_as_pytorch_for_any_batch(self):
        net = small_unet()
        x = torch.rand(3, 2, 32, 32)  # exported with batch 1: the batch axis is dynamic
        with torch.inference_mode():
            expected = net(x)
        run_in_openvino(net, (1, 2, 32, 32), threads=1, name="test")
        self.assertIsInstance(net.forward, OpenVINOForward)
        got = net(x)
        self.assertEqual(got.shape, expected.shape)
        self.assertEqual(got.dtype, torch.float32)
        self.assertLess(float((got - expected).abs().max()), 1e-4)
        again = net(torch.zeros(1, 2, 32, 32))  # a later call does not overwrite an earlier output
        self.assertLess(float((got - expected).abs().max()), 1e-4)
        self.assertEqual(again.shape, (1, 3, 32, 32))

    def test_a_mismatch_keeps_pytorch_and_says_so(self):
        net = small_unet()
        original = net.forward
        with mock.patch.object(OpenVINOForward, "__call__", lambda self, x, *a, **k: torch.zeros(1, 3, 32, 32)):
            with self.assertRaisesRegex(RuntimeError, "refinement network in OpenVINO .* from PyTorch.*runtime: pytorch"):
                run_in_openvino(net, (1, 2, 32, 32), name="refinement")
        self.assertEqual(net.forward, original)

    def test_handler_runs_both_networks_once_after_loading(self):
        net, backbone = small_unet(1, 3), small_unet(2, 3)
        handler = NetworkRuntime("openvino", net, (1, 1, 32, 32), backbone, (3, 2, 32, 32), device="cpu")
        self.assertFalse(isinstance(net.forward, OpenVINOForward))  # nothing happens before the engine starts
        handler()
        self.assertIsInstance(net.forward, OpenVINOForward)
        self.assertIsInstance(backbone.forward, OpenVINOForward)
        first = net.forward
        handler()  # a second run of the engine keeps the compiled networks
        self.assertIs(net.forward, first)

    def test_pytorch_changes_nothing(self):
        net = small_unet()
        original = net.forward
        NetworkRuntime("PyTorch", net, (1, 2, 32, 32))()
        self.assertEqual(net.forward, original)

    def test_clear_errors(self):
        with self.assertRaisesRegex(ValueError, "runtime: 'onnx' is not one of pytorch, openvino"):
            NetworkRuntime("onnx")
        with self.assertRaisesRegex(ValueError, "runs on the CPU, and the device is cuda:0"):
            NetworkRuntime("openvino", device="cuda:0")
        real_import = builtins.__import__

        def no_openvino(name, *args, **kwargs):
            if name == "openvino":
                raise ImportError("No module named 'openvino'")
            return real_import(name, *args, **kwargs)

        with mock.patch.object(builtins, "__import__", no_openvino):
            with self.assertRaisesRegex(ImportError, "pip install -r requirements-openvino.txt"):
                NetworkRuntime("openvino")
            NetworkRuntime("pytorch")  # the default needs no OpenVINO


if __name__ == "__main__":
    unittest.main()
