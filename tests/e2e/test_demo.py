"""The README's first command: `sidecar demo` runs, shows progress and a summary, and with `--duration` stops by
itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_the_demo_shows_traffic_drift_and_quality_then_stops_cleanly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "demo", "--duration", "10", "--listen-rest", "127.0.0.1:0",
         "--listen-grpc", "127.0.0.1:0", "--listen-admin", "127.0.0.1:0", "--reference-size", "200",
         "--window-size", "200"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "sidecar up: REST http://127.0.0.1:" in out
    assert "monitoring page: http://127.0.0.1:" in out
    assert "] stable  rest=" in out and "] shifted rest=" in out
    last = [line for line in out.splitlines() if "] shifted rest=" in line][-1]
    assert int(last.split(" grpc=")[1].split()[0]) > 0  # both protocols carry the traffic
    assert 'sidecar_drift_detected{detector="feature_drift",model="classifier"} = 1' in out
    assert "sidecar_quality_accuracy" in out
    assert "(0 errors)" in out
    assert out.rstrip().endswith("stopped cleanly.")
