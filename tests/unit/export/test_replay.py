"""`sidecar anodot-replay` posts stored bucket files, in time order, from --since on."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sidecar.export.anodot import bucket_name
from sidecar.export.replay import bucket_files, parse_since, replay_main

from .conftest import StartReceiver

T0 = 1_714_564_800  # 2024-05-01T12:00:00Z


def write_buckets(directory: Path, starts: list[int]) -> None:
    for start in starts:
        samples = [{"properties": {"what": "requests", "target_type": "counter"}, "timestamp": start, "value": 1.0}]
        (directory / bucket_name(start)).write_text(json.dumps(samples))
    (directory / "notes.txt").write_text("not a bucket")


async def test_replay_posts_the_files_from_since_in_time_order(tmp_path: Path, receiver_factory: StartReceiver,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    api = await receiver_factory(reply={"errors": []})
    write_buckets(tmp_path, [T0 + 120, T0, T0 + 60])
    code = await asyncio.to_thread(replay_main, [str(tmp_path), "--url", api.url, "--token", "tok",
                                                 "--since", "2024-05-01T12:01:00Z"], {})
    assert code == 0
    assert [json.loads(r.body)[0]["timestamp"] for r in api.received] == [T0 + 60, T0 + 120]
    assert all(r.query == {"token": "tok", "protocol": "anodot20"} for r in api.received)
    assert "replayed 2 file(s), 2 samples posted, 0 file(s) with failures" in capsys.readouterr().out


async def test_the_token_can_come_from_the_environment(tmp_path: Path, receiver_factory: StartReceiver) -> None:
    api = await receiver_factory(reply={"errors": []})
    write_buckets(tmp_path, [T0])
    code = await asyncio.to_thread(replay_main, [str(tmp_path), "--url", api.url],
                                   {"SIDECAR_ANODOT_TOKEN": "from-env"})
    assert code == 0 and api.received[0].query["token"] == "from-env"


async def test_a_refused_file_makes_the_replay_fail(tmp_path: Path, receiver_factory: StartReceiver,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    api = await receiver_factory(status=400, reply={"error": "bad"})
    write_buckets(tmp_path, [T0])
    (tmp_path / bucket_name(T0 + 60)).write_text("{broken")
    code = await asyncio.to_thread(replay_main, [str(tmp_path), "--url", api.url, "--token", "secret-token",
                                                 "--retries", "0"], {})
    assert code == 1
    err = capsys.readouterr().err
    assert "answered 400" in err and "unreadable" in err and "secret-token" not in err


def test_bad_usage_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay_main([str(tmp_path), "--url", "http://x"], {}) == 2  # no token
    assert "a token is required" in capsys.readouterr().err
    assert replay_main([str(tmp_path / "missing"), "--url", "http://x", "--token", "t"], {}) == 2
    assert replay_main([str(tmp_path), "--url", "ftp://x", "--token", "t"], {}) == 2
    assert replay_main([str(tmp_path), "--url", "http://x", "--token", "t", "--since", "yesterday"], {}) == 2


def test_nothing_to_replay_is_not_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay_main([str(tmp_path), "--url", "http://127.0.0.1:9", "--token", "t"], {}) == 0
    assert "no bucket files" in capsys.readouterr().out


def test_since_accepts_iso_and_epoch_seconds(tmp_path: Path) -> None:
    assert parse_since("2024-05-01T12:00:00Z") == parse_since("2024-05-01T12:00:00") == T0
    assert parse_since(str(T0)) == T0
    write_buckets(tmp_path, [T0 + 60, T0])
    assert [p.name for p in bucket_files(tmp_path)] == [bucket_name(T0), bucket_name(T0 + 60)]
