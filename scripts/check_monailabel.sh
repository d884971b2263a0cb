#!/usr/bin/env bash
# End-to-end check of the MONAI Label app (scripts/monailabel_app) in a MONAI Label environment, set up the first
# time in .venv-monailabel (CEPH_MONAILABEL_VENV=DIR: elsewhere): the packages of requirements.txt, then those of
# requirements-monailabel.txt without their dependencies (MONAI Label 0.8.5 without torchvision and SAM2). Then
# scripts/check_monailabel.py starts the server and asks it for landmarks as 3D Slicer does (its arguments pass on).
#   bash scripts/check_monailabel.sh
#   bash scripts/check_monailabel.sh --images ../shared/data/isbi2015/RawImage/Test1Data --n 3
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CEPH_MONAILABEL_VENV:-$root/.venv-monailabel}"
stamp="$venv/.requirements.sha256"
want="$(cat "$root/requirements.txt" "$root/requirements-monailabel.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up $venv (requirements.txt, then requirements-monailabel.txt without dependencies) ..."
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -r "$root/requirements.txt"
  "$venv/bin/python" -m pip install --quiet --no-deps -r "$root/requirements-monailabel.txt"
  echo "$want" > "$stamp"
fi
cd "$root"
exec "$venv/bin/python" scripts/check_monailabel.py "$@"
