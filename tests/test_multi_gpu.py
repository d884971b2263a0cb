"""configs/multi_gpu_train.yaml runs under torchrun with 2 processes on CPU (gloo), as it would on 2 GPUs."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class TestMultiProcessTraining(unittest.TestCase):
    def test_two_processes_gloo(self):
        tmp = Path(tempfile.mkdtemp())
        try:
            data, out = tmp / "synthetic", tmp / "runs"
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
                "-m", "monai.bundle", "run", "training",
                "--config_file", "['configs/train.yaml','configs/multi_gpu_train.yaml']",
                "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf",
                "--synthetic_dir", str(data), "--dataset_dir", str(data), "--synthetic_n_train", "10",
                "--synthetic_n_test", "2", "--output_dir", str(out), "--full_image_size", "[64, 48]",
                "--batch_size", "2", "--num_workers", "0", "--max_epochs", "2", "--val_interval", "1",
                "--progress_bar", "False",
            ]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
            # the synthetic set is made once up front, so the two ranks do not write it at the same time
            subprocess.run([sys.executable, "-m", "bundle.synthetic", "--out", str(data), "--n-train", "10",
                            "--n-test", "2"], cwd=ROOT, env=env, check=True, capture_output=True)
            res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            if res.returncode != 0 and "terminate called without an active exception" in res.stdout + res.stderr:
                # known, rare (about 1 run in 10 here): a rank aborts in gloo's teardown after training has
                # finished; run once more rather than fail on it, but any other failure fails the test
                shutil.rmtree(out, ignore_errors=True)
                res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            self.assertEqual(res.returncode, 0, res.stdout[-3000:] + res.stderr[-3000:])
            self.assertTrue((out / "model.pt").is_file())
            self.assertTrue((out / "checkpoint_last.pt").is_file())
            self.assertEqual(json.loads((out / "settings.json").read_text())["kind"], "global")  # rank 0 wrote it
            curve = json.loads((out / "learning_curve.json").read_text())
            self.assertEqual([p["epoch"] for p in curve], [1, 2])
            # the 8 training images are split over the 2 ranks: 2 iterations of batch 2 each per epoch
            self.assertIn("Epoch[2] Complete", res.stdout + res.stderr)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
