"""Coarse-to-fine refinement: crops carry their landmark exactly, and the refinement pass moves rough estimates onto
the landmarks when the network sees them."""

import unittest

import numpy as np
import torch

from bundle.heatmaps import heatmap_to_landmarks, render_gaussian_heatmaps
from bundle.refine import LandmarkCropNet, LandmarkCropsd, RefineLandmarksd, ResampleToSpacingd, context_factors, extract_crops, refinement_unet
from bundle.transforms import original_from_resized

# (y, x) original pixels, far enough apart that each crop shows one blob
POINTS = torch.tensor([[40.3, 50.6], [120.8, 30.2], [90.5, 140.1], [160.0, 110.4]])
SIZE = (200, 170)


def blob_image(points=POINTS, size=SIZE, sigma=3.0) -> torch.Tensor:
    """All landmarks as Gaussian blobs in one channel: a picture a crop can be checked against."""
    return render_gaussian_heatmaps(points, size, sigma).sum(0, keepdim=True)


def peak(image: torch.Tensor) -> torch.Tensor:
    """Sub-pixel peak ``(y, x)`` of a ``(1, h, w)`` image."""
    return heatmap_to_landmarks(image[None].clamp_min(1e-6))[0][0, 0]


class TestResampleToSpacing(unittest.TestCase):
    def test_in_place_moves_landmarks_with_the_image(self):
        data = {"image": blob_image(), "landmarks": POINTS.clone(), "spacing": torch.tensor([0.1, 0.1]), "scale": torch.ones(2)}
        out = ResampleToSpacingd(spacing_mm=0.25)(data)
        self.assertEqual(tuple(out["image"].shape[-2:]), (80, 68))
        torch.testing.assert_close(out["scale"], torch.tensor([80 / 200, 68 / 170]))
        back = original_from_resized(out["landmarks"], out["scale"])
        torch.testing.assert_close(back, POINTS, atol=1e-4, rtol=0)

    def test_copy_leaves_the_image_alone(self):
        image = blob_image()
        data = {"image": image, "landmarks": POINTS.clone(), "spacing": torch.tensor([0.1, 0.1]), "scale": torch.ones(2)}
        out = ResampleToSpacingd(spacing_mm=0.2, output_key="image_fine")(data)
        self.assertIs(out["image"], image)
        self.assertEqual(tuple(out["image_fine"].shape[-2:]), (100, 85))
        torch.testing.assert_close(out["image_fine_scale"], torch.tensor([0.5, 0.5]))
        torch.testing.assert_close(out["landmarks"], POINTS)


class TestCrops(unittest.TestCase):
    def test_extract_crops_at_whole_pixels_copies_the_image(self):
        image = torch.arange(200 * 170, dtype=torch.float32).reshape(1, 200, 170)
        crops = extract_crops(image, torch.tensor([[50.0, 60.0], [100.0, 20.0]]), (9, 8))
        # crop pixel (i, j) is source pixel centre - (size - 1) / 2 + (i, j): rows 46..54, columns 56.5.. -> bilinear
        self.assertEqual(tuple(crops.shape), (2, 1, 9, 8))
        crops = extract_crops(image, torch.tensor([[50.0, 60.5]]), (9, 8))
        torch.testing.assert_close(crops[0, 0], image[0, 46:55, 57:65])

    def test_training_crops_show_their_landmark(self):
        t = LandmarkCropsd(crop_size=(48, 48), offset_sd=6.0, max_offset=16.0, rotate_range=0.3, scale_range=0.2)
        for seed in range(3):
            t.set_random_state(seed)
            data = {"image": blob_image(), "landmarks": POINTS.clone(), "spacing": torch.tensor([0.1, 0.1]),
                    "scale": torch.ones(2), "image_name": "a.png"}
            crops = t(data)
            self.assertEqual(len(crops), len(POINTS))
            for k, c in enumerate(crops):
                self.assertEqual(int(c["landmark_index"]), k)
                self.assertEqual(tuple(c["image"].shape), (1, 48, 48))
                seen = peak(c["image"])
                self.assertLess(float((seen - c["landmarks"][0]).norm()), 0.5, f"seed {seed} landmark {k}")
                self.assertTrue(bool(((c["landmarks"] > 7) & (c["landmarks"] < 40)).all()))  # within max_offset

    def test_crop_frame_measures_mm(self):
        """A point one crop pixel from the landmark is spacing / scale mm away in the crops' metric frame."""
        t = LandmarkCropsd(crop_size=(48, 48), offset_sd=6.0, max_offset=16.0, random=False)
        data = {"image": blob_image(), "landmarks": POINTS.clone(), "spacing": torch.tensor([0.1, 0.1]),
                "scale": torch.tensor([0.5, 0.5]), "image_name": "a.png"}
        c = t(data)[0]
        moved = original_from_resized(c["landmarks"] + torch.tensor([3.0, 4.0]), c["scale"])
        dist_mm = float(((moved - c["landmarks_orig"]) * c["spacing"]).norm())
        self.assertAlmostEqual(dist_mm, 5.0 * 0.1 / 0.5, places=4)

    def test_validation_crops_repeat(self):
        t = LandmarkCropsd(crop_size=(48, 48), offset_sd=6.0, max_offset=16.0, random=False)
        data = {"image": blob_image(), "landmarks": POINTS.clone(), "spacing": torch.tensor([0.1, 0.1]), "image_name": "x.png"}
        a, b = t(data), t(data)
        for ca, cb in zip(a, b):
            torch.testing.assert_close(ca["landmarks"], cb["landmarks"])
        other = t({**data, "image_name": "y.png"})
        self.assertFalse(all(torch.equal(ca["landmarks"], co["landmarks"]) for ca, co in zip(a, other)))


class TestFarOffsets(unittest.TestCase):
    def test_far_share_is_uniform_over_the_disk(self):
        """far_fraction 1: every crop centre lies uniformly in the disk of radius far_offset (mean distance 2/3 of
        it); off by default, where the offsets stay the Gaussian's."""
        t = LandmarkCropsd(crop_size=(48, 48), offset_sd=1.0, max_offset=4.0, far_fraction=1.0, far_offset=20.0,
                           rotate_range=0.0, scale_range=0.0)
        t.set_random_state(0)
        mid = torch.tensor([23.5, 23.5])
        data = {"image": blob_image(), "landmarks": POINTS.clone(), "spacing": torch.tensor([0.1, 0.1]),
                "scale": torch.ones(2), "image_name": "a.png"}
        d = torch.cat([torch.stack([(c["landmarks"][0] - mid).norm() for c in t(data)]) for _ in range(150)])
        self.assertLessEqual(float(d.max()), 20.0 + 1e-3)
        self.assertAlmostEqual(float(d.mean()), 2 / 3 * 20.0, delta=0.6)
        self.assertGreater(float((d > 10).float().mean()), 0.6)  # 1 - (10/20)^2 = 0.75 of the disk lies beyond 10
        plain = LandmarkCropsd(crop_size=(48, 48), offset_sd=1.0, max_offset=4.0, rotate_range=0.0, scale_range=0.0)
        plain.set_random_state(0)
        self.assertLessEqual(max(float((c["landmarks"][0] - mid).abs().max()) for c in plain(data)), 4.0 + 1e-3)
        with self.assertRaises(ValueError):
            LandmarkCropsd(crop_size=(48, 48), far_fraction=0.5, far_offset=30.0)  # beyond the crop


class TestRealOffsets(unittest.TestCase):
    def test_crops_centred_where_the_pipeline_would(self):
        """real_fraction 1, no jitter: each crop centre is the landmark plus its real offset (mm -> pixels of the
        grid: spacing / scale), so the landmark sits at mid - offset; images without offsets and validation crops
        keep the Gaussian; a JSON file works as a dict does."""
        import json
        import tempfile

        from bundle.refine import load_real_offsets

        n = len(POINTS)
        real = {"a.png": [[0.4 * (k % 3) - 0.4, 0.3 * (k % 2)] for k in range(n)]}  # (dy, dx) mm
        scale = torch.tensor([2.0, 2.0])  # grid pixels per original pixel: 0.1 mm / 2 = 0.05 mm per grid pixel
        data = {"image": blob_image(), "landmarks": POINTS.clone(), "spacing": torch.tensor([0.1, 0.1]),
                "scale": scale, "image_name": "a.png"}
        mid = torch.tensor([23.5, 23.5])
        t = LandmarkCropsd(crop_size=(48, 48), offset_sd=1.0, max_offset=16.0, rotate_range=0.0, scale_range=0.0,
                           real_offsets=real, real_fraction=1.0, real_jitter=0.0)
        t.set_random_state(0)
        for k, c in enumerate(t(data)):
            expected = mid - torch.tensor(real["a.png"][k]) / 0.05
            self.assertLess(float((c["landmarks"][0] - expected).norm()), 1e-3, f"landmark {k}")
        other = {**data, "image_name": "b.png"}  # no real offsets for it: the Gaussian's (|offset| <= 1 sd mostly)
        self.assertLess(max(float((c["landmarks"][0] - mid).norm()) for c in t(other)), 6.0)
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/real.json"
            with open(path, "w") as f:
                json.dump({"offsets_mm": real}, f)
            np.testing.assert_allclose(load_real_offsets(path)["a.png"], np.asarray(real["a.png"]))
        self.assertEqual(load_real_offsets("null"), {})
        with self.assertRaises(ValueError):
            LandmarkCropsd(crop_size=(48, 48), real_fraction=0.5)  # no offsets given


class TestContextChannel(unittest.TestCase):
    def test_context_channel_shows_more_of_the_image_at_lower_resolution(self):
        """With context_factor f the second channel is the crop of the image shrunk f times about the same centre: the
        landmark at p (crop pixels) appears at mid + (p - mid) / f."""
        t = LandmarkCropsd(crop_size=(48, 48), offset_sd=6.0, max_offset=16.0, random=False, context_factor=2)
        data = {"image": blob_image(sigma=4.0), "landmarks": POINTS.clone(), "spacing": torch.tensor([0.1, 0.1]),
                "scale": torch.ones(2), "image_name": "a.png"}
        mid = torch.tensor([23.5, 23.5])
        for k, c in enumerate(t(data)):
            self.assertEqual(tuple(c["image"].shape), (2, 48, 48))
            p = c["landmarks"][0]
            self.assertLess(float((peak(c["image"][:1]) - p).norm()), 0.5, f"landmark {k}")
            self.assertLess(float((peak(c["image"][1:]) - (mid + (p - mid) / 2)).norm()), 0.5, f"landmark {k}")

    def test_inference_cuts_the_crops_training_cut(self):
        """The refinement pass feeds the network exactly what LandmarkCropsd made in training for the same centre,
        with one context channel or several."""
        points = torch.round(POINTS)
        image = blob_image(points)
        for factor, channels in ((3, 2), ([3, 6], 3)):
            train = LandmarkCropsd(crop_size=(40, 40), offset_sd=0.0, max_offset=16.0, random=False, context_factor=factor)
            expected = torch.stack([c["image"] for c in train({"image": image, "landmarks": points, "image_name": "a",
                                                               "spacing": torch.tensor([0.1, 0.1])})])

            class Recorder(torch.nn.Module):
                def forward(self, x):
                    self.seen = x.clone()
                    return torch.zeros(len(x), len(points), *x.shape[-2:])

            rec = Recorder()
            data = {"image_fine": image, "image_fine_scale": torch.ones(2), "spacing": torch.tensor([0.1, 0.1]),
                    "scale": torch.ones(2), "pred_landmarks": points.clone(), "error": ""}
            RefineLandmarksd(LandmarkCropNet(rec), crop_size=(40, 40), context_factor=factor)(data)
            self.assertEqual(tuple(rec.seen.shape), (len(points), channels, 40, 40))
            torch.testing.assert_close(rec.seen, expected, atol=1e-5, rtol=0)

    def test_several_context_factors(self):
        """A list of factors gives one context channel per factor, in order (the landmark at p appears at
        mid + (p - mid) / f in channel f's crop), and the network's input channels follow; factors up to 1 are
        refused in a list and mean 'off' as a single number."""
        t = LandmarkCropsd(crop_size=(48, 48), offset_sd=6.0, max_offset=16.0, random=False, context_factor=[2, 4])
        mid = torch.tensor([23.5, 23.5])
        for k in range(len(POINTS)):  # one blob per image: the x4 view would show the others too
            data = {"image": blob_image(POINTS[k:k + 1], sigma=6.0), "landmarks": POINTS[k:k + 1].clone(),
                    "spacing": torch.tensor([0.1, 0.1]), "scale": torch.ones(2), "image_name": f"{k}.png"}
            c = t(data)[0]
            self.assertEqual(tuple(c["image"].shape), (3, 48, 48))
            p = c["landmarks"][0]
            for ch, f in ((1, 2), (2, 4)):
                self.assertLess(float((peak(c["image"][ch:ch + 1]) - (mid + (p - mid) / f)).norm()), 0.5, f"landmark {k}, x{f}")
        self.assertEqual(context_factors([4, 16]), [4.0, 16.0])
        self.assertEqual(context_factors(4), [4.0])
        self.assertEqual(context_factors(0), [])
        self.assertEqual(context_factors(None), [])
        with self.assertRaises(ValueError):
            context_factors([4, 1])
        self.assertEqual(refinement_unet(3, context_factor=[4, 16], channels=(8, 16), strides=(2,)).model[0].conv.unit0.conv.in_channels, 3)


class BlobNet(torch.nn.Module):
    """An 'oracle' refinement network: its logits for every landmark are the log of the crop (the blob)."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def forward(self, x):
        return torch.log(x.clamp_min(1e-6)).expand(-1, self.n, -1, -1)


class TestRefineLandmarks(unittest.TestCase):
    def test_select_channel(self):
        net = LandmarkCropNet(torch.nn.Conv2d(1, 5, 1))
        x = torch.rand(3, 1, 8, 8)
        full = net(x)
        self.assertEqual(tuple(full.shape), (3, 5, 8, 8))
        sel = net(x, torch.tensor([4, 0, 2]))
        torch.testing.assert_close(sel[:, 0], full[[0, 1, 2], [4, 0, 2]])
        with self.assertRaises(ValueError):
            net(x, torch.tensor([1, 2]))

    def test_rough_estimates_move_onto_the_landmarks(self):
        data = {"image": blob_image(), "spacing": torch.tensor([0.1, 0.1]), "scale": torch.ones(2)}
        data = ResampleToSpacingd(spacing_mm=0.1, output_key="image_fine")(data)
        rough = POINTS + torch.tensor([[5.0, -4.0], [-6.0, 3.0], [2.5, 7.0], [-3.0, -3.0]])
        data.update(pred_landmarks=rough, pred_mm=rough * 0.1, error="")
        out = RefineLandmarksd(LandmarkCropNet(BlobNet(len(POINTS))), crop_size=(40, 40))(data)
        torch.testing.assert_close(out["coarse_landmarks"], rough)
        err = (out["pred_landmarks"] - POINTS).norm(dim=-1)
        self.assertLess(float(err.max()), 0.2, err.tolist())
        torch.testing.assert_close(out["pred_mm"], out["pred_landmarks"] * 0.1)
        self.assertTrue(bool((out["uncertainty_mm"] > 0).all()))

    def test_shifted_crops_average_what_each_crop_finds(self):
        """Crop TTA: every shift is one more forward pass; the oracle still lands on the landmarks from each."""
        data = {"image": blob_image(), "spacing": torch.tensor([0.1, 0.1]), "scale": torch.ones(2)}
        data = ResampleToSpacingd(spacing_mm=0.1, output_key="image_fine")(data)
        rough = POINTS + torch.tensor([[5.0, -4.0], [-6.0, 3.0], [2.5, 7.0], [-3.0, -3.0]])
        data.update(pred_landmarks=rough, pred_mm=rough * 0.1, error="")
        calls = []

        class Counting(BlobNet):
            def forward(self, x):
                calls.append(len(x))
                return super().forward(x)

        shifts = [[6, 6], [-6, 6], [6, -6], [-6, -6]]
        plain = RefineLandmarksd(LandmarkCropNet(BlobNet(len(POINTS))), crop_size=(40, 40))(dict(data))
        out = RefineLandmarksd(LandmarkCropNet(Counting(len(POINTS))), crop_size=(40, 40), shifts=shifts)(dict(data))
        self.assertEqual(calls, [len(POINTS)] * 5)  # one batch per shift (one batch of all was slower on 2 cores)
        err = (out["pred_landmarks"] - POINTS).norm(dim=-1)
        self.assertLess(float(err.max()), 0.2, err.tolist())
        torch.testing.assert_close(out["spread_mm"], plain["spread_mm"])  # the spread is the unshifted crop's
        # with a network whose answer depends on where the crop sits, the result is the mean of single-crop passes
        # centred on the shifted estimates (the refinement grid is the original one here: 0.1 mm both)
        torch.manual_seed(0)
        net = LandmarkCropNet(torch.nn.Conv2d(1, len(POINTS), 5, padding=2))
        tta = RefineLandmarksd(net, crop_size=(40, 40), shifts=shifts)(dict(data))["pred_landmarks"]
        single = [RefineLandmarksd(net, crop_size=(40, 40))({**data, "pred_landmarks": rough + torch.tensor(s)})
                  ["pred_landmarks"] for s in [[0.0, 0.0]] + shifts]
        torch.testing.assert_close(tta, torch.stack(single).mean(0))

    def test_uncertainty_never_below_one_grid_pixel(self):
        """A calibration line that dips below zero (a negative intercept) is floored at the refinement grid's pixel."""
        data = {"image": blob_image(), "spacing": torch.tensor([0.1, 0.1]), "scale": torch.ones(2)}
        data = ResampleToSpacingd(spacing_mm=0.2, output_key="image_fine")(data)
        data.update(pred_landmarks=POINTS.clone(), error="")
        out = RefineLandmarksd(LandmarkCropNet(BlobNet(len(POINTS))), crop_size=(40, 40), calibration=(1.0, -100.0))(data)
        torch.testing.assert_close(out["uncertainty_mm"], torch.full((len(POINTS),), 0.2))
        out = RefineLandmarksd(LandmarkCropNet(BlobNet(len(POINTS))), crop_size=(40, 40), calibration=(1.0, 5.0))(data)
        torch.testing.assert_close(out["uncertainty_mm"], out["spread_mm"] + 5.0)

    def test_fusion_with_the_global_heatmap(self):
        """With a refinement network that has no opinion (flat logits), fusing gives back the global model's peak,
        read through the two grids; with the oracle it stays on the landmark."""
        coarse_scale = torch.tensor([0.4, 0.4])  # the global model's grid: 80 x 68
        coarse_logits = torch.log(render_gaussian_heatmaps(
            (POINTS + 0.5) * coarse_scale - 0.5, (80, 68), 1.5).clamp_min(1e-9))
        data = {"image": blob_image(), "spacing": torch.tensor([0.1, 0.1]), "scale": torch.ones(2)}
        data = ResampleToSpacingd(spacing_mm=0.2, output_key="image_fine")(data)  # from the original, as in the configs
        data.update(scale=coarse_scale, pred=coarse_logits)  # what the global model's resampling and network left
        rough = POINTS + torch.tensor([[5.0, -4.0], [-6.0, 3.0], [2.5, 7.0], [-3.0, -3.0]])
        data.update(pred_landmarks=rough, error="")

        class Flat(torch.nn.Module):
            def forward(self, x):
                return torch.zeros(len(x), len(POINTS), *x.shape[-2:])

        out = RefineLandmarksd(LandmarkCropNet(Flat()), crop_size=(40, 40), coarse_weight=1.0)(data)
        err = (out["pred_landmarks"] - POINTS).norm(dim=-1)
        self.assertLess(float(err.max()), 0.5, err.tolist())
        out = RefineLandmarksd(LandmarkCropNet(BlobNet(len(POINTS))), crop_size=(40, 40), coarse_weight=1.0)(data)
        err = (out["pred_landmarks"] - POINTS).norm(dim=-1)
        self.assertLess(float(err.max()), 0.5, err.tolist())

    def test_unreadable_image_passes_through(self):
        data = {"error": "cannot read image x.png", "image_fine": torch.zeros(1, 8, 8)}
        out = RefineLandmarksd(LandmarkCropNet(BlobNet(4)), crop_size=(8, 8))(data)
        self.assertNotIn("pred_landmarks", out)


if __name__ == "__main__":
    unittest.main()


class TestCaptureRangeScript(unittest.TestCase):
    def test_reports_the_error_left_per_displacement(self):
        """scripts/capture_range.py on a synthetic ISBI-layout set: one entry per displacement with a per-landmark
        table; an untrained network leaves displacements roughly where they were, so the error grows with them."""
        import contextlib
        import io
        import json
        import sys
        import tempfile
        from pathlib import Path

        from bundle.synthetic import generate_synthetic_dataset

        root = Path(__file__).resolve().parents[1]
        sys.path.insert(0, str(root / "scripts"))
        import capture_range

        with tempfile.TemporaryDirectory() as tmp:
            data = generate_synthetic_dataset(Path(tmp) / "synthetic", n_train=5, n_test=0)
            torch.manual_seed(0)
            ckpt = Path(tmp) / "refine.pt"
            torch.save({"model": LandmarkCropNet(refinement_unet(19, context_factor=4)).state_dict()}, ckpt)
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                self.assertEqual(capture_range.main(["--dataset_dir", str(data), "--refine_ckpt_path", str(ckpt),
                                                     "--distances_mm", "0", "20", "--limit", "1"]), 0)
            result = json.loads(out.getvalue())
        self.assertEqual(result["n_images"], 1)
        self.assertEqual(list(result["by_distance"]), ["0", "20"])
        self.assertEqual(len(result["by_distance"]["20"]["per_landmark"]), 19)
        self.assertGreater(result["by_distance"]["20"]["mre_mm"], result["by_distance"]["0"]["mre_mm"])
