"""scripts/cross_validate.py: one tiny training per fold on the embedded synthetic data, then cv.json."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import cross_validate  # noqa: E402


class TestCrossValidate(unittest.TestCase):
    def test_two_folds_train_summarise_and_resume(self):
        tmp = Path(tempfile.mkdtemp())
        try:
            out, data = tmp / "cv", tmp / "synthetic"
            overrides = [
                "--bundle_root", str(ROOT), "--synthetic_dir", str(data), "--dataset_dir", str(data),
                "--synthetic_n_train", "8", "--synthetic_n_test", "1", "--image_size", "[64,48]",
                "--heatmap_sigma", "1.5", "--batch_size", "2", "--num_workers", "0", "--max_epochs", "1",
                "--val_interval", "1",
            ]
            args = ["--out", str(out), "--config_file", str(ROOT / "configs" / "train.yaml"), "--n_folds", "2"]
            self.assertEqual(cross_validate.main(args + ["--"] + overrides), 0)
            cv = json.loads((out / "cv.json").read_text())
            self.assertEqual(sorted(cv["folds"]), ["0", "1"])
            for k in ("0", "1"):
                self.assertEqual(cv["folds"][k]["epoch"], 1)
                self.assertTrue((out / f"fold_{k}" / "model.pt").is_file())
            mre = [cv["folds"][k]["val_mre"] for k in ("0", "1")]
            self.assertNotEqual(mre[0], mre[1])  # different validation images, different networks
            self.assertAlmostEqual(cv["summary"]["val_mre"]["mean"], sum(mre) / 2, places=3)
            self.assertEqual(cv["summary"]["val_mre"]["n"], 2)
            # a second call keeps the trained folds and compares with another folder, fold by fold
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = cross_validate.main(args + ["--compare", str(out), "--"] + overrides)
            self.assertEqual(rc, 0)
            self.assertIn("fold 0: already trained", buf.getvalue())
            cmp = json.loads((out / "cv.json").read_text())["compare"]
            self.assertEqual(cmp["val_mre_minus_other"]["mean"], 0.0)
            with self.assertRaises(SystemExit):  # the script sets the fold and the output folder itself
                with contextlib.redirect_stderr(io.StringIO()):
                    cross_validate.main(args + ["--", "--val_fold", "1"])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
