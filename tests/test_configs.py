"""evaluate.yaml takes the pipeline around the networks from inference.yaml (MONAI's '%file#key' macros; evaluate.yaml
layers on train.yaml, inference.yaml stands alone), so Test1 numbers describe the pipeline users run."""

import functools
import json
import statistics
import unittest
from pathlib import Path
from unittest import mock

import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SAME = ["subpixel", "refine_spacing_mm", "refine_context_factor", "crop_size", "refine_coarse_weight", "refine_iterations",
        "refine_shifts", "shape_model", "shape_z_max", "bias_correction", "refine_ckpt_path", "refine_network_def",
        "refine_network", "fine_transforms", "centre_correction", "correct_bias", "use_refine", "tta", "inferer",
        "ensemble", "network", "refine_ensemble", "face", "bone", "orientation_auto_spread_mm", "restore_orientation",
        "reframe", "reframe_margin", "reframe_fill", "frame_model", "reframe_unsure_widen", "use_reframe",
        "orient_input", "orient_image", "reframe_image", "decode", "refine_landmarks", "runtime", "runtime_cache",
        "network_runtime", "coarse_pixel_mm", "check_pixels", "load_weights", "load_refine_weights"]
# intended differences: evaluation writes the raw spreads (it fits the calibrations inference applies), refines only
# when asked, and moves the crop centres only when asked (evaluate.yaml evaluates any checkpoint)
DIFFERENT = {"refine": ("false", "true"), "refine_centre_correction": (None, "models/bias_correction.json"),
             "uncertainty_calibration": ([1.0, 0.0], None), "refine_calibration": ([1.0, 0.0], None)}


def _resolved(files, overrides=None):
    """The raw config of these files (and overrides) with every macro replaced, as a run sees it before parsing."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update(overrides or {})
    parser.resolve_macro_and_relative_ids()
    return parser


class TestPipelineSettingsAgree(unittest.TestCase):
    def test_evaluation_takes_the_pipeline_from_inference(self):
        ev, inf = _resolved(["train.yaml", "evaluate.yaml"]), _resolved(["inference.yaml"])
        for key in SAME:
            self.assertEqual(ev[key], inf[key], key)
        self.assertEqual(ev["validate#postprocessing"], inf["postprocessing"])
        self.assertEqual(ev["validate#inferer"], "@inferer")  # train.yaml's: so inference.yaml's TTA switch
        for key, (e, i) in DIFFERENT.items():
            self.assertEqual(str(ev[key]).lower() if isinstance(e, str) else ev[key], e, key)
            if i is not None:
                self.assertIn(i, str(inf[key]).lower(), key)
        self.assertEqual(len(inf["refine_calibration"][1]), 19)  # inference applies the fitted calibrations
        # evaluate.yaml states none of these itself: each is a macro, so the two cannot drift apart
        raw = yaml.safe_load((CONFIGS / "evaluate.yaml").read_text())
        for key in SAME:
            self.assertEqual(raw[key], f"%configs/inference.yaml#{key}", key)

    def test_overrides_reach_the_pipeline_evaluated(self):
        """A setting given on the command line (here refine_shifts, shape_z_max, tta) replaces the macro: the
        evaluation's components are built with it."""
        from bundle.engine import TTAInferer

        ev = _resolved(["train.yaml", "evaluate.yaml"], {"refine": True, "refine_shifts": [], "shape_z_max": 3.0,
                                                          "tta": True, "subpixel": "none",
                                                          "bundle_root": str(CONFIGS.parent), "device": "cpu"})
        refine = ev.get_parsed_content("refine_landmarks")
        self.assertEqual(len(refine.offsets), 1)  # the unshifted crop only
        self.assertEqual((ev.get_parsed_content("decode").shape_z_max, ev.get_parsed_content("decode").refine),
                         (3.0, "none"))
        self.assertIsInstance(ev.get_parsed_content("validate#inferer"), TTAInferer)
        self.assertIs(ev.get_parsed_content("orient_image").inferer, ev.get_parsed_content("validate#inferer"))

    def test_a_key_inside_a_shared_component_is_not_an_override(self):
        """MONAI applies overrides before it replaces the macros, so `--decode#refine none` fails on evaluate.yaml (as
        its header says: use the top-level setting); if MONAI ever resolves macros first, this test says the header
        and docs/README.md can drop the caveat."""
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config([str(CONFIGS / f) for f in ("train.yaml", "evaluate.yaml")])
        with self.assertRaisesRegex(ValueError, "invalid literal for int"):
            parser.update({"decode#refine": "none"})

    def test_a_file_not_read_is_only_decoded(self):
        """After the decoding, the whole post-processing (other readings, refinement, bias, orientation restored) sits
        in one UnlessErrord: an item whose file was not read passes it untouched, on its way to errors.csv."""
        from monai.bundle import ConfigParser

        from bundle.transforms import UnlessErrord

        inf = ConfigParser()
        inf.read_config(str(CONFIGS / "inference.yaml"))
        post = inf.get_parsed_content("postprocessing").transforms
        self.assertEqual([type(t).__name__ for t in post], ["HeatmapToLandmarksd", "UnlessErrord"])  # the rest: test_bias
        called = []
        spies = UnlessErrord([lambda d, i=i: called.append(i) or d for i in range(5)])
        item = {"error": "x.png: cannot read image", "pred_landmarks": object()}
        self.assertIs(post[1](item), item)
        self.assertIs(spies(item), item)
        self.assertEqual(called, [])
        spies({"error": "", "x": 1})
        self.assertEqual(called, [0, 1, 2, 3, 4])  # a file read goes through every one, in order

    def test_every_config_scales_with_the_linear_time_percentiles(self):
        """No config (training, refinement, evaluation, inference) scales intensities with MONAI's transform, which
        sorts images under 1M pixels: each uses bundle.transforms.ScaleIntensityRangePercentilesd, the same values."""
        found = 0
        for path in sorted(CONFIGS.glob("*.yaml")):
            text = path.read_text()
            self.assertNotRegex(text, r"_target_:\s*(monai\.transforms\.)?ScaleIntensityRangePercentilesd", path.name)
            found += text.count("_target_: bundle.transforms.ScaleIntensityRangePercentilesd")
        self.assertEqual(found, 4)  # train, refine, inference (fine image and global input; evaluate.yaml takes its)

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
        from bundle.transforms import ScaleIntensityRangePercentilesd  # linear-time percentiles (MONAI's sort)

        self.assertIsInstance(scale, ScaleIntensityRangePercentilesd)
        self.assertIs(ev.get_parsed_content("reframe_image").intensity, scale)
        self.assertIn(scale, ev.get_parsed_content("validate#preprocessing").transforms)


class TestStrongAugmentation(unittest.TestCase):
    def test_layers_on_the_recipe_and_is_off_by_default(self):
        """configs/strong_aug.yaml changes the global recipe's augmentation as its header says; without it the boxes
        of noise and the tight crops are off, and a box of noise leaves the landmarks where they were."""
        import torch
        from monai.bundle import ConfigParser

        names = ["train.yaml", "isbi_gpu.yaml", "maht_net.yaml"]
        plain, strong = ConfigParser(), ConfigParser()
        plain.read_config([str(CONFIGS / f) for f in names])
        strong.read_config([str(CONFIGS / f) for f in names + ["strong_aug.yaml"]])
        p = {type(t).__name__: t for t in plain.get_parsed_content("train#random_transforms")}
        s = {type(t).__name__: t for t in strong.get_parsed_content("train#random_transforms")}
        self.assertEqual(list(p), list(s))
        self.assertEqual((p["RandCoarseDropoutd"].prob, p["RandTightCropd"].prob), (0.0, 0.0))
        self.assertEqual((s["RandCoarseDropoutd"].prob, s["RandTightCropd"].prob), (0.5, 0.2))
        self.assertEqual((p["RandAffineLandmarksd"].rotate_range, p["RandAffineLandmarksd"].scale_range), (0.17, 0.1))
        self.assertEqual((s["RandAffineLandmarksd"].rotate_range, s["RandAffineLandmarksd"].scale_range), (0.26, 0.2))
        self.assertEqual((p["RandElasticLandmarksd"].prob, s["RandElasticLandmarksd"].prob), (0.3, 0.5))
        cut = s["RandCoarseDropoutd"].dropper
        self.assertEqual((tuple(cut.spatial_size), tuple(cut.max_spatial_size)), ((50, 40), (160, 128)))  # at 800 x 640
        s["RandCoarseDropoutd"].set_random_state(0)
        s["RandCoarseDropoutd"].prob = 1.0
        image, landmarks = torch.full((1, 800, 640), 0.5), torch.tensor([[100.0, 200.0], [700.0, 500.0]])
        image[0, 0, 0], image[0, 0, 1] = 0.0, 1.0  # the noise is drawn within the image's range
        out = s["RandCoarseDropoutd"]({"image": image.clone(), "landmarks": landmarks.clone()})
        self.assertGreater(int((out["image"] != 0.5).sum()), 50 * 40 // 2)  # noise in at least one box
        self.assertTrue(torch.equal(out["landmarks"], landmarks))


class TestFastProfile(unittest.TestCase):
    def test_overrides_inference_settings_only(self):
        """inference_fast.yaml changes settings inference.yaml has (a misspelt key would be ignored silently), and
        its global input is the size its weights were trained at (configs/isbi_cpu.yaml)."""
        fast = yaml.safe_load((CONFIGS / "inference_fast.yaml").read_text())
        inf = yaml.safe_load((CONFIGS / "inference.yaml").read_text())
        self.assertLessEqual(set(fast), set(inf))
        self.assertEqual(fast["image_size"], yaml.safe_load((CONFIGS / "isbi_cpu.yaml").read_text())["full_image_size"])
        self.assertEqual(fast["refine_shifts"], [])


def flat(text: str) -> str:
    """Line breaks, comment marks and shell quotes as single spaces: hand-written copies are compared as prose."""
    return " ".join(text.replace("#", " ").replace('"', " ").split())


class TestMeasuredNumbersFollowMetadata(unittest.TestCase):
    def test_fast_profile_numbers_are_the_metadata_ones(self):
        """The fast profile's Test1 cost is stated in four places for users; configs/metadata.json eval_metrics holds
        the measured numbers, inference's hint is written from them, and the hand-written copies (inference_fast.yaml's
        header, README, docs' "Not yet done") must be changed with them when the weights change."""
        from bundle.engine import cpu_speed_note, shipped_metrics

        metrics = shipped_metrics(CONFIGS / "metadata.json")
        full = f"{metrics['isbi2015_test1_senior_mre_mm']:.2f}"
        fast = f"{metrics['isbi2015_test1_senior_mre_mm_fast_profile']:.2f}"
        root = CONFIGS.parent

        self.assertIn(f"ISBI Test1 {fast} mm against {full}", flat((CONFIGS / "inference_fast.yaml").read_text()))
        self.assertIn(f"Test1 {fast} mm against {full}", flat((root / "README.md").read_text()))
        self.assertIn(f"at {fast} mm instead of {full} on Test1", flat((root / "docs" / "README.md").read_text()))
        note = cpu_speed_note("none", "cpu", True)
        self.assertIn(f"{fast} against {full} mm (configs/metadata.json", note)

    def test_cpu_recipe_numbers_are_the_measured_ones(self):
        """The CPU recipe's runs (two AVX2 draws, one with native bf16) are not shipped weights, so their numbers live
        in their result JSON (docs/results/cpu_recipe_avx2_45*_result.json, cpu_recipe_avx512bf16_result.json,
        written from the runs); the copies for users (the script's header and start-up message, README, docs' recipe
        section, "Speed" and "Not yet done") must say the same minutes and MRE."""
        root = CONFIGS.parent

        script = flat((root / "scripts" / "cpu_recipe.sh").read_text())
        readme = flat((root / "README.md").read_text())
        docs = (root / "docs" / "README.md").read_text()
        not_yet_done = flat(docs[docs.index("## Not yet done"):])
        speed = flat(docs[docs.index("## Speed"):docs.index("### The fast CPU profile")])
        recipe = flat(docs[docs.index("### The CPU-only coarse-to-fine recipe"):])

        results = {name: json.loads((root / "docs" / "results" / name).read_text()) for name in (
            "cpu_recipe_avx2_45_result.json", "cpu_recipe_avx2_45_s1_result.json", "cpu_recipe_avx512bf16_result.json",
            "cpu_recipe_avx512bf16_reestimate_result.json", "cpu_recipe_avx512bf16_0_5_21_result.json")}

        def measured(name: str) -> tuple[float, float]:  # training minutes, Test1 MRE
            return results[name]["minutes"]["training_total"], results[name]["test1_both_passes"]["mre_mm"]

        for name in ("cpu_recipe_avx2_45_result.json", "cpu_recipe_avx2_45_s1_result.json"):
            total, mre = measured(name)
            minutes = f"{total:.1f} minutes"
            with self.subTest(result=name):
                self.assertEqual(script.count(f"{minutes}"), 2, "the header comment and the start-up message")
                self.assertEqual(script.count(f"{mre:.3f} mm"), 2, "the header comment and the start-up message")
                self.assertIn(minutes, readme)
                self.assertIn(f"{mre:.3f} mm", readme)
                self.assertIn(minutes, not_yet_done)
                self.assertIn(f"{mre:.3f} mm", not_yet_done)
                self.assertIn(f"{mre:.4f} mm", speed)

        # the native-bf16 runs (2 AVX-512 BF16 cores: from nothing, and with the budgets re-fitted after every epoch):
        # the script's header, README, "Not yet done" and the docs' recipe section
        for name in ("cpu_recipe_avx512bf16_result.json", "cpu_recipe_avx512bf16_reestimate_result.json",
                     "cpu_recipe_avx512bf16_0_5_21_result.json"):
            total, mre = measured(name)
            with self.subTest(result=name):
                for text in (script, readme, not_yet_done):
                    self.assertIn(f"{total:.1f} minutes", text)
                    self.assertIn(f"{mre:.3f} mm", text)
                self.assertIn(f"{total:.1f} min of training", recipe)
                self.assertIn(f"({mre:.4f})", recipe)
        # the recipe with the pretrained-encoder global network (session w, NETWORK=configs/efficientnet_lite.yaml):
        # the script's header, README, "Not yet done" and the docs' recipe table
        lite = json.loads((root / "docs" / "results" / "cpu_recipe_lite_amx_result.json").read_text())
        total, mre = lite["minutes"]["training_total"], lite["test1_both_passes"]["mre_mm"]
        with self.subTest(result="cpu_recipe_lite_amx_result.json"):
            for text in (script, readme, not_yet_done):
                self.assertIn(f"{total:.1f} minutes", text)
                self.assertIn(f"{mre:.3f} mm", text)
            self.assertIn(f"{total:.1f} min of training", flat(docs))
            self.assertIn(f"({mre:.4f})", flat(docs))
        stages = results["cpu_recipe_avx512bf16_reestimate_result.json"]["minutes"]
        self.assertIn(f"took {stages['global']:.1f} and {stages['global_s1']:.1f} minutes", script)

    def test_speed_numbers_are_the_measured_ones(self):
        """The inference speeds typed into what users read first (inference's start-up note, bundle/runtime.py, the
        configs' comments, README) are the medians of the benchmark JSONs they come from (2 AVX2 cores): the run that
        timed the fast profile against the shipped pipeline (benchmark_inference_fast_avx2.json) and the run that
        timed both in PyTorch and OpenVINO (benchmark_inference_runtimes_avx2.json); and on 2 AVX-512 BF16 cores the
        runs that timed OpenVINO in bf16 against PyTorch (benchmark_inference_openvino_bf16_avx512bf16.json, 0.5.17;
        benchmark_inference_linear_percentiles_avx512bf16.json, its repeat and benchmark_inference_0_5_19_avx512bf16.json,
        0.5.19; benchmark_inference_openvino_static_avx512bf16.json, its repeat and benchmark_inference_0_5_20_avx512bf16.json,
        0.5.20), and the note's Test1 numbers are openvino_static_avx512bf16.json's."""
        root = CONFIGS.parent
        results = root / "docs" / "results"
        read = functools.lru_cache(maxsize=None)(lambda name: json.loads((results / name).read_text()))  # once each

        def median(name: str, fast: bool, runtime: str = "pytorch") -> float:
            rows = [r for r in read(name)["results"]
                    if r["refine"] and r.get("runtime", "pytorch") == runtime and r["overrides"] == {}
                    and any(c.endswith("inference_fast.yaml") for c in r["config"]) == fast
                    and not any(c.endswith("inference_unet.yaml") for c in r["config"])]
            self.assertEqual(len(rows), 1, (name, fast, runtime))
            return rows[0]["seconds_per_image_median"]

        def medians(name: str) -> tuple[float, float]:  # the shipped pipeline's, PyTorch and OpenVINO
            return median(name, False), median(name, False, "openvino")

        fast, shipped = median("benchmark_inference_fast_avx2.json", True), median("benchmark_inference_fast_avx2.json", False)
        name = "benchmark_inference_runtimes_avx2.json"
        pytorch, openvino = median(name, False), median(name, False, "openvino")
        fast_openvino = median(name, True, "openvino")
        from bundle.engine import cpu_speed_note

        note, note_openvino = (cpu_speed_note("none", "cpu", True, runtime=r) for r in ("pytorch", "openvino"))  # fp32
        readme = flat((root / "README.md").read_text())
        texts = {
            "configs/inference_fast.yaml": ([f"{fast:.2f} s", f"{shipped:.1f} s"], flat((CONFIGS / "inference_fast.yaml").read_text())),
            "README (fast profile)": ([f"{fast:.2f} s per image", f"instead of {shipped:.1f} s", f"({fast:.2f} s against {shipped:.1f} s)"], readme),
            "README (OpenVINO)": ([f"{openvino:.2f} s per image", f"instead of {pytorch:.2f} s", f"profile: {fast_openvino:.2f} s"], readme),
            "bundle/runtime.py": ([f"{openvino:.2f} s against {pytorch:.2f} s", f"about {openvino / pytorch:.1f} times"],
                                  flat((root / "bundle" / "runtime.py").read_text())),
            "configs/inference.yaml": ([f"in {openvino / pytorch:.1f}x the time"], (CONFIGS / "inference.yaml").read_text()),
            "the start-up note": ([f"about {pytorch:.1f} s per full-size image", f"in about {openvino:.1f} s"], note),
            "the start-up note (OpenVINO)": ([f"about {openvino:.1f} s per full-size image"], note_openvino),
        }
        docs_speed = flat((root / "docs" / "README.md").read_text())
        # 2 AVX-512 BF16 cores, OpenVINO bf16 against PyTorch bf16. 0.5.17: one run
        pytorch, openvino = medians("benchmark_inference_openvino_bf16_avx512bf16.json")
        texts["docs (OpenVINO bf16, 0.5.17)"] = ([f"{openvino:.2f} s in OpenVINO bf16 against {pytorch:.2f} s in PyTorch bf16"], docs_speed)
        # 0.5.19 (linear-time percentiles): the deciding run, its repeat and the run with the baselines
        pytorch, openvino = medians("benchmark_inference_linear_percentiles_avx512bf16.json")
        repeat_pytorch, repeat_openvino = medians("benchmark_inference_linear_percentiles_avx512bf16_repeat.json")
        texts.update({
            "docs (OpenVINO bf16)": ([f"{openvino:.2f} s in OpenVINO bf16 against {pytorch:.2f} s in PyTorch bf16",
                                      f"| **{pytorch:.2f} s** (", f"| **{openvino:.2f} s** (",
                                      f"| {repeat_pytorch:.2f} s (", f"| **{repeat_openvino:.2f} s** (",
                                      f"0.5.19 took {openvino:.2f}–{medians('benchmark_inference_0_5_19_avx512bf16.json')[1]:.2f} s"], docs_speed),
            "configs/inference.yaml (bf16)": ([f"natively, {openvino / pytorch:.1f}x the time"], (CONFIGS / "inference.yaml").read_text()),
        })
        # 0.5.20 (OpenVINO compiled for fixed shapes): three runs, the first deciding; the note quotes the medians of
        # their medians
        static = [medians(n) for n in ("benchmark_inference_openvino_static_avx512bf16.json",
                                       "benchmark_inference_openvino_static_avx512bf16_repeat.json",
                                       "benchmark_inference_0_5_20_avx512bf16.json")]
        pt3, ov3 = statistics.median(p for p, _ in static), statistics.median(o for _, o in static)
        with mock.patch("bundle.engine.bf16_is_native", return_value=True):
            note_bf16 = cpu_speed_note("auto", "cpu", True)
        test1 = json.loads((results / "openvino_static_avx512bf16.json").read_text())["test1_after_the_choice"]
        (decided_pt, decided_ov), (pt5, ov5), (pt6, ov6) = static
        texts.update({
            "the start-up note (native bf16)": ([f"about {pt3:.1f} s per full-size image", f"about {ov3 / pt3:.1f} of that time, about {ov3:.1f} s",
                                                 f"Test1 {test1['static']['mre_mm']:.3f} mm against {test1['pytorch_bf16']['mre_mm']:.3f}"], note_bf16),
            "bundle/engine.py": ([f"{ov3:.2f} s against {pt3:.2f} s"], flat((root / "bundle" / "engine.py").read_text())),
            "docs (OpenVINO fixed shapes, 0.5.20)": ([f"| {p:.2f} s (" for p, _ in static] + [f"| **{o:.2f} s** (" for _, o in static]
                                                     + [f"| **{decided_ov / decided_pt:.2f}** |"], docs_speed),
            "README (OpenVINO bf16, 0.5.20)": ([f"{decided_ov:.2f} s per image on 2 AVX-512 BF16 cores against {decided_pt:.2f} s",
                                                f"{ov5:.2f} and {ov6:.2f} s against {pt5:.2f} and {pt6:.2f} s"], readme),
        })
        for where, (numbers, text) in texts.items():
            for number in numbers:
                with self.subTest(where=where, number=number):
                    self.assertIn(number, text)


class TestMetadataPackages(unittest.TestCase):
    def test_versions_are_the_pinned_ones(self):
        """metadata.json's package versions are requirements.txt's pins. The optional ones of runtime: openvino stay out
        of it: MONAI 1.6 reads a metadata key "optional_packages_version" as the deprecated name of
        "required_packages_version" and replaces the required ones with them."""
        root = CONFIGS.parent
        pins = {}
        for line in (root / "requirements.txt").read_text().splitlines():
            package, sep, version = line.split("#")[0].strip().partition("==")
            if sep:
                pins[package.lower()] = version
        meta = json.loads((CONFIGS / "metadata.json").read_text())
        listed = {**meta["required_packages_version"],
                  "monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"]}
        for package, version in listed.items():
            self.assertEqual(pins.get(package.lower()), version, package)
        self.assertNotIn("optional_packages_version", meta)


if __name__ == "__main__":
    unittest.main()
