"""End-to-end check of the MONAI Label app (scripts/monailabel_app): the server as 3D Slicer's MONAI Label module
talks to it, against the inference bundle run on the same images.

Run it in the MONAI Label environment (``bash scripts/check_monailabel.sh`` sets that up and runs it). It copies the
images to a studies folder with one corrupt file added, runs ``configs/inference.yaml`` on them, starts
``monailabel start_server --app scripts/monailabel_app``, and for each image asks
``POST /infer/cephalometric_landmarks`` (``output=all``: the label map and the JSON result, as Slicer does). It checks:

- the JSON landmarks are those of the bundle's ``landmarks.csv`` (within 0.05 pixels: one process against another);
- the label map lies in the image's geometry (the same origin, spacing and direction as the point list uses) and
  holds landmark ``i``'s value at landmark ``i``;
- the corrupt file and an image id not in the studies folder get HTTP 422 with a message naming what is wrong;
- active learning: the scoring method ``expected_error`` (run synchronously; the server's own scoring after start
  is off here) scores every unlabelled image and marks the corrupt one not read; the strategy ``expected_error``
  offers the corrupt file first, and once it is removed, the image whose mean expected error in the folder run's
  ``landmarks.csv`` is the largest; scoring again with the same weights reads nothing;
- with ``--train``: each answered label map submitted back as the image's final label (``PUT /datastore/label``, as
  Slicer's "Submit Label"), then ``POST /train/cephalometric_landmarks`` (one epoch per network by default) run to
  its end: the fine-tuned weights are in the app's model folder, the next answer names them, and its landmarks are
  those of ``configs/inference.yaml`` run with those weights.

Prints JSON and exits non-zero when a check fails.

    python scripts/check_monailabel.py                      # 2 synthetic 2400 x 1935 cephalograms
    python scripts/check_monailabel.py --images ../shared/data/isbi2015/RawImage/Test1Data --n 3
    python scripts/check_monailabel.py --images ../shared/data/isbi2015/RawImage/Test1Data --n 3 --fast
    python scripts/check_monailabel.py --images ../shared/data/isbi2015/RawImage/Test1Data --n 3 --train
"""

from __future__ import annotations

import argparse
import csv
import json
import os
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


def _send(url: str, method: str, fields: dict[str, str] | None = None, files: dict[str, Path] | None = None,
          json_body: dict | None = None, timeout: float = 600.0) -> tuple[int, bytes]:
    """A multipart form (``fields``, ``files``) or a JSON body, by ``method``; (status, body)."""
    if json_body is not None:
        data, ctype = json.dumps(json_body).encode(), "application/json"
    else:
        boundary = "ceph-check-boundary"
        chunks = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
                  for k, v in (fields or {}).items()]
        for k, path in (files or {}).items():
            chunks.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{path.name}\"\r\n"
                          f"Content-Type: application/octet-stream\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
        data, ctype = b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


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
    ap.add_argument("--train", action="store_true",
                    help="then submit the answers as final labels and fine-tune through POST /train (needs --n 2 "
                         "or more: one image validates)")
    ap.add_argument("--epochs", type=int, default=1, help="with --train: epochs per network")
    ap.add_argument("--train_timeout_s", type=float, default=1800, help="with --train: how long to wait for it")
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
        model_dir = Path(tmp) / "model"  # the app's fine-tuned weights (not the app folder's model/)
        conf = (["--conf", "fast", "true"] if args.fast else []) + ["--conf", "model_dir", str(model_dir)]
        # no scoring in the background (MONAI Label starts it after start-up): the check asks for it, and the
        # request times stay those of requests alone
        env = {**os.environ, "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
        server = subprocess.Popen([sys.executable, "-m", "monailabel.main", "start_server", "--app",
                                   str(ROOT / "scripts" / "monailabel_app"), "--studies", str(studies), "--host",
                                   "127.0.0.1", "--port", str(port)] + conf,
                                  cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env=env)
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
                entry["weights"] = params.get("weights")
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
            report["active_learning"] = _check_active_learning(base, cli, failures)
            if args.train:
                report["training"] = _check_training(args, base, tmp, studies, good, model_dir, failures)
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


def _check_active_learning(base: str, cli: dict[str, list[dict]], failures: list[str]) -> dict:
    """Score the unlabelled images, ask for the next sample (the corrupt file first), remove the corrupt file, ask
    again (the image of the largest mean expected error), and score again (nothing read)."""
    out: dict = {}
    t0 = time.perf_counter()
    status, body = _send(f"{base}/scoring/expected_error?run_sync=true", "POST", json_body={})
    out["scoring_seconds"] = round(time.perf_counter() - t0, 1)
    scoring = json.loads(body) if status == 200 else {}
    out["scoring"] = scoring
    if status != 200 or scoring.get("scored") != len(cli) + 1 or scoring.get("not_read") != ["broken"]:
        failures.append(f"scoring: expected {len(cli) + 1} images scored, broken not read: HTTP {status} {body[:300]!r}")
    expected = {Path(name).stem: sum(float(r["uncertainty_mm"]) for r in rows) / len(rows) for name, rows in cli.items()}
    picks = []
    for step in ("with the corrupt file", "without it"):
        status, body = _send(f"{base}/activelearning/expected_error", "POST", json_body={})
        picks.append(json.loads(body).get("id") if status == 200 else f"HTTP {status}")
        if step == "with the corrupt file":
            status, body = _send(f"{base}/datastore/image?id=broken", "DELETE")
            out["removed"] = status
            if status != 200:
                failures.append(f"DELETE /datastore/image?id=broken: HTTP {status}: {body[:300]!r}")
            for _ in range(20):  # the datastore takes the removal in when it next reloads
                with urllib.request.urlopen(f"{base}/datastore/?output=all", timeout=30) as r:
                    if "broken" not in json.loads(r.read()).get("objects", {}):
                        break
                time.sleep(1)
    out["next_sample"] = picks
    out["mean_expected_error_mm"] = {k: round(v, 4) for k, v in expected.items()}
    want = ["broken", max(expected, key=expected.get)]
    if picks != want:
        failures.append(f"next sample: expected {want}, got {picks}")
    status, body = _send(f"{base}/scoring/expected_error?run_sync=true", "POST", json_body={})
    again = json.loads(body) if status == 200 else {}
    out["scoring_again"] = again
    if again.get("scored") != 0 or again.get("kept") != len(cli):
        failures.append(f"scoring again with the same weights read images again: {again}")
    return out


def _check_training(args, base: str, tmp: str, studies: Path, good: list[str], model_dir: Path,
                    failures: list[str]) -> dict:
    """Submit each answer as the image's final label, fine-tune through ``POST /train``, then check the next answer
    against a folder run with the fine-tuned weights."""
    out: dict = {"labels_submitted": []}
    for name in good:
        stem = Path(name).stem
        status, body = _send(f"{base}/datastore/label?image={stem}&tag=final", "PUT", fields={"params": "{}"},
                             files={"label": Path(tmp) / f"{stem}_label.nrrd"})
        if status != 200:
            failures.append(f"{name}: PUT /datastore/label: HTTP {status}: {body[:300]!r}")
        else:
            out["labels_submitted"].append(name)
    t0 = time.perf_counter()
    status, body = _send(f"{base}/train/{MODEL}", "POST",
                         json_body={"max_epochs": args.epochs, "refine_max_epochs": args.epochs})
    if status != 200:
        failures.append(f"POST /train/{MODEL}: HTTP {status}: {body[:300]!r}")
        return out
    task: dict = {}
    while time.perf_counter() - t0 < args.train_timeout_s:
        time.sleep(5)
        with urllib.request.urlopen(f"{base}/train/", timeout=30) as r:
            task = json.loads(r.read())
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            break
    out["train_seconds"] = round(time.perf_counter() - t0, 1)
    out["train_status"] = task.get("status")
    if task.get("status") != "DONE":
        failures.append(f"training ended {task.get('status')!r}: {list(task.get('details', []))[-5:]}")
        return out
    stats_file = model_dir / "train_stats.json"
    if not ((model_dir / "model.pt").is_file() and (model_dir / "refine.pt").is_file() and stats_file.is_file()):
        failures.append(f"training left no weights in {model_dir}")
        return out
    stats = json.loads(stats_file.read_text())
    out["train_stats"] = {"n_images": stats["n_images"], "stages": stats["stages"]}
    with urllib.request.urlopen(f"{base}/info/", timeout=30) as r:  # Slicer's module shows these
        shown = json.loads(r.read()).get("train_stats", {}).get(MODEL, {})
    if shown.get("stages") != stats["stages"]:
        failures.append(f"/info/ does not show the training's stats: {str(shown)[:300]}")
    # the next answer comes from the new weights: the same landmarks as a folder run with them
    name = good[0]
    status, body, ctype = _post(f"{base}/infer/{MODEL}?image={Path(name).stem}&output=json")
    if status != 200:
        failures.append(f"{name} after training: HTTP {status}: {body[:300]!r}")
        return out
    params = json.loads(body)
    out["weights_after"] = params.get("weights")
    if params.get("weights") != {"global": str(model_dir / "model.pt"), "refine": str(model_dir / "refine.pt")}:
        failures.append(f"after training the answer names other weights: {params.get('weights')}")
    one = Path(tmp) / "one"
    one.mkdir()
    shutil.copy(studies / name, one / name)
    configs = "['configs/inference.yaml','configs/inference_fast.yaml']" if args.fast else "configs/inference.yaml"
    res = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--input_dir", str(one),
                          "--output_dir", str(one / "out"), "--progress_bar", "false", "--ckpt_path",
                          str(model_dir / "model.pt"), "--refine_ckpt_path", str(model_dir / "refine.pt")],
                         cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        failures.append(f"inference.yaml with the fine-tuned weights failed: {res.stderr[-500:]}")
        return out
    with open(one / "out" / "landmarks.csv", newline="") as f:
        ref = np.array([[float(r["x"]), float(r["y"])] for r in csv.DictReader(f)])
    xy = np.array([[p["x"], p["y"]] for p in params["landmarks"]])
    out["max_difference_px_after"] = float(np.abs(xy - ref).max()) if xy.shape == ref.shape else None
    if out["max_difference_px_after"] is None or out["max_difference_px_after"] > 0.05:
        failures.append(f"after training the answer differs from inference.yaml with the new weights: "
                        f"{out['max_difference_px_after']}")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
