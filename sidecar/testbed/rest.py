"""The testbed's REST server (aiohttp): TF Serving's `/v1` API and the Open Inference Protocol `/v2` API.

Only `/v1/...` and `/v2/...` are served; any other path gets a 404 HTML page like TF Serving's. Request bodies
with `Content-Encoding: gzip` are decompressed (aiohttp does it) up to 128 MiB. Model work runs in worker
threads so a slow or delayed request never stalls the others. Test hooks: see `sidecar.testbed.faults`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import Executor

from aiohttp import web

from sidecar.testbed import faults
from sidecar.testbed.model import ModelRegistry
from sidecar.testbed.rest_json import error_body
from sidecar.testbed.rest_v1 import TFServingRest
from sidecar.testbed.rest_v2 import V2Rest

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 128 * 1024 * 1024
JSON_TYPE = "application/json"
_V1_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
NOT_FOUND_PAGE = ("<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
                  "</BODY></HTML>\n")


def create_app(registry: ModelRegistry, executor: Executor | None = None) -> web.Application:
    """`executor` runs the model work (None: the loop's default executor)."""
    v1 = TFServingRest(registry)
    v2 = V2Rest(registry)

    async def handle(request: web.Request) -> web.StreamResponse:
        await faults.apply_delay(request.headers.get(faults.DELAY_HEADER))
        path = request.rel_url.raw_path
        if _V1_PATH.fullmatch(path):
            processor = v1.process
        elif path == "/v2" or path.startswith("/v2/"):
            processor = v2.process
        else:
            response = web.Response(status=404, text=NOT_FOUND_PAGE, content_type="text/html")
            return _with_echo(request, response)
        try:
            body = b"" if request.method == "GET" else await request.read()  # never read a GET body
        except web.HTTPException as exc:  # too large
            return _with_echo(request, _json(exc.status, error_body(exc.reason)))
        except Exception as exc:  # e.g. a gzip body that does not decompress
            return _with_echo(request, _json(400, error_body(f"Failed to read the request body: {exc}")))
        try:
            status, text = await asyncio.get_running_loop().run_in_executor(
                executor, processor, request.method, path, body)
        except Exception as exc:  # a testbed bug: answer in the protocol's shape, keep serving
            log.exception("internal error on %s %s", request.method, path)
            status, text = 500, error_body(f"Internal: {type(exc).__name__}: {exc}")
        return _with_echo(request, _json(status, text))

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _json(status: int, text: str) -> web.Response:
    """TF Serving's exact Content-Type (no charset parameter)."""
    return web.Response(status=status, body=text.encode(), headers={"Content-Type": JSON_TYPE})


def _with_echo(request: web.Request, response: web.Response) -> web.Response:
    if faults.wants_echo(request.headers.get(faults.ECHO_HEADER)):
        response.headers[faults.ECHO_HEADER] = faults.echo_value(request.headers.items())
    return response
