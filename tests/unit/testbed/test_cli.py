from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from sidecar.testbed.cli import build_parser
from tests.support.testbed import running_testbed


def test_defaults_match_the_documented_ports() -> None:
    args = build_parser().parse_args([])
    assert (args.host, args.rest_port, args.grpc_port, args.backend) == ("127.0.0.1", 9501, 9500, "auto")
    assert not args.tensor_content and args.model_dir is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_prints_one_ready_line_serves_and_stops_cleanly_on_signals(signum: int) -> None:
    with running_testbed("--backend", "numpy", timeout=60) as testbed:
        with urllib.request.urlopen(testbed.rest_url + "/v1/models/classifier", timeout=10) as response:
            assert response.status == 200
        testbed.process.send_signal(signum)
        assert testbed.process.wait(15) == 0
        assert testbed.process.stdout is not None and testbed.process.stdout.read() == ""


def test_a_taken_port_exits_with_code_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", "sidecar.testbed.cli", "--backend", "numpy", "--rest-port",
             str(taken.getsockname()[1]), "--grpc-port", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == "" and "testbed: cannot start" in result.stderr
