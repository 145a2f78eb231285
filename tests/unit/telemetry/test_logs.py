"""Log lines as text or JSON, the same in the workers as in the main process."""

from __future__ import annotations

import json
import logging

import pytest

from sidecar.telemetry.logs import JSON, TEXT, configure, current_format


@pytest.fixture(autouse=True)
def restore_root_logger() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_are_one_object_each_with_the_exception(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", JSON, process="analysis-0")
    assert current_format() == JSON
    logger = logging.getLogger("sidecar.test")
    logger.info("model %s: drift detected", "iris")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    lines = capsys.readouterr().err.strip().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "model iris: drift detected"
    assert (first["level"], first["logger"], first["process"]) == ("INFO", "sidecar.test", "analysis-0")
    assert first["time"].endswith("Z")
    assert "ValueError: boom" in second["exception"]


def test_text_lines_name_the_worker(capsys: pytest.CaptureFixture[str]) -> None:
    configure("warning", TEXT, process="analysis-1")
    assert current_format() == TEXT
    logging.getLogger("sidecar.test").warning("slow")
    logging.getLogger("sidecar.test").info("not shown")
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("WARNING analysis-1 sidecar.test: slow")
