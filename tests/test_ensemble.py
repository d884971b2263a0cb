"""Checkpoint ensembling averages the members' spatial softmaxes."""

import tempfile
import unittest
from pathlib import Path

import torch

from bundle.engine import EnsembleNetwork
from bundle.heatmaps import heatmap_to_landmarks, render_gaussian_heatmaps


class Fixed(torch.nn.Module):
    """Returns fixed logits: the log of a Gaussian at ``centre`` for every landmark."""

    def __init__(self, centre, stack=False):
        super().__init__()
        self.register_buffer("logits", torch.log(render_gaussian_heatmaps(torch.tensor([centre] * 2), (32, 32), 2.0).clamp_min(1e-9)))
        self.stack = stack

    def forward(self, x):
        out = self.logits[None].expand(len(x), -1, -1, -1)
        return torch.stack([out, torch.zeros_like(out)], 1) if self.stack else out


class TestEnsemble(unittest.TestCase):
    def test_one_member_is_the_member(self):
        x = torch.zeros(2, 1, 32, 32)
        a = heatmap_to_landmarks(EnsembleNetwork([Fixed((10.3, 20.7))])(x), log_scale=True)[0]
        torch.testing.assert_close(a, torch.tensor([[[10.3, 20.7]] * 2] * 2), atol=0.05, rtol=0)

    def test_two_members_meet_between_close_peaks(self):
        """Two overlapping Gaussians 2 px apart average to one peak half-way; a deep-supervision stack counts its
        finest head only."""
        net = EnsembleNetwork([Fixed((10.0, 10.0)), Fixed((10.0, 12.0), stack=True)])
        pts = heatmap_to_landmarks(net(torch.zeros(1, 1, 32, 32)), log_scale=True)[0]
        torch.testing.assert_close(pts[0, 0], torch.tensor([10.0, 11.0]), atol=0.1, rtol=0)

    def test_from_checkpoints(self):
        net = torch.nn.Conv2d(1, 3, 3, padding=1)
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for i in range(2):
                torch.nn.init.normal_(net.weight)
                paths.append(Path(tmp) / f"m{i}.pt")
                state = net.state_dict() if i == 0 else {"model": net.state_dict(), "epoch": 3}  # checkpoint_last form
                torch.save(state, paths[-1])
            ens = EnsembleNetwork.from_checkpoints(net, paths)
            self.assertEqual(len(ens.members), 2)
            self.assertFalse(torch.equal(ens.members[0].weight, ens.members[1].weight))
            torch.testing.assert_close(ens.members[1].weight, net.weight)
            with self.assertRaises(FileNotFoundError):
                EnsembleNetwork.from_checkpoints(net, [Path(tmp) / "missing.pt"])


if __name__ == "__main__":
    unittest.main()
