"""The chat page at ``GET /``: plain HTML, CSS and JavaScript from ``static/``, shipped in the package.

The page talks to the same OpenAI-compatible endpoints as any client (so ``--api-key`` applies to it too); it
loads nothing from another origin, and the Content-Security-Policy holds it to that.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from gpt2kit.serve.params import ApiError

STATIC = Path(__file__).with_name("static")
MEDIA_TYPES = {"chat.js": "text/javascript; charset=utf-8", "chat.css": "text/css; charset=utf-8",
               "favicon.svg": "image/svg+xml"}
CSP = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}


def add_page(app: FastAPI, chat: bool, key_required: bool) -> None:
    """Serve the page on ``app``: chat turns when the model has a chat template, else a completion box."""
    # the page learns only these two facts from the HTML; the model's name comes from /v1/models, behind the key
    index = (STATIC / "index.html").read_text(encoding="utf-8")
    index = index.replace("{mode}", "chat" if chat else "completion").replace(
        "{key}", "required" if key_required else "none")
    files = {name: (STATIC / name).read_bytes() for name in MEDIA_TYPES}

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(index, headers=HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in files:
            raise ApiError(404, f"/static/{name}: no such file", None, "not_found")
        return Response(files[name], media_type=MEDIA_TYPES[name], headers=HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:  # browsers ask for it whatever the page links
        return Response(files["favicon.svg"], media_type=MEDIA_TYPES["favicon.svg"], headers=HEADERS)
