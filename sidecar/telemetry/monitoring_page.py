"""The built-in monitoring page: static files shipped in the package, served by the admin listener at `/` and
`/ui/{file}`. They hold no data: the page's own script fetches `/metrics`, `/v1/monitor` and the drill-down while
someone looks at it, so the sidecar computes nothing for the page otherwise. The files are open (no bearer token:
a browser cannot send one on navigation); the page asks for the token when a data route answers 401."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

PAGE_PATH = "/"
ASSET_PREFIX = "/ui/"
_CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".txt": "text/plain"}
_HEADERS = {
    "Cache-Control": "no-cache",  # revalidated (ETag) so a new sidecar version never runs a stale script
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file of `sidecar/telemetry/static`, read once when the admin app is built (a few tens of KiB)."""
    assets: dict[str, Asset] = {}
    for entry in resources.files("sidecar.telemetry").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _CONTENT_TYPES:
            body = entry.read_bytes()
            assets[entry.name] = Asset(body, _CONTENT_TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return assets


def is_page_path(path: str) -> bool:
    return path == PAGE_PATH or path.startswith(ASSET_PREFIX)


def add_page_routes(app: web.Application) -> None:
    assets = load_assets()

    def serve(name: str, request: web.Request) -> web.Response:
        asset = assets.get(name)
        if asset is None:
            return web.json_response({"error": f"no page asset {name!r}"}, status=404)
        headers = {**_HEADERS, "ETag": asset.etag}
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers)

    async def page(request: web.Request) -> web.Response:
        return serve("index.html", request)

    async def asset(request: web.Request) -> web.Response:
        return serve(request.match_info["name"], request)

    app.router.add_get(PAGE_PATH, page)
    app.router.add_get(ASSET_PREFIX + "{name}", asset)
