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
    """bundle.engine's CPU decisions, on stand-in cpuinfo files: one with AVX-512 BF16, one without."""

    def setUp(self):
        import tempfile
        from pathlib import Path

        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)
        self.with_bf16, self.without = self.dir / "bf16", self.dir / "avx2"
        self.with_bf16.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n")
        self.without.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 avx512f\n")

    @staticmethod
    def flags_only():
        """A torch build without oneDNN's private check, so the cpuinfo flags decide."""
        from types import SimpleNamespace
        from unittest import mock

        return mock.patch("bundle.engine.torch.ops", SimpleNamespace())

    def test_falls_back_to_cpu_flags_without_the_private_op(self):
        from bundle.engine import cpu_has_native_bf16

        with self.flags_only():
            self.assertTrue(cpu_has_native_bf16(self.with_bf16))
            self.assertFalse(cpu_has_native_bf16(self.without))
            self.assertFalse(cpu_has_native_bf16(self.dir / "missing"))
        self.assertIsInstance(cpu_has_native_bf16(), bool)

    def test_cpu_facts_for_benchmark_reports(self):
        from bundle.engine import cpu_facts

        with self.flags_only():
            facts = cpu_facts(self.without)
            self.assertEqual((facts["cpu_model"], facts["cpu_native_bf16"]), ("AMD EPYC 7B13", False))
            self.assertEqual(cpu_facts(self.dir / "missing")["cpu_model"], "")
        self.assertEqual(facts["cpu_capability"], torch.backends.cpu.get_cpu_capability())

    def test_cpu_recipe_shape_follows_native_bf16(self):
        """Two global and two refinement networks where bf16 is native, one of each elsewhere (2 hours, not 3.5)."""
        from unittest import mock

        from bundle.engine import cpu_recipe_members

        with self.flags_only(), mock.patch("bundle.engine.torch.cuda.is_available", return_value=False):
            self.assertEqual((cpu_recipe_members(self.with_bf16), cpu_recipe_members(self.without)), (2, 1))
        with mock.patch("bundle.engine.torch.cuda.is_available", return_value=True):
            self.assertEqual(cpu_recipe_members(self.without), 2)

    def test_inference_names_the_fast_profile_where_it_runs_in_fp32(self):
        """The shipped 800 x 640 pipeline in fp32 on a CPU points to configs/inference_fast.yaml; in bf16 on a CPU
        with it natively, to --runtime openvino; nowhere else."""
        from bundle.engine import cpu_speed_note

        with self.flags_only():
            self.assertIn("configs/inference_fast.yaml", cpu_speed_note("auto", "cpu", True, self.without))
            self.assertIn("configs/inference_fast.yaml", cpu_speed_note("none", "cpu", "true", self.with_bf16))
            # with native bf16: the full pipeline, and OpenVINO's time for it, not the fast profile
            bf16 = cpu_speed_note("auto", "cpu", True, self.with_bf16)
            self.assertIn("--runtime openvino", bf16)
            self.assertNotIn("inference_fast.yaml", bf16)
            self.assertIsNone(cpu_speed_note("auto", "cpu", True, self.with_bf16, runtime="openvino"))
            self.assertIsNone(cpu_speed_note("bf16", "cpu", True, self.without))  # emulated bf16, asked for
            self.assertIsNone(cpu_speed_note("auto", "cpu", "False", self.without))  # the fast profile itself
            self.assertIsNone(cpu_speed_note("auto", "cuda:0", True, self.without))
            # it names the faster runtime, and says what to expect once it is chosen
            self.assertIn("--runtime openvino", cpu_speed_note("auto", "cpu", True, self.without))
            on = cpu_speed_note("auto", "cpu", True, self.without, runtime="openvino")
            self.assertIn("OpenVINO runs the networks in fp32", on)
            self.assertNotIn("--runtime openvino", on)

    def test_only_the_shipped_profile_asks_for_the_hint(self):
        """inference.yaml turns the hint on; the fast profile, layered after it, turns it off."""
        from pathlib import Path

        from monai.bundle import ConfigParser

        root = Path(__file__).resolve().parents[1]
        hints = []
        for files in (["inference.yaml"], ["inference.yaml", "inference_fast.yaml"]):
            parser = ConfigParser()
            parser.read_config([str(root / "configs" / f) for f in files])
            hints.append(parser["fast_profile_hint"])
        self.assertEqual(hints, [True, False])


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
