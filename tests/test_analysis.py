"""bundle/analysis.py: the ISBI 2015 cephalometric analysis (eight measurements and their anatomical types), checked
on landmark sets whose measurements are known by construction."""

import math
import unittest

import numpy as np

from bundle import ISBI_LANDMARK_NAMES
from bundle.analysis import MEASUREMENTS, analyse, classify, has_analysis_landmarks, measure, measurement_agreement

I = {name.split(" (")[0]: i for i, name in enumerate(ISBI_LANDMARK_NAMES)}


def polar(origin, length, degrees):
    """A point ``length`` mm from ``origin`` at ``degrees`` from +x, turning towards +y (down)."""
    return np.asarray(origin, float) + length * np.array([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])


def face(sna=82.0, snb=78.0, palatal_tilt=0.0, overjet=3.0):
    """19 landmarks (x, y) mm, y down, looking to +x: S-N horizontal, FH horizontal, the palatal plane tipped down
    anteriorly by ``palatal_tilt`` degrees, the upper incisal tip ``overjet`` mm ahead of the lower."""
    p = np.zeros((19, 2))
    p[I["Sella"]] = [20, 40]
    p[I["Nasion"]] = [90, 40]
    p[I["Subspinale"]] = polar(p[I["Nasion"]], 60, 180 - sna)  # the angle at N from N->S (pointing -x)
    p[I["Supramentale"]] = polar(p[I["Nasion"]], 95, 180 - snb)
    p[I["Pogonion"]] = [88, 150]  # N-Pog: 110 mm down, 2 mm behind N
    p[I["Menton"]] = [80, 160]
    p[I["Gnathion"]] = [86, 157]
    p[I["Gonion"]] = [25, 115]
    p[I["Porion"]] = [5, 60]
    p[I["Orbitale"]] = [75, 60]
    p[I["Posterior nasal spine"]] = [40, 85]
    p[I["Anterior nasal spine"]] = polar(p[I["Posterior nasal spine"]], 50, palatal_tilt)
    p[I["Lower incisal incision"]] = [95, 115]
    p[I["Upper incisal incision"]] = [95 + overjet, 113]
    for k, name in enumerate(("Upper lip", "Lower lip", "Subnasale", "Soft tissue pogonion", "Articulare")):
        p[I[name]] = [110 + k, 100 + 5 * k]  # not used by the analysis
    return p


class TestMeasurements(unittest.TestCase):
    def test_angles_and_ratios_by_construction(self):
        p = face(sna=82.0, snb=78.0)
        m = measure(p)
        self.assertAlmostEqual(float(m["SNA"]), 82.0, places=6)
        self.assertAlmostEqual(float(m["SNB"]), 78.0, places=6)
        self.assertAlmostEqual(float(m["ANB"]), 4.0, places=6)
        s_go = np.hypot(25 - 20, 115 - 40)
        n_me = np.hypot(80 - 90, 160 - 40)
        self.assertAlmostEqual(float(m["FHI"]), s_go / n_me, places=6)
        self.assertAlmostEqual(float(m["FMA"]), math.degrees(math.atan2(42, 61)), places=6)  # S-N horizontal, Go->Gn (61, 42)
        self.assertAlmostEqual(float(m["MW"]), math.hypot(3.0, 2.0), places=6)

    def test_signed_terms_of_odi_and_apdi(self):
        """The palatal plane tipped down anteriorly adds its angle to ODI and APDI (tipped up: subtracts); B
        behind A makes the A-B term of APDI negative."""
        flat, down, up = (measure(face(palatal_tilt=t)) for t in (0.0, 5.0, -5.0))
        for name in ("ODI", "APDI"):
            self.assertAlmostEqual(float(down[name] - flat[name]), 5.0, places=6)
            self.assertAlmostEqual(float(up[name] - flat[name]), -5.0, places=6)
        p = face()
        a, b, n, pog = (p[I[k]] for k in ("Subspinale", "Supramentale", "Nasion", "Pogonion"))
        self.assertLess(b[0], a[0])  # B behind A here
        facial = math.degrees(math.atan2(pog[1] - n[1], -(pog[0] - n[0])))  # from FH pointing back (-x) to N->Pog
        ab = math.degrees(math.acos(np.dot(pog - n, b - a) / np.linalg.norm(pog - n) / np.linalg.norm(b - a)))
        self.assertAlmostEqual(float(flat["APDI"]), facial - ab, places=6)
        mandibular = math.degrees(math.acos(np.dot(p[I["Gonion"]] - p[I["Menton"]], a - b)
                                            / np.linalg.norm(p[I["Gonion"]] - p[I["Menton"]]) / np.linalg.norm(a - b)))
        self.assertAlmostEqual(float(flat["ODI"]), mandibular, places=6)

    def test_overjet_sign_and_a_face_looking_left(self):
        self.assertLess(float(measure(face(overjet=-2.0))["MW"]), 0)  # the upper tip behind the lower: cross bite
        p = face(palatal_tilt=4.0)
        mirrored = p.copy()
        mirrored[:, 0] = 300.0 - mirrored[:, 0]  # the same face looking to -x
        a, b = measure(p), measure(mirrored)
        for name in MEASUREMENTS:
            self.assertAlmostEqual(float(a[name]), float(b[name]), places=6, msg=name)

    def test_batches_and_bad_input(self):
        batch = np.stack([face(sna=80.0), face(sna=84.0)])
        np.testing.assert_allclose(measure(batch)["SNA"], [80.0, 84.0])
        with self.assertRaisesRegex(ValueError, "19 ISBI landmarks"):
            measure(np.zeros((5, 2)))
        bad = face()
        bad[3, 0] = np.nan
        with self.assertRaisesRegex(ValueError, "NaN"):
            measure(bad)
        same = face()
        same[I["Menton"]] = same[I["Nasion"]]  # no anterior face height: no FHI to compute
        with self.assertRaisesRegex(ValueError, "Nasion-Menton coincide"):
            measure(same)


class TestTypes(unittest.TestCase):
    def test_boundaries(self):
        self.assertEqual(classify("ANB", 3.2)[0], 1)
        self.assertEqual(classify("ANB", 5.7)[0], 1)
        self.assertEqual(classify("ANB", 5.71), (2, "skeletal Class II"))
        self.assertEqual(classify("ANB", 3.19)[0], 3)
        self.assertEqual(classify("SNB", 70.0), (2, "retrognathic mandible"))
        self.assertEqual(classify("SNA", 85.0), (2, "prognathic maxilla"))
        self.assertEqual(classify("APDI", 90.0), (3, "Class III tendency"))
        self.assertEqual(classify("FHI", 0.6), (3, "long face tendency"))
        self.assertEqual([classify("MW", v)[0] for v in (3.0, 0.0, 1.9, -0.1, 4.6)], [1, 2, 2, 3, 4])
        with self.assertRaises(ValueError):
            classify("XYZ", 1.0)
        with self.assertRaises(ValueError):
            classify("ANB", float("nan"))

    def test_analyse_rows_and_landmark_check(self):
        rows = analyse(face(sna=82.0, snb=78.0))
        self.assertEqual([r["measurement"] for r in rows], list(MEASUREMENTS))
        self.assertEqual((rows[0]["type"], rows[0]["meaning"], rows[0]["unit"]), (1, "skeletal Class I", "deg"))
        self.assertTrue(has_analysis_landmarks(ISBI_LANDMARK_NAMES))
        self.assertFalse(has_analysis_landmarks(["L1", "L2"]))
        self.assertFalse(has_analysis_landmarks(list(reversed(ISBI_LANDMARK_NAMES))))


class TestAgreement(unittest.TestCase):
    def test_identical_and_moved_landmarks(self):
        truth = np.stack([face(sna=s, snb=s - 4.0) for s in (78.0, 81.0, 82.0, 86.0)])
        same = measurement_agreement(truth, truth)
        self.assertEqual(same["n_images"], 4)
        self.assertEqual(same["mean_type_agreement_pct"], 100.0)
        self.assertEqual(same["measurements"]["SNA"]["mean_abs_difference"], 0.0)
        moved = truth.copy()
        moved[:, I["Subspinale"]] = np.stack([polar(t[I["Nasion"]], 60, 180 - 84.5) for t in truth])  # SNA 84.5 everywhere
        m = measurement_agreement(moved, truth)["measurements"]["SNA"]
        self.assertAlmostEqual(m["mean_abs_difference"], np.mean([6.5, 3.5, 2.5, 1.5]), places=3)
        self.assertEqual(m["type_agreement_pct"], 25.0)  # only 86 -> 84.5 stays prognathic


if __name__ == "__main__":
    unittest.main()
