"""The composition root: a part that cannot start stops start-up with one line naming the setting and the cause,
and whatever had started is stopped again."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sidecar.app import Sidecar, StartupError
from sidecar.config import from_mapping
from tests.support.helpers import free_port


def settings(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"state_dir": str(tmp_path / "state"), "listen_rest": f"127.0.0.1:{free_port()}", "listen_grpc": "off",
            "upstream_grpc": "off", "listen_admin": "off", "analysis_enabled": "false", **values}


async def test_a_state_dir_that_is_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    with pytest.raises(StartupError, match=r"^--state-dir .*state: "):
        await Sidecar(from_mapping(settings(tmp_path))).start()


async def test_a_taken_port_is_named_with_its_setting_and_the_started_parts_stop(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sidecar = Sidecar(from_mapping(settings(tmp_path, listen_rest=f"127.0.0.1:{port}")))
        with pytest.raises(StartupError, match=rf"^--listen-rest 127.0.0.1:{port}: .*address already in use"):
            await sidecar.start()
    assert sidecar.feedback is not None and sidecar.health is not None
    assert sidecar.health._task is not None and sidecar.health._task.done()  # stopped again


async def test_an_unreachable_redis_is_named(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StartupError, match=rf"^--store {url}: .*cannot reach"):
        await Sidecar(from_mapping(settings(tmp_path, store=url))).start()
