"""Tests for the synthetic ISBI-layout cephalogram generator (``bundle.synthetic``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from bundle import synthetic
from bundle.synthetic import (
    ISBI_MEAN_XY,
    ISBI_SD_XY,
    generate_synthetic_dataset,
    pixel_spacing_for_size,
    synthesize_cephalogram,
)

SMALL = (240, 194)  # 1 mm pixels: fast
LINE = re.compile(r"^(\d+),(\d+)$")


def _files(root: Path) -> Dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_points(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    assert len(lines) == 19, f"{path}: {len(lines)} lines"
    pts = []
    for line in lines:
        m = LINE.match(line)
        assert m is not None, f"{path}: bad line {line!r}"
        pts.append((int(m.group(1)), int(m.group(2))))
    return np.array(pts, dtype=float)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn") / "a", n_train=3, n_test=2, seed=7,
                                      image_size_hw=SMALL)


def test_layout_numbering_and_metadata(small_set: Path) -> None:
    root = small_set
    assert sorted(p.name for p in (root / "RawImage" / "TrainingData").iterdir()) == ["001.jpg", "002.jpg", "003.jpg"]
    assert sorted(p.name for p in (root / "RawImage" / "Test1Data").iterdir()) == ["004.jpg", "005.jpg"]
    for doctor in ("400_senior", "400_junior"):
        names = sorted(p.name for p in (root / "AnnotationsByMD" / doctor).iterdir())
        assert names == [f"{i:03d}.txt" for i in range(1, 6)]
    meta = json.loads((root / "dataset.json").read_text())
    assert meta == {
        "pixel_spacing_mm": 1.0,
        "generator": "bundle.synthetic",
        "version": synthetic.GENERATOR_VERSION,
        "seed": 7,
        "n_train": 3,
        "n_test": 2,
        "image_size_hw": [240, 194],
    }
    assert len(_files(root)) == 3 * 5 + 1
    with Image.open(root / "RawImage" / "Test1Data" / "005.jpg") as im:
        assert im.format == "JPEG" and im.mode == "L" and im.size == (194, 240)  # PIL size is (W, H)


def test_annotations_format_range_and_junior_noise(small_set: Path) -> None:
    root = small_set
    h, w = SMALL
    spacing = pixel_spacing_for_size(SMALL)
    dists = []
    for i in range(1, 6):
        senior = _read_points(root / "AnnotationsByMD" / "400_senior" / f"{i:03d}.txt")
        junior = _read_points(root / "AnnotationsByMD" / "400_junior" / f"{i:03d}.txt")
        for pts in (senior, junior):
            assert np.all(pts >= 0) and np.all(pts[:, 0] <= w - 1) and np.all(pts[:, 1] <= h - 1)
        # senior points keep a margin from the border
        assert np.all(senior >= 5) and np.all(senior[:, 0] <= w - 6) and np.all(senior[:, 1] <= h - 6)
        dists.append(np.linalg.norm(junior - senior, axis=1) * spacing)
    d = np.concatenate(dists)
    assert 0.4 < d.mean() < 2.5, d.mean()  # ~1 mm SD per axis, integer rounding at 1 mm pixels
    assert d.max() < 6.0


def test_same_seed_identical_bytes_different_seed_differs(tmp_path: Path, small_set: Path) -> None:
    again = generate_synthetic_dataset(tmp_path / "b", n_train=3, n_test=2, seed=7, image_size_hw=SMALL)
    assert _files(again) == _files(small_set)
    other = generate_synthetic_dataset(tmp_path / "c", n_train=3, n_test=2, seed=8, image_size_hw=SMALL)
    fa, fb = _files(small_set), _files(other)
    assert fa.keys() == fb.keys()
    for name in fa:
        if name != "dataset.json":
            assert fa[name] != fb[name], name


def test_synthesize_is_deterministic_and_typed() -> None:
    img1, xy1 = synthesize_cephalogram(np.random.default_rng(3), SMALL)
    img2, xy2 = synthesize_cephalogram(np.random.default_rng(3), SMALL)
    img3, xy3 = synthesize_cephalogram(np.random.default_rng(4), SMALL)
    assert img1.shape == SMALL and img1.dtype == np.uint8
    assert xy1.shape == (19, 2) and xy1.dtype == np.float64
    np.testing.assert_array_equal(img1, img2)
    np.testing.assert_array_equal(xy1, xy2)
    assert not np.array_equal(img1, img3) and not np.allclose(xy1, xy3)
    assert int(img1.max()) - int(img1.min()) > 150  # uses the grey range


def test_idempotent_no_rewrite_then_regenerates_on_change(tmp_path: Path) -> None:
    out = tmp_path / "d"
    generate_synthetic_dataset(out, n_train=2, n_test=2, seed=1, image_size_hw=SMALL)
    files = [p for p in out.rglob("*") if p.is_file()]
    old = 1_000_000_000 * 10**9  # 2001-09-09: any rewrite would update it
    for p in files:
        os.utime(p, ns=(old, old))
    assert generate_synthetic_dataset(out, n_train=2, n_test=2, seed=1, image_size_hw=SMALL) == out
    assert all(p.stat().st_mtime_ns == old for p in files)

    # different parameters: regenerated, stale cases removed, renumbered test images
    generate_synthetic_dataset(out, n_train=1, n_test=1, seed=1, image_size_hw=SMALL)
    assert sorted(p.name for p in (out / "RawImage" / "TrainingData").iterdir()) == ["001.jpg"]
    assert sorted(p.name for p in (out / "RawImage" / "Test1Data").iterdir()) == ["002.jpg"]
    assert sorted(p.name for p in (out / "AnnotationsByMD" / "400_senior").iterdir()) == ["001.txt", "002.txt"]
    assert json.loads((out / "dataset.json").read_text())["n_train"] == 1

    # overwrite=True rewrites even when up to date
    meta = out / "dataset.json"
    os.utime(meta, ns=(old, old))
    generate_synthetic_dataset(out, n_train=1, n_test=1, seed=1, image_size_hw=SMALL, overwrite=True)
    assert meta.stat().st_mtime_ns != old


def test_half_written_folder_is_regenerated(tmp_path: Path) -> None:
    out = generate_synthetic_dataset(tmp_path / "e", n_train=2, n_test=1, seed=2, image_size_hw=SMALL)
    ref = _files(out)
    (out / "dataset.json").unlink()
    (out / "RawImage" / "Test1Data" / "003.jpg").write_bytes(b"truncated")
    generate_synthetic_dataset(out, n_train=2, n_test=1, seed=2, image_size_hw=SMALL)
    assert _files(out) == ref
    # a missing case file with an intact dataset.json is also detected
    (out / "AnnotationsByMD" / "400_junior" / "002.txt").unlink()
    generate_synthetic_dataset(out, n_train=2, n_test=1, seed=2, image_size_hw=SMALL)
    assert _files(out) == ref


def test_refuses_folder_with_foreign_files(tmp_path: Path) -> None:
    out = tmp_path / "real"
    (out / "RawImage" / "TrainingData").mkdir(parents=True)
    (out / "RawImage" / "TrainingData" / "001.bmp").write_bytes(b"BM")  # looks like the real ISBI data
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(out, n_train=1, n_test=0, image_size_hw=SMALL)
    assert (out / "RawImage" / "TrainingData" / "001.bmp").read_bytes() == b"BM"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_train": 0},
        {"n_train": 2.5},
        {"n_train": True},
        {"n_test": -1},
        {"seed": -3},
        {"image_size_hw": (480, 480)},  # wrong aspect
        {"image_size_hw": (32, 26)},  # too small
        {"image_size_hw": (480,)},
        {"image_size_hw": (480.5, 387)},
    ],
)
def test_bad_arguments_raise_value_error(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x" / "dataset.json").exists()


def test_synthesize_rejects_bad_rng_and_size() -> None:
    with pytest.raises(ValueError):
        synthesize_cephalogram(np.random.RandomState(0), SMALL)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        synthesize_cephalogram(np.random.default_rng(0), (100, 300))


def test_pixel_spacing() -> None:
    assert pixel_spacing_for_size((480, 387)) == pytest.approx(0.5)
    assert pixel_spacing_for_size((2400, 1935)) == pytest.approx(0.1)
    assert pixel_spacing_for_size(SMALL) == pytest.approx(1.0)


def _cases(n: int, size: Tuple[int, int]) -> List[Tuple[np.ndarray, np.ndarray]]:
    return [synthesize_cephalogram(np.random.default_rng(1000 + k), size) for k in range(n)]


def test_landmark_spread_matches_isbi_order_of_magnitude() -> None:
    spacing = pixel_spacing_for_size(SMALL)
    xy_mm = np.stack([xy for _, xy in _cases(30, SMALL)]) * spacing  # (30, 19, 2)
    sd = xy_mm.std(axis=0, ddof=1)
    assert 1.0 < sd[synthetic.S, 0] < 8.0, sd[synthetic.S]
    assert np.all(sd > 0.5)
    ratio = sd / (ISBI_SD_XY * 0.1)
    assert 0.5 < np.median(ratio) < 1.6, np.median(ratio)
    assert np.all(ratio > 0.3) and np.all(ratio < 2.5), ratio
    # chin varies more than the skull base (coherent facial variation, head fixed at the ear rods)
    assert sd[synthetic.ME].mean() > 1.3 * sd[synthetic.S].mean()
    # the mean configuration is the ISBI mean (field of view identical, 0.1 mm real pixels)
    mean_err = np.linalg.norm(xy_mm.mean(axis=0) - (ISBI_MEAN_XY + 0.5) * 0.1, axis=1)
    assert np.all(mean_err < 5.0), mean_err
    # anatomical order holds in every case: Sella behind Nasion, Menton below Nasion, ANS ahead of PNS
    assert np.all(xy_mm[:, synthetic.S, 0] < xy_mm[:, synthetic.N, 0])
    assert np.all(xy_mm[:, synthetic.ME, 1] > xy_mm[:, synthetic.N, 1])
    assert np.all(xy_mm[:, synthetic.ANS, 0] > xy_mm[:, synthetic.PNS, 0])


def test_every_landmark_sits_on_an_image_feature() -> None:
    size = SMALL
    spacing = pixel_spacing_for_size(size)
    r = int(np.ceil(5.0 / spacing))  # +-5 mm window
    for img, xy in _cases(4, size):
        sm = ndimage.gaussian_filter(img.astype(np.float64), 1.0)
        h, w = img.shape
        bg = sm[: int(0.1 * h), int(0.9 * w):]  # air in front of the forehead
        bg_contrast = np.percentile(bg, 95) - np.percentile(bg, 5)
        for k, (x, y) in enumerate(np.rint(xy).astype(int)):
            win = sm[y - r : y + r + 1, x - r : x + r + 1]
            contrast = np.percentile(win, 95) - np.percentile(win, 5)
            assert contrast > max(15.0, 4.0 * bg_contrast), (k, contrast, bg_contrast)
            assert win.mean() - bg.mean() > 15.0, (k, win.mean(), bg.mean())


def test_sella_is_a_dark_pit_and_porion_tops_the_ear_canal() -> None:
    size = (480, 387)
    spacing = pixel_spacing_for_size(size)
    for img, xy in _cases(3, size):
        sm = ndimage.gaussian_filter(img.astype(np.float64), 0.7)
        yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
        sx, sy = xy[synthetic.S]
        dist = np.hypot(xx - sx, yy - sy) * spacing
        pit = sm[dist < 2.5].mean()
        below = (dist > 5.0) & (dist < 7.0) & (yy > sy + 2)
        assert sm[below].mean() > pit + 20.0, (sm[below].mean(), pit)  # bright floor under a dark pit
        px, py = np.rint(xy[synthetic.PO]).astype(int)
        d = int(round(2.5 / spacing))
        canal = sm[py + d, px]
        rod = sm[py - int(round(1.0 / spacing)), px]
        assert rod > canal + 20.0, (rod, canal)


def test_cli_writes_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--n-train", "1", "--n-test", "1", "--seed", "5", "--size", "240", "194"]
    assert synthetic.main(argv) == 0
    assert str(out.resolve()) in capsys.readouterr().out
    meta = json.loads((out / "dataset.json").read_text())
    assert (meta["seed"], meta["n_train"], meta["n_test"], meta["image_size_hw"]) == (5, 1, 1, [240, 194])
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path / "bad"), "--n-train", "0"])
