"""runtime: openvino (bundle/runtime.py): a network exported with MONAI's convert_to_onnx and run by OpenVINO gives
PyTorch's outputs, for any batch size; a runtime that can't run says why before any image is read."""

import builtins
import os
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import torch
from monai.networks.nets import UNet

from bundle.engine import cpu_has_native_bf16
from bundle.runtime import NetworkRuntime, OpenVINOForward, openvino_precision, openvino_settings, run_in_openvino


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
        # compiled for the shape given (the check ran on it); another batch compiles for any batch when it first comes
        self.assertEqual((net.forward.shape, net.forward.other_request), ((1, 2, 32, 32), None))
        got = net(x)
        self.assertIsNotNone(net.forward.other_request)
        self.assertEqual(got.shape, expected.shape)
        self.assertEqual(got.dtype, torch.float32)
        self.assertLess(float((got - expected).abs().max()), 1e-4)
        again = net(torch.zeros(1, 2, 32, 32))  # a later call does not overwrite an earlier output
        self.assertLess(float((got - expected).abs().max()), 1e-4)
        self.assertEqual(again.shape, (1, 3, 32, 32))

    def test_bf16_where_amp_runs_bf16_natively(self):
        """OpenVINO computes in bf16 exactly where the pipeline's amp runs bf16 natively on this CPU; its outputs
        stay within the bf16 check's tolerance of PyTorch's fp32 ones."""
        for native, expected in ((True, {"auto": "bf16", "bf16": "bf16", "none": "f32", "fp16": "f32"}),
                                 (False, {"auto": "f32", "bf16": "f32", "none": "f32", "fp16": "f32"})):
            with mock.patch("bundle.engine.cpu_has_native_bf16", return_value=native):
                self.assertEqual({amp: openvino_precision(amp) for amp in expected}, expected, native)
        self.assertEqual(openvino_settings(1, "bf16")["INFERENCE_PRECISION_HINT"], "bf16")
        with self.assertRaisesRegex(ValueError, "OpenVINO precision should be one of f32, bf16; got 'f16'"):
            openvino_settings(1, "f16")
        net = small_unet()
        x = torch.rand(2, 2, 32, 32)
        with torch.inference_mode():
            expected = net(x)
        run_in_openvino(net, (1, 2, 32, 32), threads=1, name="test", precision="bf16")
        native = cpu_has_native_bf16()  # elsewhere OpenVINO may compute in f32 what it was asked to in bf16
        if native:
            self.assertEqual(net.forward.precision, "bf16")
        got = net(x)
        self.assertEqual(got.dtype, torch.float32)
        self.assertLess(float((got - expected).abs().max()), 5e-2 * (float(expected.abs().max()) + 1))
        net, backbone = small_unet(1, 3), small_unet(2, 3)
        with mock.patch("bundle.engine.cpu_has_native_bf16", return_value=True):
            handler = NetworkRuntime("openvino", net, (1, 1, 32, 32), backbone, (3, 2, 32, 32), amp="auto")
        self.assertEqual(handler.precision, "bf16")
        handler()
        if native:
            self.assertEqual((net.forward.precision, backbone.forward.precision), ("bf16", "bf16"))
        handler = NetworkRuntime("openvino", small_unet(1, 3), (1, 1, 32, 32), amp="none")
        handler()
        self.assertEqual(handler.networks[0][0].forward.precision, "f32")

    def test_a_mismatch_keeps_pytorch_and_says_so(self):
        net = small_unet()
        original = net.forward
        with mock.patch.object(OpenVINOForward, "__call__", lambda self, x, *a, **k: torch.zeros(1, 3, 32, 32)):
            with self.assertRaisesRegex(RuntimeError, "refinement network in OpenVINO .* from PyTorch.*runtime: pytorch"):
                run_in_openvino(net, (1, 2, 32, 32), name="refinement")
        self.assertEqual(net.forward, original)

    def test_cache_is_read_at_the_next_start(self):
        """The exported network is kept as IR; the same network's next start reads it (no export, no check) and gives
        the same outputs; other weights are another key and are exported again."""
        x = torch.rand(2, 2, 32, 32)
        with tempfile.TemporaryDirectory() as tmp:
            first = run_in_openvino(small_unet(), (1, 2, 32, 32), threads=1, name="refinement", cache_dir=tmp)
            self.assertEqual(first.forward.source, "export")
            kept = sorted(p.name for p in Path(tmp).iterdir())
            self.assertEqual([Path(n).suffix for n in kept], [".bin", ".sha256", ".xml"], kept)
            self.assertTrue(kept[2].startswith("refinement-"))
            import openvino

            kept_input = openvino.Core().read_model(str(Path(tmp) / kept[2])).input(0).get_partial_shape()
            self.assertTrue(kept_input[0].is_dynamic, kept_input)  # the kept IR is the dynamic graph, not the static compile
            net = small_unet()
            with torch.inference_mode():
                expected = net(x)
            with mock.patch("bundle.runtime.export_onnx", side_effect=AssertionError("exported again")):
                second = run_in_openvino(net, (1, 2, 32, 32), threads=1, name="refinement", cache_dir=tmp)
            self.assertEqual(second.forward.source, "cache")
            self.assertLess(float((second(x) - expected).abs().max()), 1e-4)  # fp32 kept, not compressed to fp16

            other = small_unet()
            with torch.no_grad():
                next(other.parameters()).add_(0.5)
            self.assertEqual(run_in_openvino(other, (1, 2, 32, 32), threads=1, name="refinement", cache_dir=tmp).forward.source,
                             "export")
            self.assertEqual(len(list(Path(tmp).glob("*.xml"))), 2)
            self.assertEqual(run_in_openvino(small_unet(), (2, 2, 32, 32), threads=1, name="refinement",
                                             cache_dir=tmp).forward.source, "export")  # another input shape

    def test_cache_keeps_the_networks_used_last(self):
        def net(seed: int) -> torch.nn.Module:
            n = small_unet()
            with torch.no_grad():
                next(n.parameters()).add_(seed)
            return n

        with tempfile.TemporaryDirectory() as tmp, mock.patch("bundle.runtime.CACHE_KEEP", 2):
            run_in_openvino(net(1), (1, 2, 32, 32), threads=1, name="global", cache_dir=tmp)
            first = next(Path(tmp).glob("*.xml"))
            run_in_openvino(net(2), (1, 2, 32, 32), threads=1, name="global", cache_dir=tmp)
            os.utime(first, (first.stat().st_atime, first.stat().st_mtime - 60))  # an older use than the second's...
            self.assertEqual(run_in_openvino(net(1), (1, 2, 32, 32), threads=1, name="global",
                                             cache_dir=tmp).forward.source, "cache")  # ...until read again
            run_in_openvino(net(3), (1, 2, 32, 32), threads=1, name="global", cache_dir=tmp)  # the second one goes
            self.assertEqual(len(list(Path(tmp).glob("*.xml"))), 2)
            self.assertEqual(len(list(Path(tmp).iterdir())), 6)  # .xml, .bin and .sha256 each, nothing left over
            self.assertTrue(first.is_file())
            self.assertEqual(run_in_openvino(net(2), (1, 2, 32, 32), threads=1, name="global",
                                             cache_dir=tmp).forward.source, "export")

    def test_a_broken_or_unwritable_cache_costs_only_time(self):
        with tempfile.TemporaryDirectory() as tmp:
            run_in_openvino(small_unet(), (1, 2, 32, 32), threads=1, name="global", cache_dir=tmp)
            xml = next(Path(tmp).glob("*.xml"))
            xml.write_text("<net>not a model")  # a damaged file: exported again, and the cache mended
            with self.assertLogs("bundle.runtime", "WARNING") as logs:
                net = run_in_openvino(small_unet(), (1, 2, 32, 32), threads=1, name="global", cache_dir=tmp)
            self.assertEqual(net.forward.source, "export")
            self.assertIn("can't be read", logs.output[0])
            self.assertIn(str(xml), logs.output[0])
            self.assertEqual(run_in_openvino(small_unet(), (1, 2, 32, 32), threads=1, name="global",
                                             cache_dir=tmp).forward.source, "cache")
            weights = xml.with_suffix(".bin")
            data = bytearray(weights.read_bytes())
            data[len(data) // 2] ^= 0xFF  # weights changed in place, the same size: caught by their checksum
            weights.write_bytes(bytes(data))
            with self.assertLogs("bundle.runtime", "WARNING") as logs:
                net = run_in_openvino(small_unet(), (1, 2, 32, 32), threads=1, name="global", cache_dir=tmp)
            self.assertEqual(net.forward.source, "export")
            self.assertIn("do not match their checksum", logs.output[0])
            self.assertEqual(run_in_openvino(small_unet(), (1, 2, 32, 32), threads=1, name="global",
                                             cache_dir=tmp).forward.source, "cache")
            blocked = Path(tmp) / "a-file"
            blocked.write_text("")  # a cache folder that can't be made: a warning, and the network still runs
            with self.assertLogs("bundle.runtime", "WARNING") as logs:
                net = run_in_openvino(small_unet(), (1, 2, 32, 32), threads=1, name="global", cache_dir=blocked / "sub")
            self.assertIn("could not be kept", logs.output[0])
            self.assertIsInstance(net.forward, OpenVINOForward)

    def test_default_cache_folder(self):
        from bundle.runtime import default_cache_dir

        with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": "/somewhere"}):
            self.assertEqual(default_cache_dir(), Path("/somewhere/cephalometric-landmarks/openvino"))
        with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": ""}), mock.patch.object(Path, "home", lambda: Path("/h")):
            self.assertEqual(default_cache_dir(), Path("/h/.cache/cephalometric-landmarks/openvino"))
        with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": ""}), \
                mock.patch.object(Path, "home", side_effect=RuntimeError("Could not determine home directory")):
            self.assertEqual(default_cache_dir(), Path(tempfile.gettempdir()) / "cephalometric-landmarks" / "openvino")

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
