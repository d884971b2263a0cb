#!/usr/bin/env bash
# Source this file: creates .venv with the pinned packages when it is missing or the requirements changed,
# then activates it. Needs only Python 3.11 (with venv) on the machine.
set -e
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${CEPH_VENV:-$_root/.venv}"
_stamp="$_venv/.requirements.sha256"
_want="$(cat "$_root/requirements.txt" "$_root/requirements-openvino.txt" "$_root/requirements-dev.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$_venv/bin/python" ] || [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
  echo "setting up $_venv (pinned packages from requirements-dev.txt) ..."
  python3 -m venv "$_venv"
  "$_venv/bin/python" -m pip install --quiet --upgrade pip
  "$_venv/bin/python" -m pip install --quiet -r "$_root/requirements-dev.txt"
  echo "$_want" > "$_stamp"
fi
# shellcheck disable=SC1091
. "$_venv/bin/activate"
cd "$_root"
