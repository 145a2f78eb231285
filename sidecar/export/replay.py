"""`sidecar anodot-replay DIR --url URL [--token TOKEN] [--since TIME]`: post stored bucket files to Anodot.

Posts every `anodot-<start>.json` in DIR whose bucket starts at or after `--since` (ISO 8601 such as
2024-05-01T12:00:00Z, or epoch seconds), oldest first, as Anodot wants samples in time order. The token can
come from SIDECAR_ANODOT_TOKEN instead of the command line (where other users could read it in `ps`).
Exit status: 0 when everything was accepted (or nothing matched), 1 when a file failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from sidecar.export.anodot import bucket_start_from_name
from sidecar.export.anodot_sink import load_bucket, post_samples
from sidecar.export.settings import parse_optional_http_url

TOKEN_ENV = "SIDECAR_ANODOT_TOKEN"


def parse_since(text: str) -> float:
    """Epoch seconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epoch seconds or an ISO 8601 time, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_url(text: str) -> str:
    try:
        url = parse_optional_http_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if url is None:
        raise argparse.ArgumentTypeError("a URL is required")
    return url


def bucket_files(directory: Path, since: float | None = None) -> list[Path]:
    """Bucket files in time order, from `since` on."""
    found = []
    for path in directory.iterdir():
        start = bucket_start_from_name(path.name)
        if start is not None and (since is None or start >= since):
            found.append((start, path))
    return [path for _, path in sorted(found)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar anodot-replay",
                                     description="Post stored Anodot bucket files to the Anodot API.")
    parser.add_argument("dir", type=Path, help="directory holding anodot-<time>.json bucket files")
    parser.add_argument("--url", required=True, type=parse_url, help="Anodot API base URL, e.g. "
                        "https://app.anodot.com")
    parser.add_argument("--token", help=f"Anodot data collection token (default: ${TOKEN_ENV})")
    parser.add_argument("--since", type=parse_since, help="only buckets starting at or after this time")
    parser.add_argument("--retries", type=int, default=3, help="retries per request (default 3)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    return parser


def replay_main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    environ = os.environ if environ is None else environ
    token = args.token or environ.get(TOKEN_ENV)
    if not token:
        print(f"sidecar anodot-replay: a token is required (--token or {TOKEN_ENV})", file=sys.stderr)
        return 2
    if not args.dir.is_dir():
        print(f"sidecar anodot-replay: {args.dir} is not a directory", file=sys.stderr)
        return 2
    files = bucket_files(args.dir, args.since)
    if not files:
        print("sidecar anodot-replay: no bucket files to replay")
        return 0
    return asyncio.run(_replay(files, args.url, token, max(args.retries, 0), args.timeout))


async def _replay(files: list[Path], url: str, token: str, retries: int, timeout: float) -> int:
    failures = 0
    total = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        for path in files:
            try:
                samples = load_bucket(path)
            except (OSError, ValueError) as exc:
                print(f"{path.name}: unreadable: {exc}", file=sys.stderr)
                failures += 1
                continue
            result = await post_samples(session, url, token, samples, retries)
            total += result.posted
            for problem in result.problems:
                print(f"{path.name}: {problem}", file=sys.stderr)
            if result.failed:
                failures += 1
            print(f"{path.name}: posted {result.posted} of {len(samples)} samples")
    print(f"replayed {len(files)} file(s), {total} samples posted, {failures} file(s) with failures")
    return 1 if failures else 0
