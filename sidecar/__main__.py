"""Command line: `sidecar run | testbed | demo | anodot-replay`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from sidecar.runtime import configure_logging, freeze_startup_heap, install_fast_loop, shorten_gil_switch_interval

USAGE = """usage: sidecar COMMAND [options]

commands:
  run            run the monitoring sidecar in front of a model server
  testbed        run the bundled TF-Serving-compatible model server (REST + gRPC)
  demo           start the testbed and the sidecar, send traffic and feedback, show what is seen
  anodot-replay  post stored Anodot bucket files to the Anodot API

`sidecar COMMAND --help` shows the options of a command; `sidecar --version` prints the version.
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0 if args else 2
    if args[0] in {"-V", "--version", "version"}:
        from sidecar import __version__

        print(f"sidecar {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command == "run":
        return run_command(rest)
    if command == "testbed":
        from sidecar.testbed.cli import main as testbed_main

        return int(testbed_main(rest))
    if command == "demo":
        from sidecar.demo import main as demo_main

        return demo_main(rest)
    if command == "anodot-replay":
        from sidecar.export.replay import replay_main

        return int(replay_main(rest))
    print(f"sidecar: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def run_command(argv: Sequence[str]) -> int:
    from sidecar import config
    from sidecar.telemetry import tracing

    try:
        settings = config.parse_args(argv, os.environ)
        tracer = tracing.from_environment(os.environ)
    except (config.ConfigError, ValueError) as exc:
        print(f"sidecar: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.general.log_level, settings.general.log_format)
    install_fast_loop()
    shorten_gil_switch_interval()
    from sidecar.app import StartupError

    try:
        asyncio.run(_serve(settings, tracer))
    except StartupError as exc:
        logging.getLogger("sidecar").debug("start-up failed", exc_info=exc.__cause__)
        print(f"sidecar: cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"sidecar: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(settings: object, tracer: object) -> None:
    from sidecar.app import Sidecar, run_until_signalled
    from sidecar.config import Settings, redacted
    from sidecar.telemetry.tracing import Tracing

    assert isinstance(settings, Settings) and isinstance(tracer, Tracing)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sidecar = Sidecar(settings, tracing=tracer)
    logging.getLogger("sidecar").info("starting with %s", redacted(settings))
    await run_until_signalled(sidecar, stop, on_started=freeze_startup_heap)


if __name__ == "__main__":
    sys.exit(main())
