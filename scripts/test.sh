#!/usr/bin/env bash
# Runs the whole test suite on CPU (sets up .venv with the pinned packages first when needed).
set -e
. "$(dirname "$0")/setup_env.sh"
python -m pytest tests -q -p no:cacheprovider "$@"
