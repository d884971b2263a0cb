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
                   {"image": "b.png", "overlay": None, "analysis": None, "landmarks": [(1, "Sella", 1.0, 2.0, 3.0)],
                    "checks": ["check the pixel spacing <0.15 mm>"]}]
        page = batch_report_html(entries, [("c.dcm", "no pixel spacing & <tags>")], "Landmarks of run")
        self.assertIn("1 image(s) to check first: <a href='#b.png'>b.png</a>", page)  # linked from the top
        self.assertIn("<p class='check'>check the pixel spacing &lt;0.15 mm&gt;</p>", page)  # and shown with the image
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


class TestWriterGeometry(unittest.TestCase):
    def test_point_list_of_a_dicom_lands_on_it_and_reads_back(self):
        """The point list written for a DICOM with a position and orientation is in the patient space Slicer shows
        the image in; read beside the same DICOM (a reviewed point list used for training) it gives the pixels back."""
        import json
        import tempfile
        from pathlib import Path

        import torch

        from bundle import ISBI_LANDMARK_NAMES
        from bundle.outputs import LandmarkOutputWriter
        from bundle.transforms import LoadCephalogramd
        from tests.test_io import write_dicom

        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            dicom = root / "ceph.dcm"
            write_dicom(dicom, np.arange(200 * 160, dtype=np.uint16).reshape(200, 160), spacing=(0.5, 0.4), position=(-30.0, 12.0, 7.0),
                        orientation=(1, 0, 0, 0, 1, 0))
            item = LoadCephalogramd(spacing_mm=None)({"image": str(dicom)})
            rng = np.random.default_rng(0)
            yx = torch.as_tensor(rng.uniform(5, 150, (19, 2)), dtype=torch.float32)
            out = {"pred_landmarks": yx, "pred_mm": yx * item["spacing"], "uncertainty_mm": torch.ones(19)}
            writer = LandmarkOutputWriter(root / "out", ISBI_LANDMARK_NAMES, overlay=False, analysis=False)
            writer._start(None)
            writer._write_one("ceph.dcm", str(dicom), out, item)
            mrk = json.loads((root / "out" / "ceph.mrk.json").read_text())
            positions = np.array([p["position"] for p in mrk["markups"][0]["controlPoints"]])
            expected = np.stack([-30.0 + yx[:, 1].numpy() * 0.4, 12.0 + yx[:, 0].numpy() * 0.5, np.full(19, 7.0)], 1)
            self.assertTrue(np.allclose(positions, expected, atol=1e-4))
            back = LoadCephalogramd(spacing_mm=None)({"image": str(dicom), "label_files": [str(root / "out" / "ceph.mrk.json")]})
            self.assertTrue(np.allclose(back["landmarks"].numpy(), yx.numpy(), atol=1e-3))


class TestChecks(unittest.TestCase):
    def test_checks_are_listed_and_kept_on_resume(self):
        """The pipeline's checks of an image (unsure however read, a suspect spacing) go to checks.csv and
        report.html; a resumed run keeps those of the images it keeps."""
        import csv
        import tempfile
        from pathlib import Path

        import torch

        from bundle import ISBI_LANDMARK_NAMES
        from bundle.outputs import LandmarkOutputWriter

        yx = torch.as_tensor(np.random.default_rng(0).uniform(5, 150, (19, 2)), dtype=torch.float32)
        item = {"spacing": torch.tensor([0.1, 0.1])}
        with tempfile.TemporaryDirectory() as tmp:
            out_dir = Path(tmp) / "out"
            writer = LandmarkOutputWriter(out_dir, ISBI_LANDMARK_NAMES, overlay=False, analysis=False)
            writer._start(None)
            for name, checks in (("a.png", ["check the pixel spacing"]), ("b.png", [])):
                out = {"pred_landmarks": yx, "pred_mm": yx * 0.1, "uncertainty_mm": torch.ones(19), "checks": checks}
                writer._write_one(name, name, out, item)
            writer._report(force=True)
            with open(out_dir / "checks.csv") as f:
                self.assertEqual(list(csv.reader(f)), [["image", "check"], ["a.png", "check the pixel spacing"]])
            self.assertIn("1 image(s) to check first: <a href='#a.png'>a.png</a>", (out_dir / "report.html").read_text())
            resumed = LandmarkOutputWriter(out_dir, ISBI_LANDMARK_NAMES, overlay=False, analysis=False, resume=True)
            resumed._start(None)
            with open(out_dir / "checks.csv") as f:
                self.assertEqual(list(csv.reader(f))[1:], [["a.png", "check the pixel spacing"]])
            self.assertIn("<p class='check'>check the pixel spacing</p>", (out_dir / "report.html").read_text())
            LandmarkOutputWriter(out_dir, ISBI_LANDMARK_NAMES, overlay=False, analysis=False)._start(None)
            with open(out_dir / "checks.csv") as f:
                self.assertEqual(list(csv.reader(f)), [["image", "check"]])  # a new run starts afresh

    def test_readings_are_listed_and_kept_on_resume(self):
        """How an image was read (mirrored, inverted, widened, reframed) goes to readings.csv and report.html; a resumed run
        keeps the readings of the images it keeps, so its report still says how they were read."""
        import csv
        import tempfile
        from pathlib import Path

        import torch

        from bundle import ISBI_LANDMARK_NAMES
        from bundle.outputs import LandmarkOutputWriter

        yx = torch.as_tensor(np.random.default_rng(0).uniform(5, 150, (19, 2)), dtype=torch.float32)
        item = {"spacing": torch.tensor([0.1, 0.1])}
        mirrored_note = "The face looks left: read mirrored"
        with tempfile.TemporaryDirectory() as tmp:
            out_dir = Path(tmp) / "out"
            writer = LandmarkOutputWriter(out_dir, ISBI_LANDMARK_NAMES, overlay=False, analysis=False)
            writer._start(None)
            readings = (("a.png", {"mirrored": True, "reframed": torch.tensor(True)}), ("b.png", {}),
                        ("c.png", {"widened": 2.0, "reframed": 0}), ("d.png", {"widened": 0.0, "reframed": 0}))
            for name, reading in readings:
                out = {"pred_landmarks": yx, "pred_mm": yx * 0.1, "uncertainty_mm": torch.ones(19), **reading}
                writer._write_one(name, name, out, item)
            writer._report(force=True)
            with open(out_dir / "readings.csv") as f:
                self.assertEqual(list(csv.reader(f)), [["image", "reading"], ["a.png", "mirrored"], ["a.png", "reframed"],
                                                       ["c.png", "widened"]])
            report = (out_dir / "report.html").read_text()
            self.assertEqual(report.count(mirrored_note), 1)
            self.assertIn("cut to their frame", report)
            self.assertEqual(report.count("in the middle of a wider frame"), 1)
            resumed = LandmarkOutputWriter(out_dir, ISBI_LANDMARK_NAMES, overlay=False, analysis=False, resume=True)
            resumed._start(None)
            report = (out_dir / "report.html").read_text()
            self.assertEqual(report.count(mirrored_note), 1)
            self.assertIn("cut to their frame", report)
            self.assertNotIn("read inverted", report)
            self.assertEqual(report.count("in the middle of a wider frame"), 1)
            with open(out_dir / "readings.csv") as f:
                self.assertEqual(list(csv.reader(f))[1:], [["a.png", "mirrored"], ["a.png", "reframed"], ["c.png", "widened"]])


class TestOutputStems(unittest.TestCase):
    def test_a_second_fallback_stem_is_numbered(self):
        """a.png, a_jpg.png and a.jpg: a.jpg's fallback a_jpg is a_jpg.png's stem already, so it gets a_jpg_2; the
        same names in the same order give the same stems again (a resumed run finds them)."""
        from bundle.io import output_stems

        names = ["a.png", "a_jpg.png", "a.jpg", "a.tif"]
        want = {"a.png": "a", "a_jpg.png": "a_jpg", "a.jpg": "a_jpg_2", "a.tif": "a_tif"}
        self.assertEqual(output_stems(names), want)
        taken = {}
        self.assertEqual({n: output_stems([n], taken)[n] for n in names}, want)  # one at a time, as the writer does
        self.assertEqual(len(set(want.values())), len(names))

    def test_names_with_dots_and_shared_stems_keep_their_own_files(self):
        """Output files are named by the image's name without its image suffix, so PACS-style names with dots
        (1.2.840.5.1.dcm, 1.2.840.5.2.dcm) no longer share "1.mrk.json"; a.png and a.jpg in one folder get a.* and
        a_jpg.*; a resumed run finds each image's files again and runs neither a second time."""
        import csv
        import json
        import tempfile
        from pathlib import Path

        import torch

        from bundle import ISBI_LANDMARK_NAMES
        from bundle.outputs import LandmarkOutputWriter, pending_datalist

        names = ["1.2.840.5.1.dcm", "1.2.840.5.2.dcm", "a.png", "a.jpg", "ceph.nii.gz", "IM0001"]
        item = {"spacing": torch.tensor([0.1, 0.1])}
        with tempfile.TemporaryDirectory() as tmp:
            out_dir = Path(tmp) / "out"
            writer = LandmarkOutputWriter(out_dir, ISBI_LANDMARK_NAMES, overlay=False, analysis=False)
            writer._start(None)
            points = {}
            for k, name in enumerate(names):
                yx = torch.full((19, 2), 10.0 + k)
                points[name] = 10.0 + k
                out = {"pred_landmarks": yx, "pred_mm": yx * 0.1, "uncertainty_mm": torch.ones(19)}
                if name == "a.jpg":
                    with self.assertLogs("bundle.outputs", "WARNING") as logs:
                        writer._write_one(name, name, out, item)
                    self.assertIn("another image's outputs are named a.*; this one's are a_jpg.*", logs.output[0])
                else:
                    writer._write_one(name, name, out, item)
            stems = {"1.2.840.5.1.dcm": "1.2.840.5.1", "1.2.840.5.2.dcm": "1.2.840.5.2", "a.png": "a", "a.jpg": "a_jpg",
                     "ceph.nii.gz": "ceph", "IM0001": "IM0001"}
            self.assertEqual(sorted(f.name for f in out_dir.glob("*.mrk.json")), sorted(f"{s}.mrk.json" for s in stems.values()))
            for name, stem in stems.items():  # each point list holds its own image's landmarks
                mrk = json.loads((out_dir / f"{stem}.mrk.json").read_text())
                self.assertEqual(mrk["markups"][0]["controlPoints"][0]["position"][0], points[name], name)
            items = [{"image": f"in/{n}"} for n in names]
            self.assertEqual(pending_datalist(items, out_dir, ISBI_LANDMARK_NAMES, resume=True, overlay=False), [])
            (out_dir / "a_jpg.mrk.json").unlink()  # a.jpg cut off before its point list: done again, under a_jpg
            self.assertEqual(pending_datalist(items, out_dir, ISBI_LANDMARK_NAMES, resume=True, overlay=False), [{"image": "in/a.jpg"}])
            resumed = LandmarkOutputWriter(out_dir, ISBI_LANDMARK_NAMES, overlay=False, analysis=False, resume=True)
            resumed._start(None)
            yx = torch.full((19, 2), 99.0)
            resumed._write_one("a.jpg", "a.jpg", {"pred_landmarks": yx, "pred_mm": yx * 0.1, "uncertainty_mm": torch.ones(19)}, item)
            self.assertEqual(json.loads((out_dir / "a.mrk.json").read_text())["markups"][0]["controlPoints"][0]["position"][0],
                             points["a.png"])  # a.png's point list untouched
            self.assertEqual(json.loads((out_dir / "a_jpg.mrk.json").read_text())["markups"][0]["controlPoints"][0]["position"][0], 99.0)
            with open(out_dir / "landmarks.csv") as f:
                self.assertEqual(len(list(csv.DictReader(f))), 19 * len(names))


class TestResumeGuards(unittest.TestCase):
    def test_an_empty_data_list_is_said_for_what_it_is(self):
        """Inference with nothing to do: a folder without images is an error naming it (a folder of PACS files it
        does not recognise would otherwise end in silence); a folder whose images are all done says so."""
        import tempfile
        from pathlib import Path

        from PIL import Image

        from bundle.outputs import nothing_to_do

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "notes.txt").write_text("not an image")
            with self.assertRaises(FileNotFoundError) as cm:
                nothing_to_do(tmp, "out")
            self.assertIn(f"{tmp}: no images found", str(cm.exception))
            (Path(tmp) / "series").mkdir()
            Image.fromarray(np.zeros((16, 16), np.uint8)).save(Path(tmp) / "series" / "a.png")
            with self.assertRaisesRegex(FileNotFoundError, "its subfolders hold 1: add --recursive true to read them"):
                nothing_to_do(tmp, "out")
            with self.assertLogs("bundle.outputs", "INFO") as logs:
                nothing_to_do(tmp, "out", recursive="true")
            self.assertIn("already has its results in out", logs.output[0])
            Image.fromarray(np.zeros((16, 16), np.uint8)).save(Path(tmp) / "a.png")
            with self.assertLogs("bundle.outputs", "INFO") as logs:
                nothing_to_do(tmp, "out")
            self.assertIn("already has its results in out", logs.output[0])

    def test_foreign_csv_is_refused_and_replacing_is_said(self):
        """--resume never rewrites a landmarks.csv that is not ours; a run without it says what it replaces."""
        import tempfile
        from pathlib import Path

        from bundle import ISBI_LANDMARK_NAMES
        from bundle.outputs import LANDMARKS_CSV_HEADER, LandmarkOutputWriter, pending_datalist

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "landmarks.csv").write_text("patient,score\nA,3\n")
            with self.assertRaises(ValueError) as cm:
                pending_datalist([{"image": "a.png"}], tmp, ISBI_LANDMARK_NAMES, resume="true")
            self.assertIn("landmarks.csv: not written by this bundle", str(cm.exception))
            self.assertEqual((Path(tmp) / "landmarks.csv").read_text(), "patient,score\nA,3\n")
            rows = [["a.png", str(i + 1), n, "1", "2", "0.1", "0.2", "1.0"] for i, n in enumerate(ISBI_LANDMARK_NAMES)]
            (Path(tmp) / "landmarks.csv").write_text("\n".join(",".join(r) for r in [LANDMARKS_CSV_HEADER] + rows) + "\n")
            self.assertEqual(len(pending_datalist([{"image": "x/a.png"}], tmp, ISBI_LANDMARK_NAMES, resume=True)), 1)  # no a.mrk.json
            writer = LandmarkOutputWriter(tmp, ISBI_LANDMARK_NAMES, overlay=False)
            with self.assertLogs("bundle.outputs", "WARNING") as logs:
                writer._start(None)
            self.assertIn("replacing the results of an earlier run (1 image(s))", logs.output[0])


if __name__ == "__main__":
    unittest.main()
