"""The cephalometric analysis of the ISBI 2015 challenge: eight clinical measurements from the 19 landmarks and the
anatomical type each one indicates (Wang et al., "A benchmark for comparison of dental radiography analysis
algorithms", Medical Image Analysis 31, 2016: the challenge's classification task).

| measurement | definition (L = landmark number) | type 1 | type 2 | type 3 (type 4) |
|---|---|---|---|---|
| ANB | SNA - SNB, degrees | 3.2-5.7: skeletal Class I | > 5.7: Class II | < 3.2: Class III |
| SNB | angle S-N-B (L1, L2, L6) | 74.6-78.7: normal mandible | < 74.6: retrognathic | > 78.7: prognathic |
| SNA | angle S-N-A (L1, L2, L5) | 79.4-83.2: normal maxilla | > 83.2: prognathic | < 79.4: retrognathic |
| ODI | angle(A-B, Me-Go) + angle(FH, palatal plane) | 68.4-80.5: normal | > 80.5: deep bite tendency | < 68.4: open bite tendency |
| APDI | angle(FH, N-Pog) + angle(N-Pog, A-B) + angle(FH, palatal plane) | 77.6-85.2: normal | < 77.6: Class II tendency | > 85.2: Class III tendency |
| FHI | S-Go / N-Me (posterior / anterior face height) | 0.65-0.75: normal | > 0.75: short face tendency | < 0.65: long face tendency |
| FMA | angle(S-N, Go-Gn), degrees | 26.8-31.4: normal | > 31.4: high angle | < 26.8: low angle |
| MW | distance of the upper (L12) from the lower (L11) incisal tip, mm; negative when the upper tip is behind | 2-4.5: normal | 0-2: edge to edge | < 0: anterior cross bite (> 4.5: type 4, large overjet) |

FH is Porion-Orbitale (L4-L3), the palatal plane PNS-ANS (L17-L18). The signed terms: the palatal plane's angle to
FH counts positive when the plane tips down anteriorly (ANS lower than FH's parallel through PNS) and negative when
it tips up; the A-B term of APDI counts negative when B lies behind A (the usual case). The challenge's table names
MW = 0 "edge to edge" and leaves 0-2 mm open; here 0 <= MW < 2 mm is type 2. Positions are (x, y) mm, y down; a
face that looks to the left (Nasion left of Sella) is mirrored first, so the same definitions hold either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import ISBI_LANDMARK_NAMES

__all__ = ["MEASUREMENTS", "has_analysis_landmarks", "measure", "classify", "analyse", "measurement_agreement"]

# name: (unit, [(type, meaning, low, high)], description); a value belongs to the first range holding it (low <= v < high,
# the normal range closed on both ends)
MEASUREMENTS: dict[str, tuple[str, list[tuple[int, str, float, float]], str]] = {
    "ANB": ("deg", [(1, "skeletal Class I", 3.2, 5.7), (2, "skeletal Class II", 5.7, np.inf),
                    (3, "skeletal Class III", -np.inf, 3.2)], "SNA - SNB"),
    "SNB": ("deg", [(1, "normal mandible", 74.6, 78.7), (2, "retrognathic mandible", -np.inf, 74.6),
                    (3, "prognathic mandible", 78.7, np.inf)], "angle S-N-B"),
    "SNA": ("deg", [(1, "normal maxilla", 79.4, 83.2), (2, "prognathic maxilla", 83.2, np.inf),
                    (3, "retrognathic maxilla", -np.inf, 79.4)], "angle S-N-A"),
    "ODI": ("deg", [(1, "normal overbite", 68.4, 80.5), (2, "deep bite tendency", 80.5, np.inf),
                    (3, "open bite tendency", -np.inf, 68.4)], "overbite depth indicator"),
    "APDI": ("deg", [(1, "normal", 77.6, 85.2), (2, "Class II tendency", -np.inf, 77.6),
                     (3, "Class III tendency", 85.2, np.inf)], "anteroposterior dysplasia indicator"),
    "FHI": ("ratio", [(1, "normal face height", 0.65, 0.75), (2, "short face tendency", 0.75, np.inf),
                      (3, "long face tendency", -np.inf, 0.65)], "facial height index S-Go / N-Me"),
    "FMA": ("deg", [(1, "normal mandibular angle", 26.8, 31.4), (2, "high angle", 31.4, np.inf),
                    (3, "low angle", -np.inf, 26.8)], "angle between S-N and Go-Gn"),
    "MW": ("mm", [(1, "normal overjet", 2.0, 4.5), (2, "edge to edge", 0.0, 2.0), (3, "anterior cross bite", -np.inf, 0.0),
                  (4, "large overjet", 4.5, np.inf)], "upper incisal tip ahead of the lower"),
}

_INDEX = {name: i for i, name in enumerate(ISBI_LANDMARK_NAMES)}


def has_analysis_landmarks(landmark_names: Sequence[str]) -> bool:
    """Whether a run's landmarks are the 19 of ISBI 2015, in their order (the analysis reads them by position)."""
    return [str(n) for n in landmark_names] == list(ISBI_LANDMARK_NAMES)


def _angle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Unsigned angle (degrees) between vectors ``(..., 2)``; ``atan2`` keeps it accurate near 0 and 180."""
    cross = u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]
    return np.degrees(np.arctan2(np.abs(cross), (u * v).sum(-1)))


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def measure(points_xy_mm: np.ndarray) -> dict[str, np.ndarray]:
    """The eight measurements of ``(..., 19, 2)`` ISBI landmarks ((x, y) mm, y down): ``{name: (...)}``."""
    p = np.asarray(points_xy_mm, dtype=np.float64)
    if p.shape[-2:] != (len(ISBI_LANDMARK_NAMES), 2):
        raise ValueError(f"the analysis needs the {len(ISBI_LANDMARK_NAMES)} ISBI landmarks as (..., 19, 2), got {p.shape}.")
    if not np.isfinite(p).all():
        raise ValueError("the analysis needs finite landmark positions (found NaN or inf).")
    p = p.copy()
    facing_left = p[..., _INDEX["Nasion"], 0] < p[..., _INDEX["Sella"], 0]
    p[..., 0] = np.where(facing_left[..., None], -p[..., 0], p[..., 0])  # mirror: the face looks to +x

    def pt(name: str) -> np.ndarray:
        return p[..., _INDEX[name], :]

    S, N, Or, Po = pt("Sella"), pt("Nasion"), pt("Orbitale"), pt("Porion")
    A, B, Pog, Me = pt("Subspinale (A point)"), pt("Supramentale (B point)"), pt("Pogonion"), pt("Menton")
    Gn, Go = pt("Gnathion"), pt("Gonion")
    L1, U1 = pt("Lower incisal incision"), pt("Upper incisal incision")
    PNS, ANS = pt("Posterior nasal spine"), pt("Anterior nasal spine")

    pairs = {"Sella-Nasion": (S, N), "Subspinale-Nasion": (A, N), "Supramentale-Nasion": (B, N),
             "Porion-Orbitale": (Po, Or), "Posterior-Anterior nasal spine": (PNS, ANS), "Nasion-Pogonion": (N, Pog),
             "Subspinale-Supramentale": (A, B), "Gonion-Menton": (Go, Me), "Sella-Gonion": (S, Go),
             "Nasion-Menton": (N, Me), "Gonion-Gnathion": (Go, Gn)}
    for pair, (u, v) in pairs.items():  # a line through one point has no direction
        if (np.linalg.norm(u - v, axis=-1) < 1e-6).any():
            raise ValueError(f"the analysis needs distinct landmarks: {pair} coincide.")
    sna, snb = _angle(S - N, A - N), _angle(S - N, B - N)
    fh, palatal = Or - Po, ANS - PNS
    palatal_term = np.where(_cross(fh, palatal) < 0, -1.0, 1.0) * _angle(fh, palatal)  # + when ANS tips down (y down)
    facial = Pog - N
    ab = B - A
    ab_term = np.where(_cross(facial, ab) > 0, -1.0, 1.0) * _angle(facial, ab)  # - when B lies behind A
    mw = np.linalg.norm(U1 - L1, axis=-1)
    return {
        "ANB": sna - snb,
        "SNB": snb,
        "SNA": sna,
        "ODI": _angle(Go - Me, A - B) + palatal_term,
        "APDI": _angle(Po - Or, facial) + ab_term + palatal_term,
        "FHI": np.linalg.norm(Go - S, axis=-1) / np.linalg.norm(Me - N, axis=-1),
        "FMA": _angle(N - S, Gn - Go),
        "MW": np.where(U1[..., 0] < L1[..., 0], -mw, mw),
    }


def classify(name: str, value: float) -> tuple[int, str]:
    """The anatomical type ``(number, meaning)`` that ``value`` of measurement ``name`` indicates."""
    if name not in MEASUREMENTS:
        raise ValueError(f"unknown measurement {name!r}; known: {list(MEASUREMENTS)}")
    ranges = MEASUREMENTS[name][1]
    low, high = ranges[0][2], ranges[0][3]
    if low <= value <= high:  # the normal range, both ends included
        return ranges[0][0], ranges[0][1]
    for number, meaning, low, high in ranges[1:]:
        if low <= value < high:
            return number, meaning
    raise ValueError(f"{name} = {value} is not a number the analysis can classify.")


def analyse(points_xy_mm: np.ndarray) -> list[dict]:
    """One image's analysis: ``[{"measurement", "value", "unit", "type", "meaning", "description"}, ...]``."""
    values = measure(points_xy_mm)
    rows = []
    for name, (unit, _, description) in MEASUREMENTS.items():
        v = float(values[name])
        number, meaning = classify(name, v)
        rows.append({"measurement": name, "value": v, "unit": unit, "type": number, "meaning": meaning,
                     "description": description})
    return rows


def measurement_agreement(pred_xy_mm: np.ndarray, true_xy_mm: np.ndarray) -> dict:
    """How well measurements from predicted landmarks agree with those from the annotation, over ``(images, 19, 2)``
    positions: per measurement the mean absolute difference of the value, and the share of images (%) whose type
    is the same (the challenge's classification accuracy), with the mean over the eight."""
    pred, true = measure(pred_xy_mm), measure(true_xy_mm)
    out: dict = {"n_images": int(np.asarray(pred_xy_mm).shape[0]), "measurements": {}}
    for name, (unit, _, _) in MEASUREMENTS.items():
        same = [classify(name, float(a))[0] == classify(name, float(b))[0] for a, b in zip(pred[name], true[name])]
        out["measurements"][name] = {"unit": unit, "mean_abs_difference": round(float(np.abs(pred[name] - true[name]).mean()), 4),
                                     "type_agreement_pct": round(100.0 * float(np.mean(same)), 2)}
    out["mean_type_agreement_pct"] = round(float(np.mean([m["type_agreement_pct"] for m in out["measurements"].values()])), 2)
    return out
