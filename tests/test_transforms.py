"""A landmark carried through each spatial transform lands within 0.5 px of where the warped image shows it."""

import math
import unittest

import torch

from bundle.heatmaps import heatmap_to_landmarks, render_gaussian_heatmaps
from bundle.transforms import (
    CoarsePixelCheckd,
    HeatmapToLandmarksd,
    LandmarksToHeatmapd,
    RandAffineLandmarksd,
    RandElasticLandmarksd,
    ResizeLandmarksd,
    ScaleIntensityRangePercentilesd,
    original_from_resized,
)

POINTS = torch.tensor([[30.3, 40.6], [70.8, 20.2], [55.5, 66.1], [20.0, 75.4]])  # (y, x)


def blob_image(points: torch.Tensor, size=(100, 90), sigma=3.0) -> torch.Tensor:
    """One Gaussian blob per landmark, each in its own channel, so each can be located in the warped image."""
    return render_gaussian_heatmaps(points, size, sigma)


def blob_centres(image: torch.Tensor) -> torch.Tensor:
    """Sub-pixel peak of each channel: where the warped image shows the landmark."""
    return heatmap_to_landmarks(image[None].clamp_min(1e-6))[0][0]


class TestLandmarksFollowImage(unittest.TestCase):
    def check(self, transform, data, atol=0.5):
        out = transform(data)
        seen = blob_centres(out["image"])
        err = (seen - out["landmarks"]).norm(dim=-1)
        self.assertLess(float(err.max()), atol, f"errors {err.tolist()}")
        return out

    def test_resize(self):
        for size in ((50, 45), (64, 32), (160, 120)):
            data = {"image": blob_image(POINTS), "landmarks": POINTS.clone(), "scale": torch.ones(2)}
            out = self.check(ResizeLandmarksd(spatial_size=size), data)
            back = original_from_resized(out["landmarks"], out["scale"])
            self.assertLess(float((back - POINTS).abs().max()), 1e-4)

    def test_affine(self):
        t = RandAffineLandmarksd(prob=1.0, rotate_range=math.radians(15), scale_range=0.15, translate_range=0.05)
        for seed in range(5):
            t.set_random_state(seed)
            data = {"image": blob_image(POINTS), "landmarks": POINTS.clone()}
            out = self.check(t, data)
            self.assertGreater(float((out["landmarks"] - POINTS).abs().max()), 0.5)  # it really moved them

    def test_elastic(self):
        t = RandElasticLandmarksd(prob=1.0, magnitude=4.0, grid=(5, 4))
        for seed in range(5):
            t.set_random_state(seed)
            data = {"image": blob_image(POINTS), "landmarks": POINTS.clone()}
            out = self.check(t, data)
            self.assertGreater(float((out["landmarks"] - POINTS).abs().max()), 0.3)

    def test_prob_zero_is_identity(self):
        data = {"image": blob_image(POINTS), "landmarks": POINTS.clone()}
        for t in (RandAffineLandmarksd(prob=0.0), RandElasticLandmarksd(prob=0.0)):
            out = t(dict(data))
            self.assertTrue(torch.equal(out["landmarks"], POINTS))

    def test_heatmap_roundtrip_to_original_pixels(self):
        """landmarks -> resize -> heatmap -> decode -> back to original pixels recovers the originals."""
        orig = POINTS * 10  # a 1000 x 900 image
        d = {"image": torch.zeros(1, 1000, 900), "landmarks": orig.clone(), "landmarks_orig": orig.clone(),
             "scale": torch.ones(2), "spacing": torch.tensor([0.1, 0.1])}
        d = ResizeLandmarksd(spatial_size=(200, 180))(d)
        d = LandmarksToHeatmapd(sigma=2.0)(d)
        d["pred"] = torch.log(d["label"].clamp_min(1e-30))
        d = HeatmapToLandmarksd()(d)
        self.assertLess(float((d["pred_landmarks"] - orig).norm(dim=-1).max()), 0.1 * 5)  # 0.1 px of the grid
        self.assertTrue(torch.allclose(d["true_mm"], orig * 0.1))
        self.assertEqual(tuple(d["uncertainty_mm"].shape), (4,))

    def test_ill_arg(self):
        with self.assertRaises(ValueError):
            ResizeLandmarksd(spatial_size=(4, 4))
        with self.assertRaises(ValueError):
            LandmarksToHeatmapd(sigma=-1)


if __name__ == "__main__":
    unittest.main()


class TestCoarsePixelCheck(unittest.TestCase):
    def test_coarse_pixels_are_listed_to_check(self):
        """Pixels coarser than max_mm on either axis add a check naming the spacing and the size; finer ones, an
        existing check list, or the check turned off are left as they are."""
        item = {"image_name": "a.png", "spacing": torch.tensor([0.1, 0.1]), "orig_size": torch.tensor([2400.0, 1935.0])}
        self.assertNotIn("checks", CoarsePixelCheckd(1.0)(item))
        coarse = {**item, "spacing": torch.tensor([0.8, 1.6]), "orig_size": torch.tensor([150.0, 121.0]),
                  "checks": ["earlier"]}
        with self.assertLogs("bundle.transforms", "WARNING") as logs:
            out = CoarsePixelCheckd(1.0)(coarse)
        self.assertEqual(out["checks"][0], "earlier")
        self.assertIn("its pixels are 0.8 x 1.6 mm (121 x 150 pixels), coarser than 1 mm", out["checks"][1])
        self.assertIn("a.png", logs.output[0])
        self.assertEqual(coarse["checks"], ["earlier"])  # the input item is not changed
        self.assertEqual(CoarsePixelCheckd(None)(coarse)["checks"], ["earlier"])
        self.assertEqual(CoarsePixelCheckd(0)(coarse)["checks"], ["earlier"])
        self.assertEqual(CoarsePixelCheckd(2.0)(coarse)["checks"], ["earlier"])


class TestPercentileScaling(unittest.TestCase):
    def test_same_as_monais(self):
        """bundle.transforms.ScaleIntensityRangePercentilesd gives MONAI's result (both interpolate linearly), on
        images below and above the 1M pixels where MONAI switches from torch.quantile to numpy, with each option,
        and keeps the MetaTensor type and float32."""
        from monai.data import MetaTensor
        from monai.transforms import ScaleIntensityRangePercentilesd as MonaiScale

        g = torch.Generator().manual_seed(0)
        for shape in ((1, 40, 30), (2, 33, 17), (1, 1100, 1000)):
            image = MetaTensor(torch.rand(*shape, generator=g) ** 3 * 255)
            for options in ({"clip": True}, {"clip": False}, {"relative": True}, {"channel_wise": True, "clip": True}):
                args = ("image", 0.5, 99.5, 0.0, 1.0)
                ours = ScaleIntensityRangePercentilesd(*args, **options)({"image": image})["image"]
                monai = MonaiScale(*args, **options)({"image": image})["image"]
                self.assertIsInstance(ours, MetaTensor)
                self.assertEqual(ours.dtype, torch.float32)
                torch.testing.assert_close(ours, monai, rtol=0, atol=1e-5, msg=f"{shape} {options}")
        flat = torch.full((1, 8, 8), 7.0)  # no range to scale: as MONAI does it
        torch.testing.assert_close(ScaleIntensityRangePercentilesd("i", 1, 99, 0.0, 1.0)({"i": flat})["i"],
                                   MonaiScale("i", 1, 99, 0.0, 1.0)({"i": flat})["i"])
        with self.assertRaisesRegex(ValueError, "relative"):
            ScaleIntensityRangePercentilesd("i", 1, 99, None, 1.0, relative=True)({"i": flat})
