import unittest

import torch
from parameterized import parameterized

from bundle.heatmaps import HeatmapCrossEntropyLoss, heatmap_spread, heatmap_to_landmarks, render_gaussian_heatmaps

SUBPIXEL_POINTS = [[(10.3, 20.7)], [(31.5, 5.25)], [(0.9, 47.1)], [(47.49, 0.6)], [(23.0, 24.0)]]


class TestRenderAndDecode(unittest.TestCase):
    @parameterized.expand(SUBPIXEL_POINTS)
    def test_decode_recovers_subpixel_peak(self, point):
        p = torch.tensor([point])
        for sigma in (1.0, 2.0, 3.5):
            heat = render_gaussian_heatmaps(p, (48, 48), sigma)[None]
            got, peak = heatmap_to_landmarks(heat)
            self.assertLess(float((got[0, 0] - p[0]).norm()), 0.1, f"sigma={sigma}")
            self.assertGreater(float(peak), 0.5)

    def test_decode_logits_of_softmax_target(self):
        p = torch.tensor([[17.35, 9.8], [3.2, 30.6]])
        target = render_gaussian_heatmaps(p, (40, 36), 2.0, normalize=True)
        logits = torch.log(target.clamp_min(1e-30)) + 7.0  # log-probabilities up to a constant
        got, _ = heatmap_to_landmarks(logits[None], log_scale=True)
        self.assertLess(float((got[0] - p).norm(dim=-1).max()), 0.1)

    def test_peak_and_centre(self):
        heat = render_gaussian_heatmaps(torch.tensor([[5.0, 7.0]]), (12, 14), 2.0)
        self.assertAlmostEqual(float(heat[0, 5, 7]), 1.0, places=6)
        self.assertAlmostEqual(float(heat[0, 5, 9]), float(torch.exp(torch.tensor(-0.5))), places=6)
        normed = render_gaussian_heatmaps(torch.tensor([[5.0, 7.0]]), (12, 14), 2.0, normalize=True)
        self.assertAlmostEqual(float(normed.sum()), 1.0, places=5)

    def test_outside_gives_zero_map(self):
        heat = render_gaussian_heatmaps(torch.tensor([[-5.0, 3.0], [3.0, 3.0]]), (10, 10), 1.0)
        self.assertEqual(float(heat[0].abs().sum()), 0.0)
        self.assertGreater(float(heat[1].sum()), 1.0)

    def test_batched_shape(self):
        heat = render_gaussian_heatmaps(torch.rand(3, 19, 2) * 20, (24, 20), 1.5)
        self.assertEqual(tuple(heat.shape), (3, 19, 24, 20))

    def test_spread_grows_with_blur(self):
        p = torch.tensor([[[12.0, 12.0]]])
        sharp = torch.log(render_gaussian_heatmaps(p[0], (25, 25), 1.0, normalize=True).clamp_min(1e-30))[None]
        blurred = torch.log(render_gaussian_heatmaps(p[0], (25, 25), 3.0, normalize=True).clamp_min(1e-30))[None]
        s1, s3 = heatmap_spread(sharp, p), heatmap_spread(blurred, p)
        self.assertAlmostEqual(float(s1), 2 ** 0.5 * 1.0, delta=0.05)  # 2D RMS radius of an isotropic Gaussian
        self.assertAlmostEqual(float(s3), 2 ** 0.5 * 3.0, delta=0.2)

    def test_spread_is_the_rms_distance_of_the_softmax(self):
        """The spread (taken from the softmax's two marginals) is the RMS distance of the full distribution from the
        point, summed pixel by pixel, for points on and off the peak and off the grid."""
        g = torch.Generator().manual_seed(3)
        logits = torch.randn(2, 3, 17, 23, generator=g) * 4
        points = torch.rand(2, 3, 2, generator=g) * torch.tensor([30.0, 40.0]) - 5
        prob = torch.softmax(logits.reshape(2, 3, -1).double(), -1).reshape(2, 3, 17, 23)
        yy, xx = torch.meshgrid(torch.arange(17.0), torch.arange(23.0), indexing="ij")
        d2 = (yy - points[..., 0, None, None].double()) ** 2 + (xx - points[..., 1, None, None].double()) ** 2
        expected = (prob * d2).sum((-2, -1)).sqrt()
        torch.testing.assert_close(heatmap_spread(logits, points).double(), expected, rtol=1e-5, atol=1e-5)

    def test_ill_arg(self):
        with self.assertRaises(ValueError):
            render_gaussian_heatmaps(torch.zeros(2, 3), (5, 5), 1.0)
        with self.assertRaises(ValueError):
            render_gaussian_heatmaps(torch.zeros(2, 2), (5, 5), 0.0)
        with self.assertRaises(ValueError):
            heatmap_to_landmarks(torch.zeros(2, 5, 5))
        with self.assertRaises(ValueError):
            heatmap_to_landmarks(torch.zeros(1, 2, 5, 5), refine="cubic")


class TestLoss(unittest.TestCase):
    def test_zero_at_target_positive_elsewhere(self):
        p = torch.tensor([[[6.2, 9.7], [14.0, 3.3]]])
        target = render_gaussian_heatmaps(p, (20, 16), 2.0)
        loss = HeatmapCrossEntropyLoss()
        perfect = torch.log(target / target.sum(dim=(-2, -1), keepdim=True))
        self.assertAlmostEqual(float(loss(perfect, target)), 0.0, places=4)
        self.assertGreater(float(loss(torch.zeros_like(target), target)), 1.0)

    def test_all_zero_output_is_not_a_minimum(self):
        """The collapse seen with MSE: an all-zero output. Here its gradient is non-zero and one step of
        gradient descent from it moves the decoded landmark to the target."""
        target = render_gaussian_heatmaps(torch.tensor([[[10.0, 5.0]]]), (16, 12), 1.5)
        logits = torch.zeros_like(target, requires_grad=True)
        HeatmapCrossEntropyLoss()(logits, target).backward()
        self.assertGreater(float(logits.grad.abs().max()), 1e-3)
        stepped = logits.detach() - 100.0 * logits.grad
        got, _ = heatmap_to_landmarks(stepped, log_scale=True)
        self.assertLess(float((got[0, 0] - torch.tensor([10.0, 5.0])).norm()), 0.5)

    def test_deep_supervision(self):
        target = render_gaussian_heatmaps(torch.tensor([[[4.0, 4.0]]]), (8, 8), 1.0)
        good = torch.log(target / target.sum())
        stacked = torch.stack([good, torch.zeros_like(good)], dim=1)  # (B, S, N, H, W)
        fixed = HeatmapCrossEntropyLoss(scale_weights=[1.0, 0.0])
        self.assertAlmostEqual(float(fixed(stacked, target)), 0.0, places=4)
        learned = HeatmapCrossEntropyLoss(learn_weights=True, num_scales=2)
        out = learned(stacked, target)
        out.backward()
        self.assertIsNotNone(learned.log_vars.grad)
        self.assertEqual(len(learned.last_scale_losses), 2)
        with self.assertRaises(ValueError):
            HeatmapCrossEntropyLoss(learn_weights=True, num_scales=3)(stacked, target)


class TestTTA(unittest.TestCase):
    def test_equivariant_network_gives_the_same_landmarks(self):
        """A 'network' that returns the log of its input (a heatmap) is equivariant to rotation and scaling, so
        test-time augmentation must give back the same landmarks."""
        from bundle.engine import TTAInferer

        pts = torch.tensor([[[20.3, 30.6], [40.2, 15.7]]])
        heat = render_gaussian_heatmaps(pts[0], (64, 56), 2.5)[None]
        tta = TTAInferer(rotations_deg=(-5.0, 5.0), scales=(0.9, 1.1))
        logits = tta(heat, lambda x: torch.log(x.clamp_min(1e-12)))
        got, _ = heatmap_to_landmarks(logits, log_scale=True)
        self.assertLess(float((got - pts).norm(dim=-1).max()), 0.15)


if __name__ == "__main__":
    unittest.main()
