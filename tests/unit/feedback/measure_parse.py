"""Measure what the feedback parser's shape scan (`check_shape`: depth, containers, number lengths) costs next to
`json.loads`, on ordinary feedback and on hostile bodies of the default size limit (64 MiB).

Run: `python -m tests.unit.feedback.measure_parse` (numbers to stdout; about a minute, a few GB of memory at peak).
"""

from __future__ import annotations

import json
import time

from sidecar.feedback.parse import DEFAULT_MAX_DEPTH, DEFAULT_MAX_NUMBER_LENGTH, FeedbackError, check_shape

SIZE = 64 * 1024**2
CONTAINERS = 3 * 100_000 + 1  # what parse_body allows at the default feedback_max_instances


def cases() -> dict[str, bytes]:
    feedback = [{"prediction_id": f"id{index}", "truth": [[0.1, 0.9], 1, "cat"]} for index in range(33_000)]
    return {
        "feedback, 99,000 truth instances": json.dumps(feedback).encode(),
        "flat array of zeros": b"[" + b"0," * (SIZE // 2 - 2) + b"0]",
        "opening brackets only": b"[" * SIZE,
        "8-deep arrays, repeated": b"[" + (b"[" * 7 + b"]" * 7 + b",") * (SIZE // 15 - 1) + b"[]]",
        "99-digit numbers": b"[" + (b"9" * 99 + b",") * (SIZE // 100 - 1) + b"0]",
        "200-digit strings": b"[" + (b'"' + b"9" * 200 + b'",') * (SIZE // 204 - 1) + b"0]",
        "one long string": b'"' + b"a" * (SIZE - 2) + b'"',
        "escapes": b'"' + b"\\n" * (SIZE // 2 - 1) + b'"',
        "brackets in strings": b"[" + b'"[[[[[[[[[[",' * (SIZE // 13 - 1) + b"0]",
    }


def main() -> None:
    for name, body in cases().items():
        started = time.perf_counter()
        try:
            check_shape(body, DEFAULT_MAX_DEPTH, DEFAULT_MAX_NUMBER_LENGTH, CONTAINERS)
            verdict = "passes"
        except FeedbackError as exc:
            verdict = f"refused: {str(exc)[:48]}"
        scan = time.perf_counter() - started
        started = time.perf_counter()
        try:
            json.loads(body)
            parsed = "parses"
        except (ValueError, RecursionError) as exc:
            parsed = type(exc).__name__
        loads = time.perf_counter() - started
        print(f"{name:34s} {len(body) / 1e6:5.1f} MB  scan {scan * 1000:6.0f} ms ({verdict})  "
              f"json.loads {loads * 1000:6.0f} ms ({parsed})")


if __name__ == "__main__":
    main()
