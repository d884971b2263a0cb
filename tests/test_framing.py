"""Images framed unlike the training images (landscape pictures, wide borders) are read again in the training frame:
the frame model, the framing measures and their range, the crop, and the landmarks mapped back to the image."""

import logging
import unittest

import numpy as np
import torch

from bundle.framing import RandTightCropd, ReframeImaged, crop_box, fit_frame, fit_frame_model, framing, out_of_range
from bundle.transforms import HeatmapToLandmarksd, heatmap_grid

NET_H, NET_W = 40, 30  # the stand-in network's input; the training frame is 40 x 30 mm at 1 mm pixels
RADIUS = 8.0


def disk(h: int, w: int, centre, radius: float = RADIUS) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius**2).float()[None]


def gaussian_logits(pts, sigma: float) -> torch.Tensor:
    """Heatmap logits ``(len(pts), NET_H, NET_W)``: a Gaussian of ``sigma`` input pixels at each ``(y, x)``."""
    yy, xx = torch.meshgrid(torch.arange(NET_H, dtype=torch.float32), torch.arange(NET_W, dtype=torch.float32), indexing="ij")
    return torch.stack([-((yy - py) ** 2 + (xx - px) ** 2) / (2 * sigma**2) for py, px in pts])


class RoundOnlyNet(torch.nn.Module):
    """A stand-in global network that has learnt round skulls: landmark 0 at the centroid of the bright pixels,
    landmark 1 at their lowest point (centroid + 2 SD down, the bottom of a disk); its heatmaps are sharp when the
    bright blob is round in its input and broad when the input squeezes it."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        yy, xx = torch.meshgrid(torch.arange(NET_H, dtype=torch.float32), torch.arange(NET_W, dtype=torch.float32), indexing="ij")
        out = []
        for img in x[:, 0]:
            w = (img > 0.5).float()
            cy, cx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
            sy, sx = ((w * (yy - cy) ** 2).sum() / w.sum()).sqrt(), ((w * (xx - cx) ** 2).sum() / w.sum()).sqrt()
            sigma = 0.7 if abs(float(sy / sx) - 1) < 0.1 else 4.0
            pts = [(cy, cx), (cy + 2 * sy, cx)]
            out.append(gaussian_logits(pts, sigma))
        return torch.stack(out) + self.dummy


def frame_model() -> dict:
    """The frame model of 'training images' 40 x 30 mm with the disk near their middle."""
    shapes = [np.array([[20.0 + dy, 15.0 + dx], [28.0 + dy, 15.0 + dx]]) for dy, dx in ((0, 0), (1, -1), (-1, 1))]
    model = fit_frame_model(shapes, [(40.0, 30.0)] * 3)
    model.update({"mean": model["frame_mean_mm"], "sd_mm": [1.0, 1.0]})  # a shape model's entries
    return model


def item(h: int, w: int, centre, radius: float = RADIUS, image: torch.Tensor | None = None) -> dict:
    """A network input resized from an ``h x w`` image (1 mm pixels; a disk, or ``image``) and the image itself as
    the fine copy."""
    from bundle.transforms import resize_image

    image = disk(h, w, centre, radius) if image is None else image
    net_input, scale = resize_image(image, (NET_H, NET_W))
    return {"image": net_input, "image_fine": image, "image_fine_scale": torch.ones(2), "scale": scale,
            "spacing": torch.ones(2), "orig_size": torch.tensor([h, w], dtype=torch.float32), "image_name": "x.png"}


def infer(inputs, network):
    return network(inputs)


def run(d: dict, **kwargs) -> dict:
    net, decode = RoundOnlyNet(), HeatmapToLandmarksd()
    d = decode({**d, "pred": net(d["image"][None])[0]})
    return ReframeImaged(net, infer, decode, frame_model(), **kwargs)(d)


class TestFrameMeasures(unittest.TestCase):
    def test_fit_recovers_scale_and_translation(self):
        ref = np.array([[10.0, 20.0], [30.0, 5.0], [50.0, 40.0]])
        s, t = fit_frame(1.3 * ref + [7.0, -4.0], ref)
        self.assertAlmostEqual(s, 1.3)
        np.testing.assert_allclose(t, [7.0, -4.0], atol=1e-9)

    def test_measures_of_training_and_landscape_frames(self):
        model = frame_model()
        self.assertEqual(model["frame_size_mm"], [40.0, 30.0])
        self.assertEqual(model["frame_range"]["aspect"], [1.0, 1.0])
        as_trained = framing(np.array(model["frame_mean_mm"]), (40.0, 30.0), model)
        for k, v in (("scale_y", 1.0), ("scale_x", 1.0), ("aspect", 1.0), ("centre_y", 0.0), ("centre_x", 0.0)):
            self.assertAlmostEqual(as_trained[k], v)
        self.assertEqual(out_of_range(as_trained, model["frame_range"], 0.1), [])
        # the same head in the middle of a 60 mm wide picture: squeezed to half its width in the network input
        wide = framing(np.array(model["frame_mean_mm"]) + [0.0, 15.0], (40.0, 60.0), model)
        self.assertAlmostEqual(wide["aspect"], 0.5)
        np.testing.assert_allclose(wide["box_mm"], [0.0, 15.0, 40.0, 45.0], atol=1e-9)
        self.assertEqual([m.split()[0] for m in out_of_range(wide, model["frame_range"], 0.1)], ["scale_x", "aspect"])
        # a head shifted within the training range plus margin is left alone; beyond it, not
        shifted = framing(np.array(model["frame_mean_mm"]) + [0.0, 3.0], (40.0, 30.0), model)
        self.assertAlmostEqual(shifted["centre_x"], 3.0 / 30.0)
        self.assertEqual(out_of_range(shifted, model["frame_range"], 0.1), [])
        self.assertEqual(len(out_of_range(shifted, model["frame_range"], 0.0)), 1)

    def test_crop_pads_with_zeros(self):
        image = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4) + 1
        out = crop_box(image, [-1, 2, 2, 6])
        self.assertEqual(tuple(out.shape), (1, 3, 4))
        torch.testing.assert_close(out[0], torch.tensor([[0, 0, 0, 0], [3, 4, 0, 0], [7, 8, 0, 0.0]]))
        # the other fills: the nearest edge pixel repeated, the image's median
        edge = crop_box(image, [-1, 2, 2, 6], "edge")
        torch.testing.assert_close(edge[0], torch.tensor([[3, 4, 4, 4], [3, 4, 4, 4], [7, 8, 8, 8.0]]))
        median = crop_box(image, [-1, 2, 2, 6], "median")
        torch.testing.assert_close(median[0], torch.tensor([[6, 6, 6, 6], [3, 4, 6, 6], [7, 8, 6, 6.0]]))
        torch.testing.assert_close(crop_box(image, [0, 1, 2, 3], "edge"), image[:, 0:2, 1:3])  # inside: the same
        with self.assertRaises(ValueError):
            crop_box(image, [0, 0, 2, 2], "reflect")

    def test_decoding_reads_the_heatmap_grid(self):
        logits = torch.full((1, 10, 10), -50.0)
        logits[0, 4, 6] = 0.0
        d = {"pred": logits, "scale": torch.tensor([0.5, 0.5]), "spacing": torch.ones(2)}
        self.assertEqual(HeatmapToLandmarksd()(d)["pred_landmarks"].tolist(), [[8.5, 12.5]])
        d["pred_frame"] = torch.tensor([[100.0, 200.0], [0.25, 0.25]])
        torch.testing.assert_close(heatmap_grid(d)[0], torch.tensor([100.0, 200.0]))
        self.assertEqual(HeatmapToLandmarksd()(d)["pred_landmarks"].tolist(), [[100 + 17.5, 200 + 25.5]])


class TestRandTightCrop(unittest.TestCase):
    def setUp(self):
        self.image = torch.rand(1, 60, 50) + 1  # no zeros: a zero fill shows
        self.landmarks = torch.tensor([[20.0, 15.5], [38.2, 30.0], [25.0, 41.0]])

    def test_the_head_kept_the_rest_filled_the_landmarks_still(self):
        t = RandTightCropd(prob=1.0, min_margin=0.05)
        boxes = set()
        for seed in range(20):
            t.set_random_state(seed)
            d = t({"image": self.image, "landmarks": self.landmarks.clone()})
            t.set_random_state(seed)
            t.randomize()
            y0, x0, y1, x1 = t.box(self.landmarks, (60, 50))
            boxes.add((y0, x0, y1, x1))
            # the box keeps at least the least margin (3 of 60 rows, 2.5 of 50 columns) beyond the outermost landmarks
            self.assertTrue(y0 <= 20 - 3 and x0 <= 15.5 - 2.5 and y1 - 1 >= 38.2 + 3 and x1 - 1 >= 41 + 2.5, (y0, x0, y1, x1))
            self.assertTrue(0 <= y0 and 0 <= x0 and y1 <= 60 and x1 <= 50)
            out = d["image"]
            self.assertEqual(tuple(out.shape), (1, 60, 50))
            torch.testing.assert_close(out[:, y0:y1, x0:x1], self.image[:, y0:y1, x0:x1])  # the picture inside
            ys, xs = torch.arange(60).clamp(y0, y1 - 1), torch.arange(50).clamp(x0, x1 - 1)
            torch.testing.assert_close(out, self.image[:, ys][:, :, xs])  # its edge pixels beyond
            torch.testing.assert_close(d["landmarks"], self.landmarks)
        self.assertGreater(len(boxes), 10)  # random boxes
        self.assertIn(True, [b != (0, 0, 60, 50) for b in boxes])

    def test_zero_fill(self):
        t = RandTightCropd(prob=1.0, min_margin=0.0, fill="zeros")
        t.set_random_state(3)
        out = t({"image": self.image, "landmarks": self.landmarks})["image"]
        t.set_random_state(3)
        t.randomize()
        y0, x0, y1, x1 = t.box(self.landmarks, (60, 50))
        self.assertEqual(int((out > 0).sum()), (y1 - y0) * (x1 - x0))

    def test_off_by_default_and_draws_nothing(self):
        """At prob 0 the image is untouched and the random stream is not used: trainings without it replay exactly."""
        t = RandTightCropd()
        t.set_random_state(7)
        d = t({"image": self.image, "landmarks": self.landmarks})
        self.assertIs(d["image"], self.image)
        self.assertEqual(t.R.rand(), np.random.RandomState(7).rand())
        with self.assertRaises(ValueError):
            RandTightCropd(prob=1.0, fill="reflect")
        with self.assertRaises(ValueError):
            RandTightCropd(prob=1.5)


class TestVariantDataset(unittest.TestCase):
    def test_crop_to_landmarks(self):
        """scripts/variant_dataset.py --crop_to_landmarks cuts each image to its landmarks' box plus the margin, and
        the annotations move with it."""
        import sys
        import tempfile
        from pathlib import Path

        from PIL import Image

        from bundle.synthetic import generate_synthetic_dataset

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
        import variant_dataset

        with tempfile.TemporaryDirectory() as tmp:
            src = generate_synthetic_dataset(Path(tmp) / "src", 2, 1)
            variant_dataset.main([str(src), str(Path(tmp) / "dst"), "--crop_to_landmarks", "5"])
            for image in sorted((src / "RawImage").glob("*/*")):
                def points(root, doctor):
                    lines = (root / "AnnotationsByMD" / doctor / f"{image.stem}.txt").read_text().splitlines()[:19]
                    return np.array([[float(v) for v in line.split(",")] for line in lines])

                both = np.concatenate([points(src, d) for d in ("400_senior", "400_junior")])
                x0, y0 = np.floor(both.min(0)).astype(int) - 5
                x1, y1 = np.ceil(both.max(0)).astype(int) + 6
                with Image.open(image) as im:
                    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, im.width), min(y1, im.height)
                with Image.open(Path(tmp) / "dst" / "RawImage" / image.parent.name / image.name) as out:
                    self.assertEqual(out.size, (x1 - x0, y1 - y0))
                np.testing.assert_allclose(points(Path(tmp) / "dst", "400_senior"), points(src, "400_senior") - [x0, y0])


LOST_POINTS = [(20.0, 15.0), (28.0, 15.0)]  # where a lost stand-in network puts the landmarks: the training average


class BigBlobLostNet(RoundOnlyNet):
    """RoundOnlyNet that is lost when the blob fills its input more than any training skull did (its SD above 5
    input pixels; a training disk's is 4): broad heatmaps at the landmarks' average place in the input, which a
    tight crop's framing then finds normal. Counts its calls."""

    calls = 0

    def forward(self, x):
        self.calls += len(x)
        out = super().forward(x)
        yy = torch.arange(NET_H, dtype=torch.float32)[:, None]
        for i, img in enumerate(x[:, 0]):
            w = (img > 0.5).float()
            cy = (w * yy).sum() / w.sum()
            if float(((w * (yy - cy) ** 2).sum() / w.sum()).sqrt()) > 5:
                out[i] = gaussian_logits(LOST_POINTS, 4.0)
        return out


class FacingNet(torch.nn.Module):
    """A stand-in global network that has learnt round skulls facing right (a nub on the blob's right: positive
    skew along x) at their training size: sharp heatmaps at the blob's centre and lowest point then; broad ones for
    a blob facing left; and, for a blob that fills its input more than any training skull (SD above 5 input pixels),
    broad heatmaps at the landmarks' average place, a little less broad for a blob facing left (so that among lost
    readings the wrong orientation looks the surer)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        yy, xx = torch.meshgrid(torch.arange(NET_H, dtype=torch.float32), torch.arange(NET_W, dtype=torch.float32), indexing="ij")
        out = []
        for img in x[:, 0]:
            w = (img > 0.5).float()
            n = w.sum().clamp(min=1)
            cy, cx = (w * yy).sum() / n, (w * xx).sum() / n
            sy = ((w * (yy - cy) ** 2).sum() / n).sqrt()
            right = float((w * (xx - cx) ** 3).sum()) > 0
            if sy > 5:
                pts, sigma = LOST_POINTS, 4.0 if right else 3.8
            else:
                pts, sigma = [(cy, cx), (cy + 2 * sy, cx)], 0.7 if right else 4.0
            out.append(gaussian_logits(pts, sigma))
        return torch.stack(out) + self.dummy


def tight_crop() -> dict:
    """A head cut tightly: a 20 x 15 mm picture (the training frame's shape, half its size) holding a disk of
    radius 6 mm, which fills the network's input more than any training skull."""
    return item(20, 15, (10, 7.5), radius=6.0)


class TestReframeImaged(unittest.TestCase):
    def test_a_landscape_picture_is_read_in_the_training_frame(self):
        d = item(40, 60, (20, 30))
        first = HeatmapToLandmarksd()({**d, "pred": RoundOnlyNet()(d["image"][None])[0]})
        with self.assertLogs("bundle.framing", logging.INFO) as logs:
            out = run(d)
        self.assertEqual(out["reframed"], 1)  # read again once: the second reading is framed as in training
        self.assertAlmostEqual(out["framing"]["aspect"], 1.0, delta=0.05)
        self.assertIn("aspect 0.50", logs.output[0])
        self.assertLess(float(out["spread_mm"].mean()), float(first["spread_mm"].mean()) / 3)
        torch.testing.assert_close(out["pred_landmarks"], torch.tensor([[20.0, 30.0], [28.0, 30.0]]), atol=0.35, rtol=0)
        torch.testing.assert_close(out["pred_mm"], out["pred_landmarks"])
        self.assertEqual(out["image"].shape, d["image"].shape)  # the overlay's images are left as they were
        torch.testing.assert_close(out["image_fine"], d["image_fine"])

    def test_the_crop_is_scaled_by_the_intensity_transform_given(self):
        """The dictionary transform given (the configs pass their input chain's) scales the reframed crop, on its
        first key; an array transform is refused at once."""
        from monai.transforms import Lambdad, ScaleIntensityRangePercentiles, ScaleIntensityRangePercentilesd

        d = item(40, 60, (20, 30))
        default = run(d)
        same = run(d, intensity=ScaleIntensityRangePercentilesd("img", 0.5, 99.5, 0.0, 1.0, clip=True))
        torch.testing.assert_close(same["pred_landmarks"], default["pred_landmarks"])
        self.assertEqual(same["reframed"], 1)
        seen = []
        run(d, intensity=Lambdad("x", lambda img: seen.append(tuple(img.shape)) or img * 0.9))  # 0.9: still readable
        self.assertEqual(seen, [(1, NET_H, NET_W)])  # the network input, scaled once for the one reading again
        with self.assertRaisesRegex(TypeError, "dictionary transform.*ScaleIntensityRangePercentiles"):
            run(d, intensity=ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True))

    def test_an_image_framed_as_in_training_is_left_alone(self):
        d = item(40, 30, (20, 15))
        out = run(d)
        self.assertEqual(out["reframed"], 0)
        self.assertNotIn("pred_frame", out)
        self.assertAlmostEqual(out["framing"]["aspect"], 1.0)
        torch.testing.assert_close(out["pred_landmarks"], torch.tensor([[20.0, 15.0], [28.0, 15.0]]), atol=0.35, rtol=0)
        self.assertEqual(run(d, always=True)["reframed"], 1)  # read again on request; as sure, so kept

    def test_a_reading_that_is_less_sure_is_not_kept(self):
        d = item(40, 30, (20, 15))
        yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(30.0), indexing="ij")
        d["image_fine"] = ((((yy - 20) / 8) ** 2 + ((xx - 15) / 4) ** 2) <= 1).float()[None]  # the copy: an ellipse
        with self.assertLogs("bundle.framing", logging.INFO) as logs:
            out = run(d, always=True)
        self.assertFalse(out["reframed"])
        self.assertIn("kept as it is", logs.output[0])
        d["image_fine"] = torch.zeros_like(d["image_fine"])  # a blank copy: no number at all, not kept either
        self.assertFalse(run(d, always=True)["reframed"])

    def test_off_without_a_frame_model_or_the_image_copy(self):
        d = item(40, 60, (20, 30))
        net, decode = RoundOnlyNet(), HeatmapToLandmarksd()
        d = decode({**d, "pred": net(d["image"][None])[0]})
        old = {"mean": [[0.0, 0.0], [1.0, 1.0]], "sd_mm": [1.0, 1.0]}
        with self.assertLogs("bundle.framing", logging.WARNING):
            self.assertFalse(ReframeImaged(net, infer, decode, old)(d)["reframed"])
        self.assertFalse(ReframeImaged(net, infer, decode, None)(d)["reframed"])
        no_copy = {k: v for k, v in d.items() if k != "image_fine"}
        self.assertFalse(ReframeImaged(net, infer, decode, frame_model())(no_copy)["reframed"])
        with self.assertRaises(ValueError):
            ReframeImaged(net, infer, decode, frame_model(), margin=-1)
        with self.assertRaises(ValueError):
            ReframeImaged(net, infer, decode, frame_model(), iterations=0)

    def test_a_skull_of_the_wrong_size_in_mm_warns_of_the_pixel_spacing(self):
        d = item(40, 30, (20, 15))
        with self.assertNoLogs("bundle.framing", logging.WARNING):
            self.assertAlmostEqual(run(d)["framing"]["skull_scale"], 1.0, delta=0.05)
        d["spacing"] = torch.tensor([1.5, 1.5])  # what the file or the config claims: the landmarks 1.5 times too far apart
        with self.assertLogs("bundle.framing", logging.WARNING) as logs:
            out = run(d)
        self.assertEqual(out["reframed"], 0)  # the framing does not depend on the spacing
        self.assertEqual(len(out["checks"]), 1)  # report.html shows it with the image
        self.assertIn("check the pixel spacing", out["checks"][0])
        with self.assertNoLogs("bundle.framing", logging.WARNING):  # a lost reading says nothing of the skull's size
            run(d, sure_spread_mm=0.1)
        self.assertRegex(logs.output[0], r"x.png: the skull measures 1\.[45]\d times .* check the pixel spacing.* about (0\.9|1\.0)\d* x (0\.9|1\.0)")

    def test_a_lost_reading_that_no_frame_fits_is_left_alone(self):
        """A reading lost enough to put the landmarks upside down (only a negative scale fits the frame model):
        nothing to frame it by, so it is passed on as it is (OrientImaged tries the other readings)."""
        d = item(40, 60, (20, 30))
        net, decode = RoundOnlyNet(), HeatmapToLandmarksd()
        d = decode({**d, "pred": net(d["image"][None])[0]})
        d["pred_mm"] = d["pred_mm"].flip(0)
        with self.assertRaises(ValueError):
            framing(d["pred_mm"].numpy(), (40.0, 60.0), frame_model())
        out = ReframeImaged(net, infer, decode, frame_model())(d)
        self.assertEqual(out["reframed"], 0)
        torch.testing.assert_close(out["pred_mm"], d["pred_mm"])

    def test_a_lost_reading_that_no_frame_fits_is_still_read_widened(self):
        """Unsure with landmarks no frame fits (upside down): nothing to reframe by, but with ``widen`` the image is
        still read in a wider frame, and that reading, sure, is kept and framed."""
        net, decode = BigBlobLostNet(), HeatmapToLandmarksd()
        d = tight_crop()
        d = decode({**d, "pred": net(d["image"][None])[0]})
        d["pred_mm"] = d["pred_mm"].flip(0)
        self.assertNotIn("framing", ReframeImaged(net, infer, decode, frame_model(), sure_spread_mm=1.5)(d))
        out = ReframeImaged(net, infer, decode, frame_model(), sure_spread_mm=1.5, widen=[2.0])(d)
        self.assertEqual((out["widened"], out["reframed"]), (2.0, 1))
        self.assertIn("framing", out)
        torch.testing.assert_close(out["pred_landmarks"], torch.tensor([[10.0, 7.5], [16.0, 7.5]]), atol=0.5, rtol=0)

    def test_the_reading_chosen_is_framed_and_judged_framed(self):
        """A landscape picture makes every reading of the whole image unsure: the orientation is chosen among them
        (as it is), then framed, and framed it is sure, so no warning says the image is unsure."""
        from bundle.orientation import OrientImaged

        d = item(40, 60, (20, 30))
        net, decode = RoundOnlyNet(), HeatmapToLandmarksd()
        d = decode({**d, "pred": net(d["image"][None])[0]})
        self.assertGreater(float(d["spread_mm"].mean()), 2.0)
        reframe = ReframeImaged(net, infer, decode, frame_model())
        with self.assertNoLogs("bundle.orientation", logging.WARNING):
            out = OrientImaged(net, infer, decode, "auto", "bright", auto_spread_mm=2.0, reframe=reframe)(d)
        self.assertEqual(out["reframed"], 1)
        self.assertFalse(out["mirrored"] or out["inverted"])
        self.assertGreater(float(out["reading_spread_mm"][0]), 2.0)  # the whole image as it is: unsure
        self.assertFalse(bool(torch.isnan(out["reading_spread_mm"][1])))  # so the mirrored reading was tried
        self.assertLess(float(out["spread_mm"].mean()), 2.0)
        torch.testing.assert_close(out["pred_landmarks"], torch.tensor([[20.0, 30.0], [28.0, 30.0]]), atol=0.35, rtol=0)
        with self.assertLogs("bundle.orientation", logging.WARNING):  # without the framing it stays unsure
            OrientImaged(net, infer, decode, "auto", "bright", auto_spread_mm=2.0)(d)

    def test_an_image_unsure_however_read_is_read_in_a_wider_frame(self):
        """A tight crop whose lost reading looks framed as in training is not reframed; with ``widen`` it is also
        read in the middle of a frame twice its size, where the skull has its training size, and that surer reading
        is then framed as in training (read again a second time), its landmarks mapped back into the picture."""
        net, decode = BigBlobLostNet(), HeatmapToLandmarksd()
        d = tight_crop()
        d = decode({**d, "pred": net(d["image"][None])[0]})
        lost = ReframeImaged(net, infer, decode, frame_model(), sure_spread_mm=1.5)(d)
        self.assertEqual((lost["reframed"], lost["widened"]), (0, 0.0))  # its framing looks normal: not read again
        self.assertGreater(float(lost["spread_mm"].mean()), 1.5)
        net.calls = 0
        with self.assertLogs("bundle.framing", logging.INFO) as logs:
            out = ReframeImaged(net, infer, decode, frame_model(), sure_spread_mm=1.5, widen=[2.0])(d)
        self.assertEqual(net.calls, 2)  # twice the picture (sure, the skull small), then the training frame around it
        self.assertEqual((out["widened"], out["reframed"]), (2.0, 1))
        said = [line for line in logs.output if "still unsure" in line]
        self.assertIn("read again in a frame 2 times the image", said[0])
        self.assertIn("then in the training frame", said[0])
        self.assertLess(float(out["spread_mm"].mean()), 1.5)
        # the disk's centre and lowest point (the lost reading put that at 14); a disk 6 pixels in radius is coarse
        torch.testing.assert_close(out["pred_landmarks"], torch.tensor([[10.0, 7.5], [16.0, 7.5]]), atol=0.5, rtol=0)
        torch.testing.assert_close(lost["pred_landmarks"][1], torch.tensor([14.0, 7.5]), atol=0.35, rtol=0)
        self.assertAlmostEqual(out["framing"]["scale_y"], 1.0, delta=0.05)
        net.calls = 0
        with self.assertLogs("bundle.framing", logging.INFO) as logs:  # 1.5 times: the skull at its training size
            both = ReframeImaged(net, infer, decode, frame_model(), sure_spread_mm=1.5, widen=[2.0, 1.5])(d)
        self.assertEqual((net.calls, both["widened"], both["reframed"]), (2, 1.5, 0))  # both read, the surer kept
        self.assertTrue(any("read again in a frame 1.5 times the image (mean" in line for line in logs.output))
        torch.testing.assert_close(both["pred_landmarks"], out["pred_landmarks"], atol=0.35, rtol=0)

    def test_widening_leaves_sure_readings_alone_and_keeps_only_surer_ones(self):
        net, decode = BigBlobLostNet(), HeatmapToLandmarksd()
        d = item(40, 30, (20, 15))
        d = decode({**d, "pred": net(d["image"][None])[0]})
        net.calls = 0
        out = ReframeImaged(net, infer, decode, frame_model(), sure_spread_mm=1.5, widen=[2.0])(d)
        self.assertEqual((net.calls, out["reframed"], out["widened"]), (0, 0, 0.0))  # sure: no other frame read
        torch.testing.assert_close(out["pred_landmarks"], d["pred_landmarks"])
        lost = tight_crop()
        lost = decode({**lost, "pred": net(lost["image"][None])[0]})
        lost["image_fine"] = torch.zeros_like(lost["image_fine"])  # nothing to find in a wider frame either
        with self.assertLogs("bundle.framing", logging.INFO) as logs:
            out = ReframeImaged(net, infer, decode, frame_model(), sure_spread_mm=1.5, widen=[2.0])(lost)
        self.assertEqual((out["reframed"], out["widened"]), (0, 0.0))
        self.assertTrue(any("no surer in a wider frame (2 times the image)" in line for line in logs.output))
        torch.testing.assert_close(out["pred_landmarks"], lost["pred_landmarks"])
        for bad in ([1.0], [0.5, 2.0]):
            with self.assertRaisesRegex(ValueError, "larger than 1"):
                ReframeImaged(net, infer, decode, frame_model(), widen=bad)

    def test_a_tight_crop_unsure_however_read_is_not_flagged_once_widened(self):
        from bundle.orientation import OrientImaged

        net, decode = BigBlobLostNet(), HeatmapToLandmarksd()
        d = tight_crop()
        d = decode({**d, "pred": net(d["image"][None])[0]})
        for widen, flagged in (((), True), ((2.0,), False)):
            reframe = ReframeImaged(net, infer, decode, frame_model(), sure_spread_mm=1.5, widen=widen)
            out = OrientImaged(net, infer, decode, "auto", "bright", auto_spread_mm=1.5, reframe=reframe)(d)
            unsure = [c for c in out.get("checks", []) if "unsure of this image however it is read" in c]
            self.assertEqual(bool(unsure), flagged, widen)
            self.assertFalse(out["mirrored"] or out["inverted"])

    def test_a_tight_crop_read_in_the_wrong_orientation_is_read_widened_in_every_orientation(self):
        """Among lost readings of a tight crop the mirrored one looks a little surer and is chosen; widened, the image
        as it is reads sure: the orientation follows the widened whole images, so the face is read looking right."""
        from bundle.orientation import OrientImaged

        net, decode = FacingNet(), HeatmapToLandmarksd()
        head = torch.clamp(disk(20, 15, (10, 7), radius=5.5) + disk(20, 15, (10, 12.3), radius=1.2), 0, 1)
        d = item(20, 15, None, image=head)
        d = decode({**d, "pred": net(d["image"][None])[0]})
        results = {}
        for widen in ((), (2.0,)):
            reframe = ReframeImaged(net, infer, decode, frame_model(), sure_spread_mm=1.5, widen=widen)
            with self.assertLogs("bundle", logging.INFO) as logs:
                results[widen] = OrientImaged(net, infer, decode, "auto", "bright", auto_spread_mm=1.5, reframe=reframe)(d)
            results[widen, "logs"] = "\n".join(logs.output)
        lost, read = results[()], results[(2.0,)]
        self.assertTrue(lost["mirrored"])  # the surer of two lost readings
        self.assertTrue(any("unsure of this image however it is read" in c for c in lost["checks"]))
        self.assertFalse(read["mirrored"] or read["inverted"])
        self.assertEqual(read["widened"], 2.0)
        self.assertFalse(any("unsure of this image however it is read" in c for c in read.get("checks", [])))
        self.assertIn("in the wider frame it reads surest as it is", results[(2.0,), "logs"])
        self.assertLess(float(read["spread_mm"].mean()), 1.5)
        torch.testing.assert_close(read["pred_landmarks"][0], torch.tensor([10.0, 7.3]), atol=0.5, rtol=0)
        only_chosen = ReframeImaged(net, infer, decode, frame_model(), sure_spread_mm=1.5, widen=(2.0,))
        mirrored = OrientImaged(net, infer, decode, "left", "bright", auto_spread_mm=1.5, reframe=only_chosen)(d)
        self.assertTrue(mirrored["mirrored"])  # told the face looks left, only that reading is widened: still lost
        self.assertGreater(float(mirrored["spread_mm"].mean()), 1.5)


if __name__ == "__main__":
    unittest.main()
