"""A face that looks left: read mirrored and mirrored back, by choice or detected from the global pass's spread."""

import unittest

import torch

from bundle.orientation import OrientFaced, UnmirrorLandmarksd, mean_spread_mm
from bundle.transforms import HeatmapToLandmarksd

H, W, N = 40, 60, 2


class FacingRightNet(torch.nn.Module):
    """A stand-in global network that has only learnt faces looking right (the brighter half of the picture on the
    right): there it puts landmark k sharply at the brightest pixel (k pixels lower for k = 1); otherwise its
    heatmaps are flat."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = []
        yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
        for img in x[:, 0]:
            if img[:, W // 2:].mean() <= img[:, : W // 2].mean():
                out.append(torch.zeros(N, H, W))
                continue
            flat = int(img.argmax())
            y, xpos = flat // W, flat % W
            out.append(torch.stack([-((yy - y - k) ** 2 + (xx - xpos) ** 2) / 2.0 for k in range(N)]))
        return torch.stack(out) + self.dummy


def item(facing_left: bool) -> dict:
    img = torch.zeros(1, H, W)
    img[:, :, W // 2:] = 0.3  # the "face": brighter on the right
    img[0, 12, 41] = 1.0
    if facing_left:
        img = torch.flip(img, [-1])
    fine = torch.arange(H * 2 * W * 2, dtype=torch.float32).reshape(1, H * 2, W * 2)
    return {"image": img, "image_fine": fine, "scale": torch.ones(2), "spacing": torch.tensor([0.5, 0.5]),
            "orig_size": torch.tensor([H, W], dtype=torch.float32), "image_name": "x.png"}


def infer(inferer_input, network):
    return network(inferer_input)


def run(d: dict, face: str) -> dict:
    net = FacingRightNet()
    d = {**d, "pred": net(d["image"][None])[0]}
    for t in (OrientFaced(net, infer, face, auto_spread_mm=3.0), HeatmapToLandmarksd(), UnmirrorLandmarksd()):
        d = t(d)
    return d


class TestFaceOrientation(unittest.TestCase):
    def test_spread_tells_the_ways_apart(self):
        net = FacingRightNet()
        sure = mean_spread_mm(net(item(False)["image"][None])[0], torch.ones(2), torch.tensor([0.5, 0.5]))
        unsure = mean_spread_mm(net(item(True)["image"][None])[0], torch.ones(2), torch.tensor([0.5, 0.5]))
        self.assertLess(sure, 1.0)
        self.assertGreater(unsure, 5.0)

    def test_landmarks_land_on_the_image_as_it_is(self):
        expected_right = torch.tensor([[12.0, 41.0], [13.0, 41.0]])
        expected_left = torch.tensor([[12.0, W - 1 - 41.0], [13.0, W - 1 - 41.0]])
        for facing_left, face, mirrored, expected in (
            (False, "right", False, expected_right),
            (False, "auto", False, expected_right),  # sure as read: no second pass
            (True, "auto", True, expected_left),     # unsure as read, sure mirrored
            (True, "left", True, expected_left),
        ):
            d = run(item(facing_left), face)
            self.assertEqual(bool(d["mirrored"]), mirrored, (facing_left, face))
            self.assertTrue(torch.allclose(d["pred_landmarks"], expected, atol=1e-3), (facing_left, face, d["pred_landmarks"]))
            self.assertTrue(torch.allclose(d["pred_mm"], expected * 0.5, atol=1e-3))
            self.assertTrue(torch.equal(d["image_fine"], item(facing_left)["image_fine"]))  # mirrored back for the overlay
        d = run(item(False), "auto")
        self.assertTrue(torch.isnan(d["face_spread_mm"][1]))  # the mirrored image was not read
        # a face that looks right, forced to be read mirrored, is read as the network reads a face looking left
        self.assertGreater(float(run(item(False), "left")["spread_mm"].mean()), 5.0)

    def test_auto_keeps_the_reading_as_it_is_when_the_mirror_is_no_surer(self):
        d = item(True)
        d["image"] = torch.zeros(1, H, W)  # blank: both ways equally flat
        d = run(d, "auto")
        self.assertFalse(d["mirrored"])
        self.assertEqual(float(d["face_spread_mm"][0]), float(d["face_spread_mm"][1]))

    def test_bad_setting(self):
        with self.assertRaises(ValueError) as cm:
            OrientFaced(FacingRightNet(), infer, "up")
        self.assertIn("face should be one of", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
