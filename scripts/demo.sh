#!/usr/bin/env bash
# Installs the sidecar with TensorFlow (for the bundled testbed model server) and runs the demo.
# Usage: ./scripts/demo.sh [--duration 60]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[tf]'
exec .venv/bin/sidecar demo "$@"
