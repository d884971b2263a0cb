"""Images read the way the networks learnt them: a face looking left read mirrored, a negative read inverted, by
choice or detected from the global pass's spread; the landmarks land on the image as it is."""

import unittest

import torch

from bundle.orientation import OrientImaged, OrientInputd, RestoreOrientationd, orient
from bundle.transforms import HeatmapToLandmarksd, UnlessErrord

H, W, N = 40, 60, 2
DOT = (12, 41)


class AsTrainedNet(torch.nn.Module):
    """A stand-in global network that has only learnt faces looking right with bright bone: the brighter half of the
    picture on the right and one brightest pixel. There it puts landmark k sharply at that pixel (k pixels lower for
    k = 1); otherwise its heatmaps are flat."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = []
        yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
        for img in x[:, 0]:
            if img[:, W // 2:].mean() <= img[:, : W // 2].mean() or int((img == img.max()).sum()) != 1:
                out.append(torch.zeros(N, H, W))
                continue
            flat = int(img.argmax())
            y, xpos = flat // W, flat % W
            out.append(torch.stack([-((yy - y - k) ** 2 + (xx - xpos) ** 2) / 2.0 for k in range(N)]))
        return torch.stack(out) + self.dummy


def item(mirrored: bool = False, inverted: bool = False) -> dict:
    img = torch.zeros(1, H, W)
    img[:, :, W // 2:] = 0.3  # the "face": brighter on the right
    img[0, DOT[0], DOT[1]] = 1.0  # the "bone"
    fine = torch.linspace(0, 1, H * 2 * W * 2).reshape(1, H * 2, W * 2)
    return {"image": orient(img, mirrored, inverted), "image_fine": orient(fine, mirrored, inverted),
            "scale": torch.ones(2), "spacing": torch.tensor([0.5, 0.5]),
            "orig_size": torch.tensor([H, W], dtype=torch.float32), "image_name": "x.png"}


def infer(inputs, network):
    return network(inputs)


def run(d: dict, face: str, bone: str = "bright") -> dict:
    net, decode = AsTrainedNet(), HeatmapToLandmarksd()
    d = {**d, "pred": net(d["image"][None])[0]}
    for t in (decode, OrientImaged(net, infer, decode, face, bone, auto_spread_mm=3.0), RestoreOrientationd()):
        d = t(d)
    return d


class TestImageOrientation(unittest.TestCase):
    def test_spread_tells_the_readings_apart(self):
        net, decode = AsTrainedNet(), HeatmapToLandmarksd()
        spread = [float(decode({**item(m, i), "pred": net(item(m, i)["image"][None])[0]})["spread_mm"].mean())
                  for m, i in ((False, False), (True, False), (False, True), (True, True))]
        self.assertLess(spread[0], 1.0)
        self.assertGreater(min(spread[1:]), 5.0)

    def test_landmarks_land_on_the_image_as_it_is(self):
        for mirrored, inverted, face, bone in (
            (False, False, "right", "bright"),
            (False, False, "auto", "auto"),    # sure as read: no other reading tried
            (True, False, "auto", "auto"),     # unsure as read, sure mirrored
            (True, False, "left", "bright"),
            (False, True, "right", "auto"),    # a negative
            (True, True, "auto", "auto"),      # both
            (True, True, "left", "dark"),
        ):
            case = (mirrored, inverted, face, bone)
            x = W - 1 - DOT[1] if mirrored else DOT[1]
            d = run(item(mirrored, inverted), face, bone)
            self.assertEqual((bool(d["mirrored"]), bool(d["inverted"])), (mirrored, inverted), case)
            expected = torch.tensor([[DOT[0], x], [DOT[0] + 1, x]], dtype=torch.float32)
            self.assertTrue(torch.allclose(d["pred_landmarks"], expected, atol=1e-3), (case, d["pred_landmarks"]))
            self.assertTrue(torch.allclose(d["pred_mm"], expected * 0.5, atol=1e-3), case)
            # the images are restored for the overlay: the file as it is
            self.assertTrue(torch.allclose(d["image_fine"], item(mirrored, inverted)["image_fine"]), case)
        d = run(item(), "auto", "auto")
        self.assertTrue(torch.isnan(d["reading_spread_mm"][1:]).all())  # no other reading was tried
        # a face that looks right, forced to be read mirrored, is read as the network reads a face looking left
        self.assertGreater(float(run(item(), "left")["spread_mm"].mean()), 5.0)

    def test_a_forced_reading_is_applied_before_the_global_pass(self):
        """face left / bone dark: OrientInputd (pre-processing) turns the input, so the evaluator's own pass reads it
        as asked and no other pass is run; the results are those of the reading done afterwards."""
        for mirrored, inverted, face, bone, passes in (
            (True, False, "left", "bright", 1),
            (True, True, "left", "dark", 1),
            (False, True, "right", "dark", 1),
            (True, False, "left", "auto", 1),  # sure as turned: no other reading
            (True, True, "left", "auto", 2),   # still a negative as turned: read inverted too
            (True, True, "auto", "dark", 2),
            (False, True, "left", "auto", 2),  # wrongly forced: unsure as turned, inverted back is no better
            (True, False, "auto", "auto", 2),  # nothing forced: as before, read as it is, then mirrored
        ):
            case = (mirrored, inverted, face, bone)
            net, decode, calls = AsTrainedNet(), HeatmapToLandmarksd(), []
            net.register_forward_pre_hook(lambda module, args: calls.append(1))
            d = OrientInputd(face, bone)(item(mirrored, inverted))
            d = decode({**d, "pred": net(d["image"][None])[0]})  # the evaluator's pass
            d = OrientImaged(net, infer, decode, face, bone, auto_spread_mm=3.0)(d)
            d = RestoreOrientationd()(d)
            self.assertEqual(len(calls), passes, case)
            if face != "left" or mirrored:  # the last but one case is read as it was forced, wrongly
                self.assertEqual((bool(d["mirrored"]), bool(d["inverted"])), (mirrored, inverted), case)
                x = W - 1 - DOT[1] if mirrored else DOT[1]
                expected = torch.tensor([[DOT[0], x], [DOT[0] + 1, x]], dtype=torch.float32)
                self.assertTrue(torch.allclose(d["pred_landmarks"], expected, atol=1e-3), (case, d["pred_landmarks"]))
            self.assertTrue(torch.allclose(d["image_fine"], item(mirrored, inverted)["image_fine"]), case)
            self.assertTrue(torch.allclose(d["image"], item(mirrored, inverted)["image"]), case)
        self.assertNotIn("preoriented", OrientInputd("auto", "bright")(item()))  # nothing forced, nothing changed

    def test_other_readings_run_in_eval_mode(self):
        """The evaluator puts its network in eval mode only for its own pass; the post-processing finds it in
        training mode (MAHT-Net then returns its deep-supervision stack, dropout and batch norm would act)."""
        net = AsTrainedNet()
        seen = []
        net.register_forward_pre_hook(lambda module, args: seen.append(module.training))
        net.train()
        d = item(mirrored=True)
        decode = HeatmapToLandmarksd()
        d = decode({**d, "pred": net(d["image"][None])[0]})
        OrientImaged(net, infer, decode, "auto", "bright", auto_spread_mm=3.0)(d)
        self.assertEqual(seen, [True, False])  # the test's own call, then the mirrored reading
        self.assertTrue(net.training)  # and the mode is left as it was

    def test_auto_keeps_the_reading_as_it_is_when_no_other_is_surer(self):
        d = item()
        d["image"] = torch.zeros(1, H, W)  # blank: every reading equally flat
        with self.assertLogs("bundle.orientation", "WARNING") as logs:
            d = run(d, "auto", "auto")
        self.assertIn("x.png: the global pass is unsure of this image however it is read", logs.output[0])
        self.assertEqual(len(d["checks"]), 1)  # report.html shows it with the image
        self.assertIn("check its landmarks", d["checks"][0])
        self.assertEqual((d["mirrored"], d["inverted"]), (False, False))
        self.assertFalse(torch.isnan(d["reading_spread_mm"]).any())  # all four were tried

    def test_a_file_not_read_is_not_read_again(self):
        """An item whose file could not be read (the loader's placeholder, its error bound for errors.csv) gets none
        of auto's other readings, nor a warning that the global pass is unsure of it: the configs wrap the
        post-processing after the decoding in UnlessErrord (tests/test_configs.py checks that they do)."""
        net = AsTrainedNet()
        seen = []
        net.register_forward_pre_hook(lambda module, args: seen.append(1))
        d = item()
        d["image"] = torch.zeros(1, H, W)  # as unsure as can be
        decode = HeatmapToLandmarksd()
        d = decode({**d, "pred": net(d["image"][None])[0], "error": "x.png: cannot read image (OSError: truncated)"})
        orient = UnlessErrord([OrientImaged(net, infer, decode, "auto", "auto", auto_spread_mm=3.0)])
        with self.assertNoLogs("bundle.orientation", "WARNING"):
            out = orient(d)
        self.assertEqual(len(seen), 1)  # only the test's own pass
        self.assertNotIn("checks", out)
        del d["error"]
        with self.assertLogs("bundle.orientation", "WARNING"):  # the same item read: all four readings, and the warning
            orient(d)
        self.assertEqual(len(seen), 4)

    def test_a_reading_a_rounding_error_surer_is_not_chosen(self):
        """Readings whose spreads differ by float rounding (a symmetric picture, summed in another order on another
        CPU) are equally sure: the reading asked for is kept; one surer by more than TIE_MM is taken."""
        from bundle.orientation import TIE_MM

        class SpreadNet(torch.nn.Module):  # heatmaps of width sigma as read, sigma - gap mirrored (the stand-in
            def __init__(self, gap):      # marks the mirrored input by a brighter right-hand column)
                super().__init__()
                self.gap, self.dummy = gap, torch.nn.Parameter(torch.zeros(1))

            def forward(self, x):
                yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
                out = []
                for img in x[:, 0]:
                    sigma = 6.0 - (self.gap if img[:, -1].sum() > img[:, 0].sum() else 0.0)
                    out.append(torch.stack([-((yy - 20) ** 2 + (xx - 30) ** 2) / (2 * sigma**2)] * N).float())
                return torch.stack(out) + self.dummy

        for gap, mirrored in ((1e-5, False), (100 * TIE_MM, True)):
            net, decode = SpreadNet(gap), HeatmapToLandmarksd()
            d = item()
            d["image"] = torch.zeros(1, H, W)
            d["image"][:, :, 0] = 1.0  # the left-hand column brighter: mirrored, the right
            d = decode({**d, "pred": net(d["image"][None])[0]})
            out = OrientImaged(net, infer, decode, "auto", "bright", auto_spread_mm=0.1)(d)
            self.assertGreater(float(out["reading_spread_mm"][0]), float(out["reading_spread_mm"][1]))
            self.assertEqual(out["mirrored"], mirrored, gap)

    def test_bad_settings(self):
        with self.assertRaises(ValueError) as cm:
            OrientImaged(AsTrainedNet(), infer, HeatmapToLandmarksd(), "up")
        self.assertIn("face should be one of", str(cm.exception))
        with self.assertRaises(ValueError) as cm:
            OrientImaged(AsTrainedNet(), infer, HeatmapToLandmarksd(), "right", "grey")
        self.assertIn("bone should be one of", str(cm.exception))
        with self.assertRaises(ValueError):
            OrientInputd("auto", "grey")


if __name__ == "__main__":
    unittest.main()
