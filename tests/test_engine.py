"""Mixed precision at inference: the precision names, "auto", and float32 outputs."""

import unittest

import torch

from bundle.engine import AutocastInferer, autocast_dtype


class TestPrecision(unittest.TestCase):
    def test_names(self):
        self.assertIs(autocast_dtype("bf16"), torch.bfloat16)
        self.assertIs(autocast_dtype("FP16"), torch.float16)
        self.assertIsNone(autocast_dtype("none"))
        self.assertIn(autocast_dtype("auto", "cpu"), (None, torch.bfloat16))
        with self.assertRaises(ValueError) as cm:
            autocast_dtype("int8")
        self.assertIn("auto", str(cm.exception))

    def test_auto_matches_full_precision(self):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3, padding=1))
        x = torch.rand(2, 1, 24, 20)
        full = AutocastInferer("none")(x, net)
        for precision in ("auto", "bf16"):
            out = AutocastInferer(precision, "cpu")(x, net)
            self.assertEqual(out.dtype, torch.float32)  # decoding and metrics always see float32
            torch.testing.assert_close(out, full, atol=0.05, rtol=0.05)


class TestNativeBf16(unittest.TestCase):
    def test_falls_back_to_cpu_flags_without_the_private_op(self):
        import tempfile
        from pathlib import Path
        from types import SimpleNamespace
        from unittest import mock

        from bundle.engine import cpu_has_native_bf16

        with tempfile.TemporaryDirectory() as tmp:
            with_bf16, without = Path(tmp) / "a", Path(tmp) / "b"
            with_bf16.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n")
            without.write_text("flags\t\t: fpu sse avx2 avx512f\n")
            with mock.patch("bundle.engine.torch.ops", SimpleNamespace()):  # a torch build without the op
                self.assertTrue(cpu_has_native_bf16(with_bf16))
                self.assertFalse(cpu_has_native_bf16(without))
                self.assertFalse(cpu_has_native_bf16(Path(tmp) / "missing"))
        self.assertIsInstance(cpu_has_native_bf16(), bool)


if __name__ == "__main__":
    unittest.main()
