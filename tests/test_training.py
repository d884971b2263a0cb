"""Tests of bundle/training.py: resumable atomic checkpoints (including a real SIGKILL), the NaN/Inf guard,
gradient monitoring and clipping, the warm-up + cosine schedule, parameter groups and the TensorBoard loggers.

Everything uses tiny networks on 8x8 images with MONAI's SupervisedTrainer, so the file runs in well under a
minute on two busy cores."""

from __future__ import annotations

import glob
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest
from types import SimpleNamespace
from unittest import mock

import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import LrScheduleHandler
from monai.transforms import RandGaussianNoised

from bundle.heatmaps import HeatmapCrossEntropyLoss
from bundle.training import (
    GradientMonitor,
    LearningRateLogger,
    LossWeightLogger,
    NonFiniteGuard,
    ResumableCheckpoint,
    atomic_torch_save,
    param_groups,
    warmup_cosine_schedule,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A training run whose randomness comes from every source the checkpoint must restore: network init and dropout
# (torch), a MONAI random transform (its own numpy RandomState), the shuffle (the loader's torch.Generator).
# "kill" mode SIGKILLs itself in the middle of writing its 6th checkpoint (iteration 15, mid-epoch 2): the
# previous checkpoint (iteration 12, 4 of 8 iterations into epoch 2) must survive and resume exactly.
TRAIN_SCRIPT = textwrap.dedent(
    """
    import io, logging, os, signal, sys
    sys.path.insert(0, {repo!r})
    import torch
    torch.set_num_threads(1)
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.handlers import LrScheduleHandler
    from monai.transforms import RandGaussianNoised
    from bundle.training import GradientMonitor, NonFiniteGuard, ResumableCheckpoint, param_groups
    from bundle.training import warmup_cosine_schedule

    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    out_dir, mode = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(123)
    data = [{{"image": torch.randn(1, 8, 8, generator=g), "label": torch.randn(1, 8, 8, generator=g)}}
            for _ in range(16)]
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                              torch.nn.Conv2d(4, 1, 3, padding=1))
    if mode == "resume":
        torch.nn.init.zeros_(net[0].weight)  # the checkpoint must overwrite whatever the model holds
    ds = Dataset(data, transform=RandGaussianNoised(keys="image", prob=0.5, std=0.1))
    loader = DataLoader(ds, batch_size=2, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(7))
    opt = torch.optim.AdamW(param_groups(net, 0.01, weight_decay=0.01))
    sched = warmup_cosine_schedule(opt, warmup_epochs=1, max_epochs=4)
    ckpt = ResumableCheckpoint(out_dir, {{"model": net, "optimizer": opt, "lr_scheduler": sched}},
                               resume=(mode == "resume"), save_interval_iterations=3)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=4, train_data_loader=loader, network=net, optimizer=opt,
        loss_function=torch.nn.MSELoss(),
        train_handlers=[LrScheduleHandler(sched, print_lr=False), NonFiniteGuard(), GradientMonitor(max_norm=5.0),
                        ckpt])
    if mode == "kill":
        real_save, calls = torch.save, [0]

        def dying_save(obj, f, *args, **kwargs):
            calls[0] += 1
            if calls[0] < 6:
                return real_save(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = dying_save
    trainer.run()
    torch.save({{"state": net.state_dict(), "iteration": trainer.state.iteration, "epoch": trainer.state.epoch}},
               os.path.join(out_dir, "final.pt"))
    """
)

N_ITEMS, BATCH = 8, 2  # in-process runs: 4 iterations per epoch


def make_data(seed: int = 0, n: int = N_ITEMS) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(1, 8, 8, generator=g), "label": torch.randn(1, 8, 8, generator=g)} for _ in range(n)]


def make_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Conv2d(4, 1, 3, padding=1)
    )


def make_trainer(net, optimizer, handlers, loss=None, max_epochs=2, random_transform=False) -> SupervisedTrainer:
    transform = RandGaussianNoised(keys="image", prob=0.5, std=0.1) if random_transform else None
    loader = DataLoader(
        Dataset(make_data(), transform=transform), batch_size=BATCH, shuffle=True, num_workers=0,
        generator=torch.Generator().manual_seed(3),
    )
    return SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=loader, network=net,
        optimizer=optimizer, loss_function=loss or torch.nn.MSELoss(), train_handlers=handlers,
    )


def weights(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


class TestAtomicSave(unittest.TestCase):
    def test_failed_save_keeps_previous_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "checkpoint_last.pt")
            atomic_torch_save({"w": torch.arange(5.0), "iteration": 1}, path)
            real_save = torch.save

            def broken_save(obj, f, *args, **kwargs):  # writes half a file, then the disk "fills up"
                real_save(obj, f)
                f.seek(0)
                f.truncate(10)
                raise OSError("No space left on device")

            with mock.patch("torch.save", side_effect=broken_save):
                with self.assertRaises(OSError):
                    atomic_torch_save({"w": torch.zeros(5), "iteration": 2}, path)
            ckpt = torch.load(path, weights_only=True)
            self.assertEqual(ckpt["iteration"], 1)
            torch.testing.assert_close(ckpt["w"], torch.arange(5.0))
            self.assertEqual(sorted(os.listdir(tmp)), ["checkpoint_last.pt"])  # no temporary file left

    def test_success_replaces_and_leaves_no_temp(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "sub", "ckpt.pt")
            for i in range(3):
                atomic_torch_save({"iteration": i}, path)
            self.assertEqual(torch.load(path, weights_only=True)["iteration"], 2)
            self.assertEqual(os.listdir(os.path.dirname(path)), ["ckpt.pt"])


class TestResumableCheckpoint(unittest.TestCase):
    def test_bad_arguments(self):
        net = torch.nn.Linear(2, 2)
        with self.assertRaises(ValueError):
            ResumableCheckpoint("x", {})
        with self.assertRaises(ValueError):
            ResumableCheckpoint("x", {"epoch": net})  # reserved key
        with self.assertRaises(ValueError):
            ResumableCheckpoint("x", {"model": object()})
        with self.assertRaises(ValueError):
            ResumableCheckpoint("x", {"model": net}, save_interval_iterations=-1)
        with self.assertRaises(ValueError):
            ResumableCheckpoint("x", {"model": net}, filename="a/b.pt")

    def _run(self, tmp, net_seed, max_epochs=3, stop_after_epoch=None):
        net = make_net(net_seed)
        opt = torch.optim.AdamW(param_groups(net, 0.01, weight_decay=0.01))
        sched = warmup_cosine_schedule(opt, 1, 3)
        handlers = [LrScheduleHandler(sched, print_lr=False)]
        if tmp is not None:
            handlers.append(ResumableCheckpoint(tmp, {"model": net, "optimizer": opt, "lr_scheduler": sched},
                                                resume=True))
        trainer = make_trainer(net, opt, handlers, max_epochs=max_epochs, random_transform=True)
        epochs_run = []
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_run.append(e.state.epoch))
        if stop_after_epoch is not None:
            trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after_epoch), lambda e: e.terminate())
        trainer.run()
        return net, trainer, epochs_run

    def test_a_checkpoint_may_lack_only_the_optional_objects(self):
        """A checkpoint written before an object was saved resumes with that object fresh (and a warning) when the
        object is optional; a missing required object stops the resume and names what the file holds."""
        with tempfile.TemporaryDirectory() as tmp:
            self._run(tmp, net_seed=0, max_epochs=1)  # checkpoint_last.pt holds model, optimizer, lr_scheduler
            net, extra = make_net(0), torch.optim.lr_scheduler.LambdaLR(
                torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), lambda e: 1.0)
            opt = torch.optim.AdamW(param_groups(net, 0.01, weight_decay=0.01))
            with self.assertRaises(ValueError):
                ResumableCheckpoint(tmp, {"model": net}, optional=["extra"])  # not in save_dict
            for optional in ([], ["extra"]):
                handler = ResumableCheckpoint(tmp, {"model": net, "optimizer": opt, "extra": extra}, resume=True,
                                              optional=optional)
                trainer = make_trainer(net, opt, [handler], max_epochs=2)
                if not optional:
                    with self.assertRaisesRegex(ValueError, r"lacks \['extra'\]"):
                        trainer.run()
                    continue
                with self.assertLogs("bundle.training", "WARNING") as logs:
                    trainer.run()
                self.assertTrue(any("without ['extra']" in m for m in logs.output), logs.output)
                self.assertEqual(trainer.state.epoch, 2)

    def test_resume_at_epoch_boundary_matches_uninterrupted(self):
        ref_net, _, _ = self._run(None, net_seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            with self.assertLogs("bundle.training", "INFO") as logs:
                self._run(tmp, net_seed=0, stop_after_epoch=1)
            self.assertTrue(any("no checkpoint at" in m and "starting fresh" in m for m in logs.output))
            with self.assertLogs("bundle.training", "INFO") as logs:
                net, trainer, epochs_run = self._run(tmp, net_seed=5)  # other init: the checkpoint must win
            self.assertTrue(any("resuming from" in m and "epoch 1, iteration 4" in m for m in logs.output), logs.output)
            self.assertEqual(epochs_run, [2, 3])
            self.assertEqual((trainer.state.epoch, trainer.state.iteration), (3, 12))
            # same operations, same order, same RNG streams on the same machine: identical up to float noise
            self.assertLessEqual(max_diff(weights(net), weights(ref_net)), 1e-6)
            ckpt = torch.load(os.path.join(tmp, "checkpoint_last.pt"), weights_only=True)
            self.assertEqual((ckpt["epoch"], ckpt["iteration"]), (3, 12))
            # resuming a finished run trains nothing and does not complain about max_epochs
            _, trainer, epochs_run = self._run(tmp, net_seed=5)
            self.assertEqual(epochs_run, [])
            self.assertEqual(trainer.state.iteration, 12)

    def test_kill_mid_epoch_and_resume(self):
        with tempfile.TemporaryDirectory() as tmp:
            script = os.path.join(tmp, "train.py")
            with open(script, "w") as f:
                f.write(TRAIN_SCRIPT.format(repo=REPO))
            ref_dir, run_dir = os.path.join(tmp, "ref"), os.path.join(tmp, "run")
            env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, script]
            # the uninterrupted reference and the run that gets killed, side by side
            ref = subprocess.Popen(cmd + [ref_dir, "full"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            killed = subprocess.run(cmd + [run_dir, "kill"], env=env, capture_output=True, text=True, timeout=120)
            self.assertEqual(killed.returncode, -9, killed.stdout + killed.stderr)
            leftovers = glob.glob(os.path.join(run_dir, "*.tmp"))
            self.assertEqual(len(leftovers), 1, "the kill should hit the 6th checkpoint write")
            ckpt = torch.load(os.path.join(run_dir, "checkpoint_last.pt"), weights_only=True)
            self.assertEqual((ckpt["epoch"], ckpt["iteration"]), (2, 12))  # the previous checkpoint is intact
            self.assertEqual(ckpt["data_batches_fetched"], 4)

            resumed = subprocess.run(cmd + [run_dir, "resume"], env=env, capture_output=True, text=True, timeout=120)
            self.assertEqual(resumed.returncode, 0, resumed.stdout + resumed.stderr)
            self.assertIn("resuming from", resumed.stdout)
            self.assertIn("epoch 2, iteration 12", resumed.stdout)
            out, _ = ref.communicate(timeout=120)
            self.assertEqual(ref.returncode, 0, out)

            self.assertEqual(glob.glob(os.path.join(run_dir, "*.tmp")), [])
            final = torch.load(os.path.join(run_dir, "final.pt"), weights_only=True)
            want = torch.load(os.path.join(ref_dir, "final.pt"), weights_only=True)
            self.assertEqual((final["epoch"], final["iteration"]), (4, 32))
            self.assertEqual((want["epoch"], want["iteration"]), (4, 32))
            last = torch.load(os.path.join(run_dir, "checkpoint_last.pt"), weights_only=True)
            self.assertEqual((last["epoch"], last["iteration"]), (4, 32))
            # Same ops in the same order with the same RNG streams and thread count: the weights are in fact
            # bit-identical; 1e-6 only leaves room for float reordering, while a wrong data order, augmentation
            # draw, dropout mask or schedule step changes them by ~1e-3 or more.
            for name, value in want["state"].items():
                self.assertLessEqual(float((final["state"][name] - value).abs().max()), 1e-6, name)


class NaNOnSomeCalls(torch.nn.Module):
    """MSE, multiplied by NaN (so the gradients are NaN too) on the chosen calls (1-based); all calls if None."""

    def __init__(self, bad_calls=None):
        super().__init__()
        self.bad_calls = bad_calls
        self.calls = 0

    def forward(self, pred, target):
        self.calls += 1
        loss = torch.nn.functional.mse_loss(pred, target)
        if self.bad_calls is None or self.calls in self.bad_calls:
            loss = loss * float("nan")
        return loss


class TestNonFiniteGuard(unittest.TestCase):
    def test_bad_argument(self):
        with self.assertRaises(ValueError):
            NonFiniteGuard(max_consecutive=0)

    def test_nan_step_is_skipped_and_training_continues(self):
        net = make_net()
        opt = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.1)  # decay would move weights too
        trainer = make_trainer(net, opt, [NonFiniteGuard(max_consecutive=2), GradientMonitor(max_norm=1.0)],
                               loss=NaNOnSomeCalls({3}))
        changed, before = {}, {}
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: before.update(w=weights(net)))
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED,
            lambda e: changed.__setitem__(e.state.iteration, max_diff(before["w"], weights(net)) > 0),
        )
        with self.assertLogs("bundle.training", "WARNING") as logs:
            trainer.run()
        self.assertEqual(trainer.state.iteration, 2 * N_ITEMS // BATCH)  # ran to the end
        self.assertFalse(changed[3])  # the NaN step left every weight untouched (AdamW skips grad=None)
        self.assertTrue(all(v for k, v in changed.items() if k != 3))
        self.assertEqual(trainer.state.nonfinite_steps, 1)
        self.assertEqual(len(logs.output), 1)
        self.assertIn("epoch 1 iteration 3", logs.output[0])
        self.assertTrue(all(torch.isfinite(p).all() for p in net.parameters()))

    def test_always_nan_stops(self):
        net = make_net()
        start = weights(net)
        opt = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.1)
        trainer = make_trainer(net, opt, [NonFiniteGuard(max_consecutive=3)], loss=NaNOnSomeCalls())
        with self.assertLogs("bundle.training", "WARNING"):
            with self.assertRaises(RuntimeError) as ctx:
                trainer.run()
        msg = str(ctx.exception)
        self.assertIn("NaN", msg)
        self.assertIn("3 steps in a row at epoch 1 iteration 3", msg)
        self.assertEqual(max_diff(start, weights(net)), 0.0)


class TestGradientMonitor(unittest.TestCase):
    def test_clips_and_writes(self):
        net = make_net()
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        writer = mock.MagicMock()
        monitor = GradientMonitor(max_norm=1e-3, log_every=2, summary_writer=writer)
        trainer = make_trainer(net, opt, [NonFiniteGuard(), monitor], max_epochs=1)
        clipped, seen = [], []

        def after(engine):  # runs after the monitor, before optimizer.step()
            seen.append(monitor.last_norms["total"])
            clipped.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()]))))

        trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, after)
        trainer.run()
        self.assertEqual(len(clipped), 4)
        self.assertTrue(all(n > 1e-3 for n in seen))  # clipping really had work to do
        self.assertTrue(all(n <= 1e-3 + 1e-6 for n in clipped))
        self.assertEqual(trainer.state.metrics["grad_norm"], seen[-1])
        self.assertEqual(set(trainer.state.grad_norms), {"total", "0", "3"})  # children with parameters
        tags = [(c.args[0], c.args[2]) for c in writer.add_scalar.call_args_list]
        self.assertIn(("grad_norm/total", 2), tags)
        self.assertIn(("grad_norm/0", 4), tags)
        self.assertNotIn(("grad_norm/total", 3), tags)

    def test_named_modules_and_event_file(self):
        net = make_net()
        bad = make_trainer(net, torch.optim.SGD(net.parameters(), lr=0.01), [GradientMonitor(modules=["nope"])])
        with self.assertRaisesRegex(ValueError, "no submodule 'nope'"):
            bad.run()
        with self.assertRaises(ValueError):
            GradientMonitor(max_norm=0)
        with tempfile.TemporaryDirectory() as tmp:
            monitor = GradientMonitor(log_every=1, modules=["3"], log_dir=tmp)
            make_trainer(net, torch.optim.SGD(net.parameters(), lr=0.01), [monitor], max_epochs=1).run()
            self.assertEqual(set(monitor.last_norms), {"total", "3"})
            self.assertTrue(glob.glob(os.path.join(tmp, "events.out.tfevents*")))


class TestScheduleAndGroups(unittest.TestCase):
    def test_warmup_cosine_values(self):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = warmup_cosine_schedule(opt, warmup_epochs=2, max_epochs=6, min_lr_ratio=0.1)
        lrs = []
        for _ in range(8):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        cos = lambda k: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 4))  # noqa: E731
        want = [1 / 3, 2 / 3, 1.0, cos(1), 0.55, cos(3), 0.1, 0.1]
        for got, exp in zip(lrs, want):
            self.assertAlmostEqual(got, exp, places=6)
        with self.assertRaises(ValueError):
            warmup_cosine_schedule(opt, 3, 3)
        with self.assertRaises(ValueError):
            warmup_cosine_schedule(opt, 0, 3, min_lr_ratio=1.5)

    def test_param_groups(self):
        class Hybrid(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.cnn = torch.nn.Conv2d(1, 2, 3)
                self.transformer = torch.nn.Linear(4, 4)
                self.frozen = torch.nn.Linear(2, 2)
                self.frozen.requires_grad_(False)

            def transformer_parameters(self):
                return list(self.transformer.parameters())

            def cnn_parameters(self):
                ids = {id(p) for p in self.transformer_parameters()}
                return [p for p in self.parameters() if id(p) not in ids]

        net = Hybrid()
        loss = HeatmapCrossEntropyLoss(learn_weights=True, num_scales=3)
        groups = param_groups(net, 1e-3, transformer_lr=1e-4, weight_decay=0.05, extra_modules=[loss])
        self.assertEqual([g["name"] for g in groups], ["cnn", "transformer", "extra"])
        self.assertEqual([g["lr"] for g in groups], [1e-3, 1e-4, 1e-3])
        self.assertEqual([g["weight_decay"] for g in groups], [0.05, 0.05, 0.0])
        self.assertEqual([len(g["params"]) for g in groups], [2, 2, 1])  # frozen layer left out
        self.assertIs(groups[2]["params"][0], loss.log_vars)
        opt = torch.optim.AdamW(groups)
        self.assertEqual([g["name"] for g in opt.param_groups], ["cnn", "transformer", "extra"])

        plain = torch.nn.Linear(3, 3)
        groups = param_groups(plain, 0.01, extra_modules=HeatmapCrossEntropyLoss())  # loss without parameters
        self.assertEqual([(g["name"], len(g["params"])) for g in groups], [("network", 2)])
        with self.assertRaises(ValueError):
            param_groups(plain, 0.01, extra_modules=[plain])  # a parameter in two groups
        with self.assertRaises(ValueError):
            param_groups(plain, 0.0)


class TestLoggers(unittest.TestCase):
    def test_learning_rate_logger(self):
        net = make_net()
        silent = LearningRateLogger()  # no writer (a DDP rank > 0): runs and writes nothing
        make_trainer(net, torch.optim.AdamW(net.parameters()), [silent], max_epochs=1).run()
        opt = torch.optim.AdamW(param_groups(net, 0.01, extra_modules=[HeatmapCrossEntropyLoss(learn_weights=True, num_scales=2)]))
        sched = warmup_cosine_schedule(opt, 1, 2)
        writer = mock.MagicMock()
        logger = LearningRateLogger(summary_writer=writer)
        make_trainer(net, opt, [LrScheduleHandler(sched, print_lr=False), logger], max_epochs=2).run()
        calls = [c.args for c in writer.add_scalar.call_args_list]
        self.assertEqual([c[0] for c in calls], ["lr/network", "lr/extra"] * 2)
        self.assertAlmostEqual(calls[0][1], 0.005)  # warm-up epoch: half the lr
        self.assertEqual(calls[0][2], 1)
        self.assertAlmostEqual(calls[2][1], 0.01)
        self.assertEqual(calls[2][2], 2)

    def test_loss_weight_logger(self):
        loss = HeatmapCrossEntropyLoss(learn_weights=True, num_scales=2)
        with torch.no_grad():
            loss.log_vars.copy_(torch.tensor([0.0, math.log(2.0)]))
        loss(torch.randn(1, 2, 3, 6, 6), torch.rand(1, 3, 6, 6))
        writer = mock.MagicMock()
        logger = LossWeightLogger(loss, summary_writer=writer, log_every=5)
        logger(SimpleNamespace(state=SimpleNamespace(iteration=5)))
        got = {c.args[0]: (c.args[1], c.args[2]) for c in writer.add_scalar.call_args_list}
        self.assertEqual(set(got), {"loss/head0", "loss/head1", "loss/weight_head0", "loss/weight_head1"})
        self.assertAlmostEqual(got["loss/weight_head1"][0], 0.5, places=6)
        self.assertAlmostEqual(got["loss/head0"][0], loss.last_scale_losses[0], places=6)
        self.assertEqual(got["loss/head0"][1], 5)
        self.assertEqual(LossWeightLogger(torch.nn.MSELoss(), summary_writer=writer).scalars(), {})
        self.assertIsNone(LossWeightLogger(loss).writer)  # no writer: logs nothing



class TestValidationState(unittest.TestCase):
    """A resumed run keeps the best metric, the best-model record and the early-stopping counter."""

    def make(self, tmp):
        from types import SimpleNamespace

        from ignite.engine import Engine
        from monai.handlers import CheckpointSaver, EarlyStopHandler

        from bundle.engine import ValidationState

        evaluator = SimpleNamespace(state=SimpleNamespace(best_metric=-1, best_metric_epoch=-1))
        saver = CheckpointSaver(save_dir=tmp, save_dict={"model": torch.nn.Linear(2, 2)}, save_key_metric=True,
                                key_metric_filename="model.pt", key_metric_negative_sign=True)
        stop = EarlyStopHandler(patience=5, score_function=lambda e: 0.0, trainer=None)
        stop.set_trainer(Engine(lambda e, b: None))
        return ValidationState(evaluator, saver, stop), evaluator, saver, stop

    def test_round_trip(self):
        with tempfile.TemporaryDirectory() as tmp:
            vs, evaluator, saver, stop = self.make(tmp)
            evaluator.state.best_metric, evaluator.state.best_metric_epoch = 1.25, 6
            saver._key_metric_checkpoint.load_state_dict({"_saved": [(-1.25, "model.pt")]})
            stop._handler.counter, stop._handler.best_score = 3, -1.25
            state = vs.state_dict()
            vs2, evaluator2, saver2, stop2 = self.make(tmp)
            vs2.load_state_dict(state)
            self.assertEqual((evaluator2.state.best_metric, evaluator2.state.best_metric_epoch), (1.25, 6))
            self.assertEqual(saver2._key_metric_checkpoint.state_dict(), saver._key_metric_checkpoint.state_dict())
            self.assertEqual(stop2._handler.counter, 3)
            self.assertEqual(stop2._handler.best_score, -1.25)


class TestAtomicBestSaver(unittest.TestCase):
    def test_best_model_written_atomically(self):
        from unittest import mock

        from bundle.engine import AtomicCheckpointSaver

        with tempfile.TemporaryDirectory() as tmp:
            saver = AtomicCheckpointSaver(save_dir=tmp, save_dict={"model": torch.nn.Linear(2, 2)},
                                          save_key_metric=True, key_metric_filename="model.pt")
            handler = saver._key_metric_checkpoint.save_handler
            self.assertTrue(handler._atomic)
            handler({"model": torch.nn.Linear(2, 2).state_dict()}, "model.pt")
            good = torch.load(os.path.join(tmp, "model.pt"), weights_only=True)
            with mock.patch("torch.save", side_effect=RuntimeError("killed mid-write")):
                with self.assertRaises(RuntimeError):
                    handler({"model": torch.nn.Linear(2, 2).state_dict()}, "model.pt")
            after = torch.load(os.path.join(tmp, "model.pt"), weights_only=True)  # the old file is intact
            self.assertTrue(torch.equal(good["model"]["weight"], after["model"]["weight"]))
            self.assertEqual(sorted(os.listdir(tmp)), ["model.pt"])  # no temporary file left


class TestFinalValidation(unittest.TestCase):
    def test_validates_a_skipped_last_epoch_once(self):
        from types import SimpleNamespace

        from ignite.engine import Engine

        from bundle.engine import FinalValidation

        runs = []
        validator = SimpleNamespace(state=SimpleNamespace(epoch=0))
        validator.run = lambda epoch: (runs.append(epoch), setattr(validator.state, "epoch", epoch))
        for max_epochs, expected in ((3, [3]), (4, [])):  # interval 2: epoch 4 was validated already
            runs.clear()
            validator.state.epoch = 0 if max_epochs == 3 else 4
            trainer = Engine(lambda e, b: None)
            FinalValidation(validator, interval=2).attach(trainer)
            trainer.run([0, 1], max_epochs=max_epochs)
            self.assertEqual(runs, expected)


def _budget_rank(rank: int, init_file: str, result_file: str) -> None:
    """One of two gloo processes training under one time budget; rank 1's epochs take twice as long."""
    import torch.distributed as dist
    from ignite.engine import Engine

    from bundle.engine import TimeBudget

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        clock, step = [0.0], 1.0 + rank
        trainer = Engine(lambda e, b: None)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: clock.__setitem__(0, clock[0] + step))
        TimeBudget(1.0).attach(trainer)
        with mock.patch("bundle.engine.time.perf_counter", lambda: clock[0]):
            trainer.run([0], max_epochs=1000)
        dist.barrier()  # a rank left with more epochs than the other would wait here, or in its next all-reduce
        with open(f"{result_file}.{rank}", "w") as f:
            f.write(str(trainer.state.epoch))
    finally:
        dist.destroy_process_group()


class TestTimeBudget(unittest.TestCase):
    """A fake clock: epochs take 1 s, then 3 s from epoch 5 on (another training started on the same GPU)."""

    def _run(self, reestimate: bool, max_epochs: int = 1000, lengthen: bool = True, slow_from: int = 4):
        from ignite.engine import Engine

        from bundle.engine import TimeBudget

        clock = [0.0]
        trainer = Engine(lambda e, b: None)
        trainer.add_event_handler(
            Events.EPOCH_COMPLETED,
            lambda e: clock.__setitem__(0, clock[0] + (1.0 if e.state.epoch <= slow_from else 3.0)),
        )
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule = warmup_cosine_schedule(opt, 1, max_epochs)
        budget = TimeBudget(1.0, schedule, reestimate=reestimate, lengthen=lengthen)  # 60 s
        with mock.patch("bundle.engine.time.perf_counter", lambda: clock[0]):
            budget.attach(trainer)  # the clock advances before the budget looks at each epoch
            trainer.run([0], max_epochs=max_epochs)
        return trainer.state.epoch, clock[0], schedule.lr_lambdas[0].total

    def test_a_cap_trains_the_epochs_asked_when_they_fit(self):
        """lengthen=False: 20 epochs of 1 s fit 60 s: the run trains its 20, its schedule untouched (not the 60 that fit);
        when they do not fit (3 s epochs from epoch 5 on) it stops inside the budget, as the filling budget does."""
        self.assertEqual(self._run(True, max_epochs=20, lengthen=False, slow_from=1000), (20, 20.0, 20))
        self.assertEqual(self._run(True, max_epochs=1000, lengthen=True, slow_from=1000), (60, 60.0, 60))
        capped, filled = self._run(True, max_epochs=40, lengthen=False), self._run(True)
        self.assertEqual(capped, filled)
        self.assertLess(capped[0], 30)

    def test_decides_once_by_default(self):
        epochs, seconds, total = self._run(False)
        self.assertEqual(epochs, 60)  # 2 epochs timed at 1 s: 58 more fit
        self.assertEqual(total, 60)
        self.assertGreater(seconds, 150)  # the slowdown is not seen: 4 + 56 * 3 s

    def test_reestimate_ends_inside_the_budget(self):
        epochs, seconds, total = self._run(True)
        self.assertLessEqual(seconds, 60 + 3)  # at most the last epoch past the budget
        self.assertGreater(seconds, 60 - 2 * 3)
        self.assertEqual(total, epochs)  # the cosine schedule ends with the run
        self.assertLess(epochs, 30)

    def _run_killed(self, reestimate: bool, kill_after: int, saved: bool = True):
        """The same run killed after ``kill_after`` epochs and resumed by a new process: a fresh engine (the command
        line's max_epochs again), a fresh budget and schedule, their states loaded at STARTED as
        ResumableCheckpoint does (the budget's only when ``saved``: a checkpoint written before it had one)."""
        from ignite.engine import Engine

        from bundle.engine import TimeBudget

        clock = [0.0]

        def run(state: dict | None, max_epochs: int):
            trainer = Engine(lambda e, b: None)
            trainer.add_event_handler(
                Events.EPOCH_COMPLETED, lambda e: clock.__setitem__(0, clock[0] + (1.0 if e.state.epoch <= 4 else 3.0))
            )
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
            schedule = warmup_cosine_schedule(opt, 1, 1000)
            budget = TimeBudget(1.0, schedule, reestimate=reestimate)
            budget.attach(trainer)
            if state is not None:
                def load(e):
                    e.state.epoch = state["epoch"]
                    schedule.load_state_dict(state["lr_scheduler"])
                    if saved:
                        budget.load_state_dict(state["time_budget"])
                trainer.add_event_handler(Events.STARTED, load)
            trainer.add_event_handler(
                Events.EPOCH_COMPLETED(once=kill_after) if state is None else Events.EPOCH_COMPLETED(once=10**6),
                lambda e: e.terminate(),
            )
            with mock.patch("bundle.engine.time.perf_counter", lambda: clock[0]):
                trainer.run([0], max_epochs=max_epochs)
                return trainer, schedule, budget.state_dict()  # as the checkpoint saves it, the clock still patched

        trainer, schedule, budget_state = run(None, 1000)
        state = {"epoch": trainer.state.epoch, "lr_scheduler": schedule.state_dict(), "time_budget": budget_state}
        self.assertEqual(state["epoch"], kill_after)
        clock[0] += 100.0  # the machine was down: no training time
        trainer, schedule, _ = run(state, 1000)
        return trainer.state.epoch, clock[0] - 100.0, schedule.lr_lambdas[0].total

    def test_a_resumed_run_keeps_its_budget(self):
        """Killed and resumed, a run ends where it would have ended uninterrupted: the minutes trained before the kill
        count, and the schedule is not stretched again (which would raise the learning rate mid-run)."""
        for reestimate in (False, True):
            for kill_after in (3, 10):
                with self.subTest(reestimate=reestimate, kill_after=kill_after):
                    self.assertEqual(self._run_killed(reestimate, kill_after), self._run(reestimate))

    def test_every_rank_takes_rank_0s_decision(self):
        """Under DDP each rank has its own clock; all of them must stop after the same epoch (else one waits forever
        in the next all-reduce). Rank 0's epochs take 1 s, rank 1's 2 s: both train rank 0's 60 epochs."""
        import torch.multiprocessing as mp

        with tempfile.TemporaryDirectory() as tmp:
            mp.start_processes(_budget_rank, args=(f"{tmp}/init", f"{tmp}/epochs"), nprocs=2, start_method="spawn")
            self.assertEqual([open(f"{tmp}/epochs.{r}").read() for r in (0, 1)], ["60", "60"])

    def test_a_checkpoint_without_the_budget_times_the_resumed_epochs_only(self):
        """A checkpoint written before the budget was saved: the resumed run times its own epochs (not the earlier
        epochs at no cost) and fits a budget of its own; it does not stretch the schedule past what fits."""
        epochs, seconds, total = self._run_killed(False, 10, saved=False)
        self.assertEqual(total, epochs)
        resumed = seconds - (4 * 1.0 + 6 * 3.0)  # the 10 epochs before the kill took 22 s
        self.assertAlmostEqual(resumed, 60, delta=2 * 3)  # then about one budget more


if __name__ == "__main__":
    unittest.main()
