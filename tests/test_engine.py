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


if __name__ == "__main__":
    unittest.main()
