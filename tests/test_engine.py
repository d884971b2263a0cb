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

    def test_cpu_facts_for_benchmark_reports(self):
        import tempfile
        from pathlib import Path
        from types import SimpleNamespace
        from unittest import mock

        from bundle.engine import cpu_facts

        with tempfile.TemporaryDirectory() as tmp:
            info = Path(tmp) / "cpuinfo"
            info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2\n")
            with mock.patch("bundle.engine.torch.ops", SimpleNamespace()):
                facts = cpu_facts(info)
                self.assertEqual((facts["cpu_model"], facts["cpu_native_bf16"]), ("AMD EPYC 7B13", False))
                self.assertEqual(cpu_facts(Path(tmp) / "missing")["cpu_model"], "")
        self.assertEqual(facts["cpu_capability"], torch.backends.cpu.get_cpu_capability())

    def test_cpu_recipe_shape_follows_native_bf16(self):
        """Two global and two refinement networks where bf16 is native, one of each elsewhere (2 hours, not 3.5)."""
        import tempfile
        from pathlib import Path
        from types import SimpleNamespace
        from unittest import mock

        from bundle.engine import cpu_recipe_members

        with tempfile.TemporaryDirectory() as tmp:
            with_bf16, without = Path(tmp) / "bf16", Path(tmp) / "avx2"
            with_bf16.write_text("flags\t\t: fpu avx512f avx512_bf16\n")
            without.write_text("flags\t\t: fpu avx2\n")
            with mock.patch("bundle.engine.torch.ops", SimpleNamespace()), \
                    mock.patch("bundle.engine.torch.cuda.is_available", return_value=False):
                self.assertEqual((cpu_recipe_members(with_bf16), cpu_recipe_members(without)), (2, 1))
            with mock.patch("bundle.engine.torch.cuda.is_available", return_value=True):
                self.assertEqual(cpu_recipe_members(without), 2)

    def test_inference_names_the_fast_profile_where_it_runs_in_fp32(self):
        """The shipped 800 x 640 pipeline in fp32 on a CPU points to configs/inference_fast.yaml; nowhere else."""
        import tempfile
        from pathlib import Path
        from types import SimpleNamespace
        from unittest import mock

        from bundle.engine import cpu_speed_note

        with tempfile.TemporaryDirectory() as tmp:
            with_bf16, without = Path(tmp) / "bf16", Path(tmp) / "avx2"
            with_bf16.write_text("flags\t\t: fpu avx512f avx512_bf16\n")
            without.write_text("flags\t\t: fpu avx2\n")
            with mock.patch("bundle.engine.torch.ops", SimpleNamespace()):
                self.assertIn("configs/inference_fast.yaml", cpu_speed_note("auto", "cpu", [800, 640], without))
                self.assertIn("configs/inference_fast.yaml", cpu_speed_note("none", "cpu", (800, 640), with_bf16))
                self.assertIsNone(cpu_speed_note("auto", "cpu", [800, 640], with_bf16))
                self.assertIsNone(cpu_speed_note("auto", "cpu", [400, 320], without))  # the fast profile itself
                self.assertIsNone(cpu_speed_note("auto", "cuda:0", [800, 640], without))


class TestImageProgressBar(unittest.TestCase):
    def test_counts_the_images_of_an_evaluator_and_can_be_off(self):
        """Inference and evaluation show a bar over the images; 'false' from the command line attaches nothing."""
        import contextlib
        import io

        from ignite.engine import Engine, Events

        from bundle.engine import ImageProgressBar

        for enabled, expected in ((True, "images: [4/4]"), ("false", None)):
            engine = Engine(lambda e, batch: batch)
            n_before = len(engine._event_handlers[Events.ITERATION_COMPLETED])
            ImageProgressBar(enabled).attach(engine)
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                engine.run(range(4), max_epochs=1)
            if expected:
                self.assertGreater(len(engine._event_handlers[Events.ITERATION_COMPLETED]), n_before)
                self.assertIn(expected, err.getvalue())
            else:
                self.assertEqual(len(engine._event_handlers[Events.ITERATION_COMPLETED]), n_before)
                self.assertEqual(err.getvalue(), "")


if __name__ == "__main__":
    unittest.main()
