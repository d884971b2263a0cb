from __future__ import annotations

import os
import tempfile
import unittest

import torch
from parameterized import parameterized

from bundle.networks import MAHTNet
from bundle.networks.maht_net import AttentionGate, PositionalEncoding2D, SpatialChannelAttention
from monai.networks.blocks import TransformerBlock
from monai.networks.utils import convert_to_torchscript

# a small configuration keeps the tests fast on CPU
SMALL = {"channels": (8, 16, 32, 64), "hidden_size": 32, "num_heads": 4, "mlp_dim": 64, "num_layers": 2}

TEST_CASE_SHAPE = [
    [{"in_channels": 1, "out_channels": 19}, (1, 1, 64, 48), (1, 19, 64, 48)],  # default configuration
    [{"in_channels": 1, "out_channels": 5, **SMALL}, (2, 1, 64, 48), (2, 5, 64, 48)],
    [{"in_channels": 1, "out_channels": 5, **SMALL}, (1, 1, 70, 55), (1, 5, 70, 55)],  # not divisible by 16
    [{"in_channels": 2, "out_channels": 3, **SMALL}, (1, 2, 96, 80), (1, 3, 96, 80)],
    [{"in_channels": 1, "out_channels": 4, **SMALL}, (1, 1, 32, 33), (1, 4, 32, 33)],  # minimum size
    [{"in_channels": 1, "out_channels": 4, **SMALL, "pos_embed": "sincos"}, (1, 1, 50, 77), (1, 4, 50, 77)],
    [{"in_channels": 1, "out_channels": 4, **SMALL, "pos_embed": "none"}, (1, 1, 64, 40), (1, 4, 64, 40)],
    [{"in_channels": 1, "out_channels": 4, **SMALL, "use_transformer": False}, (1, 1, 70, 55), (1, 4, 70, 55)],
    [
        {"in_channels": 1, "out_channels": 4, **SMALL, "use_attention_gates": False, "use_spatial_attention": False},
        (1, 1, 70, 55),
        (1, 4, 70, 55),
    ],
    [{"in_channels": 1, "out_channels": 4, "channels": (8, 16, 32), "hidden_size": 16, "num_heads": 2}, (1, 1, 40, 36),
     (1, 4, 40, 36)],
    [{"in_channels": 1, "out_channels": 4, **SMALL, "num_res_units": 2, "deep_supervision": True}, (1, 1, 64, 48),
     (1, 4, 64, 48)],  # eval mode: deep supervision heads are not returned
]

TEST_CASE_DEEP_SUPERVISION = [
    [{"in_channels": 1, "out_channels": 5, **SMALL, "deep_supervision": True}, (2, 1, 70, 55), (2, 4, 5, 70, 55)],
    [{"in_channels": 1, "out_channels": 5, **SMALL, "deep_supervision": True, "deep_supr_num": 1}, (1, 1, 64, 48),
     (1, 2, 5, 64, 48)],
    [{"in_channels": 1, "out_channels": 5, **SMALL, "deep_supervision": False}, (2, 1, 70, 55), (2, 5, 70, 55)],
]

TEST_CASE_ILL_ARG = [
    [{"in_channels": 1, "out_channels": 2, "hidden_size": 30, "num_heads": 4}],  # not divisible by num_heads
    [{"in_channels": 1, "out_channels": 2, "hidden_size": 18, "num_heads": 3}],  # not divisible by 4 (pos. enc.)
    [{"in_channels": 1, "out_channels": 2, "spatial_dims": 3}],
    [{"in_channels": 1, "out_channels": 2, "spatial_dims": 1}],
    [{"in_channels": 1, "out_channels": 2, "channels": ()}],
    [{"in_channels": 1, "out_channels": 2, "channels": (16,)}],
    [{"in_channels": 1, "out_channels": 2, "channels": (16, 0, 32)}],
    [{"in_channels": 0, "out_channels": 2}],
    [{"in_channels": 1, "out_channels": 0}],
    [{"in_channels": 1, "out_channels": 2, "dropout_rate": 1.5}],
    [{"in_channels": 1, "out_channels": 2, "num_layers": 0}],
    [{"in_channels": 1, "out_channels": 2, "pos_embed": "rope"}],
    [{"in_channels": 1, "out_channels": 2, "img_size": (512,)}],
    [{"in_channels": 1, "out_channels": 2, "deep_supervision": True, "deep_supr_num": 4}],
    [{"in_channels": 1, "out_channels": 2, "deep_supervision": True, "deep_supr_num": 0}],
    [{"in_channels": 1, "out_channels": 2, "num_res_units": 0}],
]


class TestMAHTNet(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # small inputs: one thread is faster and avoids OpenMP spin-waiting on a shared, oversubscribed CPU
        cls._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    @classmethod
    def tearDownClass(cls):
        torch.set_num_threads(cls._threads)

    def setUp(self):
        torch.manual_seed(0)

    @parameterized.expand(TEST_CASE_SHAPE)
    def test_shape(self, kwargs, input_shape, expected_shape):
        net = MAHTNet(**kwargs).eval()
        with torch.no_grad():
            out = net(torch.randn(input_shape))
        self.assertEqual(out.shape, expected_shape)
        # logits, not probabilities
        self.assertLess(out.min().item(), 0.0)

    @parameterized.expand(TEST_CASE_DEEP_SUPERVISION)
    def test_deep_supervision_train_shape(self, kwargs, input_shape, expected_shape):
        net = MAHTNet(**kwargs).train()
        out = net(torch.randn(input_shape))
        self.assertEqual(out.shape, expected_shape)
        out.mean().backward()
        self.assertTrue(all(p.grad is not None for p in net.parameters() if p.requires_grad))

    @parameterized.expand(TEST_CASE_ILL_ARG)
    def test_ill_arg(self, kwargs):
        with self.assertRaises(ValueError):
            MAHTNet(**kwargs)

    @parameterized.expand(
        [
            [{**SMALL}, (1, 1, 70, 55)],
            [{**SMALL, "pos_embed": "sincos", "use_flash_attention": False}, (2, 1, 64, 48)],
            [{**SMALL, "use_transformer": False, "use_attention_gates": False}, (1, 1, 64, 48)],
            [{**SMALL, "deep_supervision": True}, (1, 1, 48, 64)],
        ]
    )
    def test_script(self, kwargs, input_shape):
        net = MAHTNet(1, 3, **kwargs).eval()
        scripted = torch.jit.script(net)
        x = torch.randn(input_shape)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x), atol=1e-5, rtol=1e-5)
            # a second size through the same scripted module
            x2 = torch.randn(1, 1, 96, 80)
            torch.testing.assert_close(scripted(x2), net(x2), atol=1e-5, rtol=1e-5)

    def test_convert_to_torchscript(self):
        net = MAHTNet(1, 3, **SMALL)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "maht_net.ts")
            convert_to_torchscript(
                net,
                filename_or_obj=path,
                verify=True,
                inputs=[torch.randn(1, 1, 64, 48)],
                device=torch.device("cpu"),
                rtol=1e-4,
                atol=1e-5,
            )
            loaded = torch.jit.load(path)
        with torch.no_grad():
            x = torch.randn(1, 1, 70, 55)
            torch.testing.assert_close(loaded(x), net.eval()(x), atol=1e-5, rtol=1e-5)

    @parameterized.expand([[(1, 1, 64, 48)], [(2, 1, 70, 55)], [(1, 1, 96, 80)]])
    def test_attention_maps(self, input_shape):
        net = MAHTNet(1, 3, **SMALL).eval()  # use_flash_attention=True by default
        heatmaps, attn = net.forward_with_attention(torch.randn(input_shape))
        b, _, h, w = input_shape
        self.assertEqual(heatmaps.shape, (b, 3, h, w))
        gh, gw = net.token_grid_size(h, w)
        self.assertEqual(len(attn), SMALL["num_layers"])
        for a in attn:
            self.assertEqual(a.shape, (b, SMALL["num_heads"], gh * gw, gh * gw))
            torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5, rtol=0)
        # the heatmaps equal the plain forward and the flags are restored
        with torch.no_grad():
            x = torch.randn(input_shape)
            torch.testing.assert_close(net.forward_with_attention(x)[0], net(x))
        for blk in net.bottleneck.blocks:
            self.assertFalse(blk.attn.save_attn)
            self.assertTrue(blk.attn.use_flash_attention)

    @parameterized.expand([[True], [False]])
    def test_dropout_eval_deterministic(self, flash):
        net = MAHTNet(1, 3, **SMALL, dropout_rate=0.3, use_flash_attention=flash)
        x = torch.randn(1, 1, 64, 48)
        with torch.no_grad():
            net.train()
            self.assertFalse(torch.allclose(net(x), net(x)))
            net.eval()
            torch.testing.assert_close(net(x), net(x))
            torch.testing.assert_close(torch.jit.script(net)(x), net(x), atol=1e-5, rtol=1e-5)

    def test_attention_maps_without_transformer(self):
        net = MAHTNet(1, 3, **SMALL, use_transformer=False).train()
        heatmaps, attn = net.forward_with_attention(torch.randn(1, 1, 64, 48))
        self.assertEqual(heatmaps.shape, (1, 3, 64, 48))
        self.assertEqual(attn, [])

    def test_switches_remove_modules(self):
        def count(net, cls):
            return sum(isinstance(m, cls) for m in net.modules())

        full = MAHTNet(1, 3, **SMALL, deep_supervision=True)
        self.assertEqual(count(full, TransformerBlock), SMALL["num_layers"])
        self.assertEqual(count(full, AttentionGate), len(SMALL["channels"]))
        self.assertEqual(count(full, SpatialChannelAttention), len(SMALL["channels"]))
        self.assertEqual(len(full.ds_heads), len(SMALL["channels"]) - 1)

        self.assertEqual(count(MAHTNet(1, 3, **SMALL, use_transformer=False), TransformerBlock), 0)
        self.assertEqual(count(MAHTNet(1, 3, **SMALL, use_attention_gates=False), AttentionGate), 0)
        self.assertEqual(count(MAHTNet(1, 3, **SMALL, use_spatial_attention=False), SpatialChannelAttention), 0)
        self.assertEqual(len(MAHTNet(1, 3, **SMALL, deep_supervision=False).ds_heads), 0)
        self.assertEqual(count(MAHTNet(1, 3, **SMALL, pos_embed="none"), PositionalEncoding2D), 0)

        n_full = sum(p.numel() for p in full.parameters())
        for off in ("use_transformer", "use_attention_gates", "use_spatial_attention"):
            net = MAHTNet(1, 3, **SMALL, deep_supervision=True, **{off: False})
            self.assertLess(sum(p.numel() for p in net.parameters()), n_full, off)

    def test_parameter_groups(self):
        net = MAHTNet(1, 3, **SMALL)
        tr, cnn = net.transformer_parameters(), net.cnn_parameters()
        self.assertGreater(len(tr), 0)
        self.assertEqual({id(p) for p in tr} | {id(p) for p in cnn}, {id(p) for p in net.parameters()})
        self.assertEqual({id(p) for p in tr} & {id(p) for p in cnn}, set())
        block_ids = {id(p) for m in net.modules() if isinstance(m, TransformerBlock) for p in m.parameters()}
        self.assertTrue(block_ids <= {id(p) for p in tr})
        # usable as optimiser parameter groups
        torch.optim.AdamW([{"params": cnn, "lr": 1e-3}, {"params": tr, "lr": 1e-4}])

        net = MAHTNet(1, 3, **SMALL, use_transformer=False)
        self.assertEqual(net.transformer_parameters(), [])
        self.assertEqual(len(net.cnn_parameters()), len(list(net.parameters())))

    def test_positional_encoding_other_sizes(self):
        net = MAHTNet(1, 3, **SMALL, img_size=(64, 48)).eval()
        pe = net.bottleneck.pos_embed
        self.assertEqual(tuple(pe.row_embed.shape), (1, SMALL["hidden_size"] // 2, 4))
        self.assertEqual(tuple(pe.col_embed.shape), (1, SMALL["hidden_size"] // 2, 3))
        with torch.no_grad():
            for size in ((64, 48), (96, 80), (70, 55), (48, 64)):  # reference grid first, then other grids
                self.assertEqual(net(torch.randn(1, 1, *size)).shape, (1, 3, *size))
        # at the reference grid the learned tables are used as they are
        enc = pe.encoding(4, 3, torch.device("cpu"))
        torch.testing.assert_close(enc[0, : SMALL["hidden_size"] // 2, :, 0], pe.row_embed[0].detach())
        torch.testing.assert_close(enc[0, SMALL["hidden_size"] // 2 :, 0, :], pe.col_embed[0].detach())
        # interpolated encodings have the requested grid and receive gradients
        enc = pe.encoding(7, 5, torch.device("cpu"))
        self.assertEqual(tuple(enc.shape), (1, SMALL["hidden_size"], 7, 5))
        enc.sum().backward()
        self.assertIsNotNone(pe.row_embed.grad)
        # fixed sine-cosine encoding for any grid, no parameters
        sincos = PositionalEncoding2D(32, (4, 3), mode="sincos")
        self.assertEqual(len(list(sincos.parameters())), 0)
        self.assertEqual(tuple(sincos.encoding(6, 9, torch.device("cpu")).shape), (1, 32, 6, 9))

    def test_transformer_changes_output(self):
        # the bottleneck really contributes: the output differs when the transformer blocks change
        net = MAHTNet(1, 3, **SMALL).eval()
        x = torch.randn(1, 1, 64, 48)
        with torch.no_grad():
            before = net(x)
            for p in net.bottleneck.blocks.parameters():
                p.add_(0.5)
            self.assertFalse(torch.allclose(before, net(x)))


if __name__ == "__main__":
    unittest.main()
