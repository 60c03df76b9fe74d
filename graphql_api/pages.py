"""The pages that describe the API to a browser (GraphiQL at `/graphql`, Swagger UI at `/docs`)
and every file they load, served by the service itself: they work on a network with no
internet (contract section 10).

FastAPI's other page, ReDoc at `/redoc`, is off: its bundle loads its logo from cdn.redoc.ly.

The files are the npm packages' own, copied into `graphql_api/assets/<package>@<version>/` by
`scripts/vendor-assets` (its README.md says what came from where). Each is served at
`/_assets/<package>@<version>/<file>`: the version is in the address, so browsers may keep a
file for a year without asking again.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse

HERE = Path(__file__).resolve().parent
ASSETS = HERE / "assets"
ASSETS_PATH = "/_assets"
OPENAPI_URL = "/openapi.json"
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
TITLE = "Workflow API"

# A file's address changes with its version: nothing served here ever changes in place.
IMMUTABLE = "public, max-age=31536000, immutable"
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
# Licence files (LICENSE, NOTICE, *.LICENSE.txt), served for anyone who wants to read them.
TEXT = "text/plain; charset=utf-8"


def _vendored() -> dict[str, Path]:
    """Every file of every vendored package, by its address under ASSETS_PATH: only these are
    served (no path from a request ever reaches the file system)."""
    files: dict[str, Path] = {}
    for folder in sorted(ASSETS.iterdir()):
        if folder.is_dir() and "@" in folder.name:
            for file in sorted(folder.iterdir()):
                files[f"{folder.name}/{file.name}"] = file
    return files


FILES = _vendored()
# Package name -> the version vendored (one folder each).
VERSIONS = dict(name.split("/")[0].rsplit("@", 1) for name in FILES)


def asset_url(package: str, file: str) -> str:
    """The address of one vendored file; fails at import when the file is not there."""
    name = f"{package}@{VERSIONS[package]}/{file}"
    if name not in FILES:
        raise LookupError(f"{name} is not in {ASSETS} (scripts/vendor-assets)")
    return f"{ASSETS_PATH}/{name}"


_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def content_security_policy(html: str) -> str:
    """What the browser may load for this page: files and connections of this service only,
    and of inline scripts only the page's own (by hash). Inline styles stay allowed: the
    pages' React components set them."""
    digests = (hashlib.sha256(script.encode()).digest() for script in _INLINE_SCRIPT.findall(html))
    hashes = " ".join(f"'sha256-{base64.b64encode(digest).decode()}'" for digest in digests)
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'self' {hashes}".rstrip(),
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            # 'self' covers ws:// and wss:// to this host too (CSP level 3).
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def _page(html: str) -> HTMLResponse:
    return HTMLResponse(
        html,
        headers={
            "content-security-policy": content_security_policy(html),
            "x-content-type-options": "nosniff",
        },
    )


def _graphiql_html() -> str:
    html = (HERE / "graphiql.html").read_text(encoding="utf-8")
    for token, url in {
        "__REACT_JS__": asset_url("react", "react.production.min.js"),
        "__REACT_DOM_JS__": asset_url("react-dom", "react-dom.production.min.js"),
        "__GRAPHIQL_JS__": asset_url("graphiql", "graphiql.min.js"),
        "__GRAPHIQL_CSS__": asset_url("graphiql", "graphiql.min.css"),
    }.items():
        html = html.replace(token, url)
    return html


GRAPHIQL_HTML = _graphiql_html()


def graphiql_page() -> HTMLResponse:
    """GraphiQL, for GraphQLHTTPRouter.render_graphql_ide."""
    return _page(GRAPHIQL_HTML)


SWAGGER_UI_HTML = bytes(
    get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title=f"{TITLE} - Swagger UI",
        swagger_js_url=asset_url("swagger-ui-dist", "swagger-ui-bundle.js"),
        swagger_css_url=asset_url("swagger-ui-dist", "swagger-ui.css"),
        swagger_favicon_url=asset_url("swagger-ui-dist", "favicon-32x32.png"),
        oauth2_redirect_url=OAUTH2_REDIRECT_URL,
    ).body
).decode()
# FastAPI's own /docs and /docs/oauth2-redirect, with local addresses: create_app turns
# FastAPI's off (docs_url=None). Who may open them is graphql_api/auth.py's to say, as before:
# both are open.
router = APIRouter(include_in_schema=False)


@router.get(DOCS_URL)
async def swagger_ui() -> HTMLResponse:
    return _page(SWAGGER_UI_HTML)


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


# Role needed: none (graphql_api/auth.py lists ASSETS_PATH as open). These are the files of
# public npm packages, the same for every caller, and hold nothing about this service.
@router.get(ASSETS_PATH + "/{package}/{file}")
async def asset(package: str, file: str) -> FileResponse:
    path = FILES.get(f"{package}/{file}")
    if path is None:
        raise HTTPException(404, "Not Found")
    return FileResponse(
        path,
        media_type=MEDIA_TYPES.get(path.suffix, TEXT),
        headers={"cache-control": IMMUTABLE, "x-content-type-options": "nosniff"},
    )
