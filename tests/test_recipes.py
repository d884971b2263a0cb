"""scripts/cpu_recipe.sh end to end on a small synthetic set: both global networks and the refinement network train,
the refinement within what TOTAL_MINUTES leaves, the evaluations average the two global networks, the inference script
it writes finds the evaluation's landmarks, a second run keeps what the first finished."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import torch

from tests.helpers import evaluated_positions, inferred_positions

ROOT = Path(__file__).resolve().parents[1]


class TestCpuRecipe(unittest.TestCase):
    def test_two_global_networks_end_to_end(self):
        tmp = Path(tempfile.mkdtemp())
        try:
            data, out = tmp / "synthetic", tmp / "recipe"
            # two global networks (the default where bf16 is native; CI's CPU defaults to one: see test_engine)
            env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT), "REFINE_MEMBERS": "1",
                   "GLOBAL_MEMBERS": "2", "TOTAL_MINUTES": "0.01"}
            # few images: every stage still times its epochs and stops on its budget, each epoch shorter (MAHT-Net at
            # 400 x 320 in fp32 takes about 15 s an epoch of 8 images on 2 AVX2 cores)
            subprocess.run([sys.executable, "-m", "bundle.synthetic", "--out", str(data), "--n-train", "4",
                            "--n-test", "2"], cwd=ROOT, env=env, check=True, capture_output=True)
            # global budgets of about a second: each trains its first epoch and stops; the refinement keeps refine.yaml's
            # 16 epochs (REFINE_MINUTES 0), capped by what the global stages left of TOTAL_MINUTES: nothing
            cmd = ["bash", "scripts/cpu_recipe.sh", str(out), "0.02", "0", str(data)]
            res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
            self.assertEqual(res.returncode, 0, res.stdout[-3000:] + res.stderr[-3000:])
            for stage in ("global", "global_s1", "refine"):
                self.assertTrue((out / stage / "model.pt").is_file(), stage)
                self.assertTrue((out / stage / "done").is_file(), stage)
                # each budgeted stage re-fits its epochs after every epoch (the default since 0.5.18)
                self.assertIn(">time_budget_reestimate:'true'", "".join((out / f"{stage}.log").read_text().split()), stage)
            # the refinement's budget only caps its epochs: the two it times and one more, not 16 (nor more)
            self.assertIn(">time_budget_lengthen:'false'", "".join((out / "refine.log").read_text().split()))
            self.assertEqual(torch.load(out / "refine" / "checkpoint_last.pt", weights_only=True)["epoch"], 3)
            self.assertIn("too few for a good network", res.stderr)
            self.assertFalse((out / "refine_s1").exists())
            for name in ("eval_coarse", "eval_refined"):
                log = "".join((out / f"{name}.log").read_text().split())  # the log wraps long values
                self.assertIn(f">ensemble:['{out}/global/model.pt','{out}/global_s1/model.pt']", log, name)
                metrics = json.loads((out / name / "metrics.json").read_text())
                self.assertEqual(metrics["n_images"], 2)
            result = json.loads((out / "result.json").read_text())
            self.assertEqual(set(result["minutes"]), {"global", "global_s1", "refine", "training_total"})
            self.assertIn("eval_refined", result)
            # OUT/infer.sh runs the inference bundle with these weights as the evaluation ran them: the same landmarks
            infer_out = tmp / "infer"
            res = subprocess.run(["bash", str(out / "infer.sh"), str(data / "RawImage" / "Test1Data"), str(infer_out)],
                                 cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
            self.assertEqual(res.returncode, 0, res.stdout[-3000:] + res.stderr[-3000:])
            evaluated, inferred = evaluated_positions(out / "eval_refined"), inferred_positions(infer_out)
            self.assertEqual(set(inferred), set(evaluated))
            for key, xy in inferred.items():
                self.assertAlmostEqual(xy[0], evaluated[key][0], delta=0.02, msg=key)
                self.assertAlmostEqual(xy[1], evaluated[key][1], delta=0.02, msg=key)
            # run again: every stage and evaluation is kept, nothing trains
            again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
            self.assertEqual(again.returncode, 0, again.stdout[-3000:] + again.stderr[-3000:])
            for stage in ("global", "global_s1", "refine"):
                self.assertIn(f"{stage}: already trained", again.stdout)
            self.assertIn("eval_refined: already evaluated", again.stdout)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
