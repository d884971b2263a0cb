"""End-to-end check of the MONAI Label app (scripts/monailabel_app): the server as 3D Slicer's MONAI Label module
talks to it, against the inference bundle run on the same images.

Run it in the MONAI Label environment (``bash scripts/check_monailabel.sh`` sets that up and runs it). It copies the
images to a studies folder with one corrupt file added, runs ``configs/inference.yaml`` on them, starts
``monailabel start_server --app scripts/monailabel_app``, and for each image asks
``POST /infer/cephalometric_landmarks`` (``output=all``: the label map and the JSON result, as Slicer does). It checks:

- the JSON landmarks are those of the bundle's ``landmarks.csv`` (within 0.05 pixels: one process against another);
- the label map lies in the image's geometry (the same origin, spacing and direction as the point list uses) and
  holds landmark ``i``'s value at landmark ``i``;
- the corrupt file and an image id not in the studies folder get HTTP 422 with a message naming what is wrong.

Prints JSON and exits non-zero when a check fails.

    python scripts/check_monailabel.py                      # 2 synthetic 2400 x 1935 cephalograms
    python scripts/check_monailabel.py --images ../shared/data/isbi2015/RawImage/Test1Data --n 3
    python scripts/check_monailabel.py --images ../shared/data/isbi2015/RawImage/Test1Data --n 3 --fast
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "cephalometric_landmarks"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, timeout: float = 600.0) -> tuple[int, bytes, str]:
    """POST an empty ``params`` form, as the Slicer module sends one; (status, body, content type)."""
    boundary = "ceph-check-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{{}}\r\n"
            f"--{boundary}--\r\n").encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def _parts(body: bytes, content_type: str) -> dict[str, bytes]:
    """The parts of a multipart answer by their form name (``params``, ``image``)."""
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    out = {}
    for part in MultipartDecoder(body, content_type).parts:
        disposition = part.headers.get(b"Content-Disposition", b"").decode()
        name = disposition.split('name="', 1)[1].split('"', 1)[0] if 'name="' in disposition else str(len(out))
        out[name] = part.content
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=None, help="a folder of images (default: 2 synthetic cephalograms)")
    ap.add_argument("--n", type=int, default=2, help="images of --images to use")
    ap.add_argument("--fast", action="store_true",
                    help="the fast CPU profile: the server with --conf fast true, the folder run with "
                         "configs/inference_fast.yaml")
    ap.add_argument("--startup_s", type=float, default=300, help="how long to wait for the server")
    args = ap.parse_args()

    import itk

    from bundle.io import image_geometry, is_image_file

    failures: list[str] = []
    report: dict = {"fast_profile": args.fast, "images": []}
    with tempfile.TemporaryDirectory() as tmp:
        studies, out = Path(tmp) / "studies", Path(tmp) / "cli_out"
        studies.mkdir()
        if args.images:
            images = [p for p in sorted(Path(args.images).iterdir()) if is_image_file(p)][: args.n]
            for p in images:
                shutil.copy(p, studies / p.name)
        else:
            from PIL import Image

            from bundle.synthetic import synthesize_cephalogram

            for seed in range(args.n):
                image, _ = synthesize_cephalogram(np.random.default_rng(100 + seed), (2400, 1935))
                Image.fromarray(image).save(studies / f"synthetic_{seed}.jpg", quality=95)
        good = sorted(p.name for p in studies.iterdir())
        broken = studies / "broken.jpg"
        broken.write_bytes((studies / good[0]).read_bytes()[:4000])  # a JPEG cut short

        # the bundle as a user runs it, on the same images (the corrupt one goes to errors.csv)
        t0 = time.perf_counter()
        configs = "['configs/inference.yaml','configs/inference_fast.yaml']" if args.fast else "configs/inference.yaml"
        res = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", configs,
                              "--input_dir", str(studies), "--output_dir", str(out), "--progress_bar", "false"],
                             cwd=ROOT, capture_output=True, text=True)
        report["cli_seconds"] = round(time.perf_counter() - t0, 1)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            failures.append(f"inference.yaml failed (rc {res.returncode})")
            print(json.dumps({"failures": failures}, indent=1))
            return 1
        with open(out / "landmarks.csv", newline="") as f:
            cli: dict[str, list[dict]] = {}
            for r in csv.DictReader(f):
                cli.setdefault(r["image"], []).append(r)

        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "server.log", "w")
        conf = ["--conf", "fast", "true"] if args.fast else []
        server = subprocess.Popen([sys.executable, "-m", "monailabel.main", "start_server", "--app",
                                   str(ROOT / "scripts" / "monailabel_app"), "--studies", str(studies), "--host",
                                   "127.0.0.1", "--port", str(port)] + conf,
                                  cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
        try:
            t0 = time.perf_counter()
            info = None
            while time.perf_counter() - t0 < args.startup_s and server.poll() is None:
                try:
                    with urllib.request.urlopen(f"{base}/info/", timeout=5) as r:
                        info = json.loads(r.read())
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(2)
            report["server_start_seconds"] = round(time.perf_counter() - t0, 1)
            if info is None:
                log.flush()
                print((Path(tmp) / "server.log").read_text()[-5000:], file=sys.stderr)
                failures.append("the server did not start")
                raise SystemExit
            model = info.get("models", {}).get(MODEL)
            if not model or model.get("type") != "segmentation" or len(model.get("labels", {})) != 19:
                failures.append(f"/info/ does not list {MODEL} as a 19-label segmentation model: {model}")
            report["info"] = {"name": info.get("name"), "version": info.get("version"),
                              "labels": len(info.get("labels", []))}

            for name in good:
                entry: dict = {"image": name}
                t0 = time.perf_counter()
                status, body, ctype = _post(f"{base}/infer/{MODEL}?image={Path(name).stem}&output=all")
                entry["seconds"] = round(time.perf_counter() - t0, 2)
                if status != 200:
                    failures.append(f"{name}: HTTP {status}: {body[:300]!r}")
                    report["images"].append(entry)
                    continue
                parts = _parts(body, ctype)
                params = json.loads(parts["params"])
                xy = np.array([[p["x"], p["y"]] for p in params["landmarks"]])
                ref = np.array([[float(r["x"]), float(r["y"])] for r in cli[name]])
                entry["max_difference_px"] = float(np.abs(xy - ref).max()) if xy.shape == ref.shape else None
                if entry["max_difference_px"] is None or entry["max_difference_px"] > 0.05:
                    failures.append(f"{name}: landmarks differ from inference.yaml's: {entry['max_difference_px']}")
                label_file = Path(tmp) / f"{Path(name).stem}_label.nrrd"
                label_file.write_bytes(parts["image"])
                label = itk.imread(str(label_file))
                arr = itk.array_from_image(label)[0]  # (1, H, W) -> (H, W)
                m = image_geometry(studies / name)
                spacing = np.array(label.GetSpacing())[:2]
                direction = np.array(label.GetDirection())[:, :2] * spacing
                geometry_ok = (np.allclose(direction, m[:, :2], atol=1e-6)
                               and np.allclose(np.array(label.GetOrigin()), m[:, 2], atol=1e-6))
                hits = [int(arr[int(round(y)), int(round(x))]) == i + 1 for i, (x, y) in enumerate(xy)
                        if 0 <= round(y) < arr.shape[0] and 0 <= round(x) < arr.shape[1]]
                entry.update({"label_shape": list(arr.shape), "geometry_matches": bool(geometry_ok),
                              "labels_at_landmarks": f"{sum(hits)}/{len(xy)}",
                              "measurements": len(params.get("measurements") or []),
                              "markups_points": len(params["markups"]["markups"][0]["controlPoints"])})
                if not geometry_ok:
                    failures.append(f"{name}: the label map's geometry is not the image's")
                if sum(hits) != len(xy):
                    failures.append(f"{name}: the label map misses landmarks ({entry['labels_at_landmarks']})")
                report["images"].append(entry)

            for what, image_id, expect in (("corrupt file", "broken", "broken.jpg"),
                                           ("unknown id", "no_such_image", "no image to read")):
                status, body, _ = _post(f"{base}/infer/{MODEL}?image={image_id}&output=json")
                detail = body.decode(errors="replace")
                report[what.replace(" ", "_")] = {"status": status, "answer": detail[:300]}
                if status != 422 or expect not in detail:
                    failures.append(f"{what}: expected HTTP 422 naming {expect!r}, got {status}: {detail[:300]}")
        except SystemExit:
            pass
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
    report["failures"] = failures
    print(json.dumps(report, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
