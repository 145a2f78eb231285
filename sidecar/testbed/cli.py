"""`sidecar testbed`: run the TF-Serving-compatible testbed until SIGINT/SIGTERM.

Prints exactly one line to stdout, `TESTBED READY rest=<port> grpc=<port>`, once both servers listen (scripts
and tests wait for it); logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from sidecar.testbed.catalog import BACKENDS
from sidecar.testbed.server import start_testbed

READY_PREFIX = "TESTBED READY"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar testbed", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--rest-port", type=int, default=9501, help="REST port, 0 picks a free one (default: 9501)")
    parser.add_argument("--grpc-port", type=int, default=9500, help="gRPC port, 0 picks a free one (default: 9500)")
    parser.add_argument("--model-dir", default=None,
                        help="where SavedModels are exported and reused (TF Serving layout; default: a temporary "
                             "directory removed at exit)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="tensorflow, numpy (no TensorFlow needed) or auto (default: auto)")
    parser.add_argument("--tensor-content", action="store_true",
                        help="answer gRPC tensors as tensor_content bytes instead of typed fields")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return parser


async def serve(args: argparse.Namespace) -> None:
    testbed = await start_testbed(args.host, args.rest_port, args.grpc_port, model_dir=args.model_dir,
                                  backend=args.backend, tensor_content=args.tensor_content)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        print(f"{READY_PREFIX} rest={testbed.rest_port} grpc={testbed.grpc_port}", flush=True)
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await testbed.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        print(f"testbed: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        pass
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
