#!/usr/bin/env bash
# Creates (idempotently) the virtualenv .venv-mlserver at the repository root with Seldon's MLServer and its
# scikit-learn runtime: a real Open Inference Protocol (V2) server for tests/e2e/test_mlserver.py. It lives in its
# own virtualenv so that MLServer's pins (fastapi, pydantic, protobuf, ...) never meet the sidecar's.
# Prints nothing on success; errors go to stderr.
# Usage: ./scripts/mlserver_env.sh   (PYTHON_MLSERVER=python3.11 picks the interpreter; MLServer needs 3.9-3.12)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-mlserver
requirements=(
  "mlserver>=1.7.1"
  "mlserver-sklearn>=1.7.1"
  "scikit-learn>=1.5"
  "joblib>=1.4"
)
stamp="$venv/.requirements"
wanted=$(printf '%s\n' "${requirements[@]}")

# already built for exactly these requirements, and it still imports: nothing to do
if [ -x "$venv/bin/python" ] && [ -x "$venv/bin/mlserver" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ] \
    && "$venv/bin/python" -c 'import mlserver, mlserver_sklearn, sklearn, joblib' >/dev/null 2>&1; then
  exit 0
fi

# MLServer supports Python 3.9-3.12: PYTHON_MLSERVER if set, else the first such interpreter on PATH
supported='import sys; sys.exit(not (3, 9) <= sys.version_info[:2] <= (3, 12))'
python=""
if [ -n "${PYTHON_MLSERVER:-}" ]; then
  python=$PYTHON_MLSERVER
  if ! "$python" -c "$supported" >/dev/null 2>&1; then
    echo "mlserver_env.sh: PYTHON_MLSERVER=$python is not a Python 3.9-3.12 (MLServer needs one)" >&2
    exit 1
  fi
else
  for candidate in python3.12 python3.11 python3.10 python3.9 "${PYTHON:-python3}" python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "$supported" >/dev/null 2>&1; then
      python=$candidate
      break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "mlserver_env.sh: no Python 3.9-3.12 found (MLServer needs one); set PYTHON_MLSERVER" >&2
  exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! {
  { [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"; } &&
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip &&
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${requirements[@]}"
} >"$log" 2>&1; then
  cat "$log" >&2
  echo "mlserver_env.sh: installing ${requirements[*]} into $venv failed" >&2
  exit 1
fi
printf '%s\n' "$wanted" >"$stamp"
