"""bundle/outputs.py: the batch review page (report.html) and the overlay caption."""

import contextlib
import unittest

import numpy as np

from bundle.analysis import analyse
from bundle.outputs import analysis_caption, batch_report_html, overlay_picture
from tests.test_analysis import face


class TestReport(unittest.TestCase):
    def test_images_analysis_landmarks_and_errors_escaped(self):
        rows = analyse(face(sna=86.0, snb=78.0))  # SNA prognathic (type 2), ANB 8: Class II
        entries = [{"image": "a<1>.png", "overlay": "a<1>_overlay.png", "analysis": rows,
                    "landmarks": [(1, "Sella", 10.0, 20.0, 0.5), (2, "Nasion", 30.0, 40.0, 1.25)]},
                   {"image": "b.png", "overlay": None, "analysis": None, "landmarks": [(1, "Sella", 1.0, 2.0, 3.0)]}]
        page = batch_report_html(entries, [("c.dcm", "no pixel spacing & <tags>")], "Landmarks of run")
        self.assertIn("2 image(s) read, 1 could not be read", page)
        self.assertIn("<a href='a&lt;1&gt;_overlay.png'>", page)  # names escaped, overlay linked
        self.assertNotIn("a<1>", page)
        self.assertIn("<b>2: prognathic maxilla</b>", page)  # outside the normal range: bold
        self.assertIn("<td>1: normal mandible</td>", page)  # SNB 78: normal, not bold
        self.assertIn("<td>1.25</td>", page)
        self.assertEqual(page.count("<img "), 1)  # b.png has no overlay
        self.assertIn("no pixel spacing &amp; &lt;tags&gt;", page)

    def test_caption_band_hides_nothing(self):
        image = np.random.default_rng(0).uniform(0, 1, (300, 200))
        plain = overlay_picture(image, np.array([[50.0, 60.0]]))
        lines = analysis_caption(analyse(face()))
        self.assertEqual(len(lines), 5)  # a title and the eight measurements two to a line
        self.assertIn("ANB 4.0°: skeletal Class I", lines[1])
        framed = overlay_picture(image, np.array([[50.0, 60.0]]), caption=lines)
        self.assertEqual(framed.width, plain.width)
        band = framed.height - plain.height
        self.assertGreater(band, 0)
        np.testing.assert_array_equal(np.asarray(framed)[band:], np.asarray(plain))  # the picture itself is untouched



class TestWriterAnalysis(unittest.TestCase):
    def test_degenerate_landmarks_keep_their_rows_without_an_analysis(self):
        """An image whose landmarks allow no analysis (two defining points at one place) still gets its landmarks,
        point list and report entry; only its measurements are left out, and it is not counted as failed."""
        import csv
        import tempfile
        from pathlib import Path

        import torch

        from bundle import ISBI_LANDMARK_NAMES
        from bundle.outputs import LandmarkOutputWriter
        from tests.test_analysis import I

        with tempfile.TemporaryDirectory() as tmp:
            writer = LandmarkOutputWriter(tmp, ISBI_LANDMARK_NAMES, overlay=False)
            writer._start(None)
            for name, p in (("good.png", face()), ("bad.png", face())):
                if name == "bad.png":
                    p[I["Menton"]] = p[I["Nasion"]]
                yx_mm = torch.as_tensor(p[:, ::-1].copy(), dtype=torch.float32)
                out = {"pred_landmarks": yx_mm / 0.1, "pred_mm": yx_mm, "uncertainty_mm": torch.ones(19)}
                with self.assertLogs("bundle.outputs", "WARNING") if name == "bad.png" else contextlib.nullcontext():
                    writer._write_one(name, name, out, {"spacing": torch.tensor([0.1, 0.1])})
            writer._report(force=True)
            with open(Path(tmp) / "landmarks.csv") as f:
                self.assertEqual(len(list(csv.DictReader(f))), 2 * 19)
            with open(Path(tmp) / "measurements.csv") as f:
                self.assertEqual({r["image"] for r in csv.DictReader(f)}, {"good.png"})
            self.assertEqual((writer.n_ok, writer.n_failed), (2, 0))
            self.assertTrue((Path(tmp) / "bad.mrk.json").is_file())
            self.assertIn("<h2>bad.png</h2>", (Path(tmp) / "report.html").read_text())


if __name__ == "__main__":
    unittest.main()
