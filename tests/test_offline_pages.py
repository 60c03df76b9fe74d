"""GraphiQL (/graphql) and Swagger UI (/docs) in a real browser with the internet cut off
(contract section 10): every request to a host other than the server's is refused and fails
the test. GraphiQL runs a query and a subscription with the key pasted in its Headers tab.

The browser is Debian's chromium (/usr/bin/chromium: `.ci/run` and `scripts/test` install it),
driven by Playwright's sync API in plain `def` tests, which pytest-asyncio leaves alone. A
Playwright session marks its own event loop as the thread's running loop between calls, so
each test opens and closes its own (the `browsing` fixture): none outlives its test, to meet
the session's loop of the async tests.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, Page, Route, WebSocket, expect, sync_playwright

from graphql_api import pages
from tests.live_server import LiveServer, live_server, wait_for

CHROMIUM = Path("/usr/bin/chromium")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
ADMIN_KEY = "offline-pages-admin-key-for-tests"
# How long a page may take to draw (each parses one to two megabytes of JavaScript).
UI_TIMEOUT_MS = 20_000
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
# Set SCREENSHOTS=/some/folder to keep a picture of each page as the test left it.
pytestmark = pytest.mark.slow


@dataclass
class Browsing:
    """A page whose requests to other hosts are refused, and what it tried and logged."""

    page: Page
    elsewhere: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def check_stayed_local(self) -> None:
        assert self.elsewhere == [], f"requests to other hosts: {self.elsewhere}"
        assert all(urlsplit(url).hostname in LOCAL_HOSTS for url in self.sockets), self.sockets
        # The pages' Content-Security-Policy must not have stopped anything they need.
        refused = [text for text in self.console if "Content Security Policy" in text]
        assert refused == [], refused


@pytest.fixture
def browsing() -> Iterator[Browsing]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`); "
            "scripts/test and .ci/run install it when they run as root"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            browsing = Browsing(browser.new_page(viewport={"width": 1280, "height": 800}))

            def refuse_elsewhere(route: Route) -> None:
                if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
                    route.continue_()
                else:
                    browsing.elsewhere.append(route.request.url)
                    route.abort("internetdisconnected")

            def log(message: ConsoleMessage) -> None:
                browsing.console.append(f"{message.type}: {message.text}")

            def socket(websocket: WebSocket) -> None:
                browsing.sockets.append(websocket.url)

            browsing.page.route("**/*", refuse_elsewhere)
            browsing.page.on("console", log)
            browsing.page.on("websocket", socket)
            browsing.page.set_default_timeout(UI_TIMEOUT_MS)
            yield browsing
        finally:
            browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A service with keys: GraphiQL answers only with the key in its Headers tab."""
    path = tmp_path_factory.mktemp("offline-pages") / "db.sqlite3"
    with live_server(f"sqlite://{path}", {"WORKFLOW_ADMIN_KEY": ADMIN_KEY}) as running:
        yield running


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def completed_execution(server: LiveServer) -> int:
    """A workflow named `offline` and one finished execution of it."""
    body = {"name": "offline", "tasks": [{"name": "t", "order": 1}]}
    made = httpx.post(f"{server.url}/workflows/", json=body, headers=bearer(ADMIN_KEY))
    assert made.status_code == 200, made.text
    started = httpx.post(
        f"{server.url}/workflows/{made.json()['id']}/execute", headers=bearer(ADMIN_KEY)
    )
    assert started.status_code == 200, started.text
    execution_id: int = started.json()["id"]

    def finished() -> bool:
        answer = httpx.get(f"{server.url}/executions/{execution_id}", headers=bearer(ADMIN_KEY))
        return bool(answer.json()["status"] == "completed")

    wait_for(finished, 30, f"execution {execution_id} to complete")
    return execution_id


def replace_text(page: Page, editor: str, text: str, *, paste: bool = False) -> None:
    """Select all of a GraphiQL editor's text and type (or paste) `text` over it. Not ready to
    run yet in the query editor: see `type_query`."""
    page.locator(f"{editor} .CodeMirror:visible").click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    if paste:
        page.keyboard.insert_text(text)
    else:
        # CodeMirror closes brackets and quotes as they open; typing the closing one steps
        # over it, so balanced text comes out as typed.
        page.keyboard.type(text)


def type_query(page: Page, query: str) -> None:
    """Type `query` in GraphiQL's query editor and wait until GraphiQL has taken it in.
    GraphiQL parses the text 100 ms after the last key (debounced), and the fetcher picks
    HTTP or WebSocket by the parsed document: run sooner, and a subscription just typed over
    a query goes as that query went. The page's onEditQuery, called after the parse, writes
    the text into the address: wait for that."""
    replace_text(page, ".graphiql-query-editor", query)
    page.wait_for_url(lambda url: parse_qs(urlsplit(url).query).get("q") == [query])


def run_and_expect(page: Page, expected: str) -> None:
    page.keyboard.press("Control+Enter")
    expect(page.locator(".graphiql-response")).to_contain_text(expected)


def screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_graphiql_runs_a_query_and_a_subscription_offline(
    server: LiveServer, browsing: Browsing
) -> None:
    execution_id = completed_execution(server)
    page = browsing.page
    page.goto(f"{server.url}/graphql")
    expect(page.locator(".graphiql-query-editor .CodeMirror")).to_be_visible()
    # The schema's introspection went without a key, and was refused.
    expect(page.locator(".graphiql-response")).to_contain_text("Not authenticated")

    page.get_by_role("button", name="Headers").click()
    replace_text(
        page, ".graphiql-editor-tool", f'{{"Authorization": "Bearer {ADMIN_KEY}"}}', paste=True
    )
    type_query(page, "{ workflows { id name } }")
    run_and_expect(page, '"name": "offline"')

    # Over graphql-transport-ws, the key in connection_init: the execution's current state,
    # then the end.
    subscription = f'subscription {{ executionEvents(executionId: "{execution_id}") {{ status }} }}'
    type_query(page, subscription)
    run_and_expect(page, '"status": "COMPLETED"')
    assert any(urlsplit(url).path == "/graphql" for url in browsing.sockets), browsing.sockets
    screenshot(page, "graphiql")

    # Opened again, the page asks for the schema with the key its Headers tab kept.
    page.reload()
    page.get_by_role("button", name="Show Documentation Explorer").click()
    expect(page.locator(".graphiql-doc-explorer")).to_contain_text("subscription: Subscription")
    screenshot(page, "graphiql-reloaded")
    browsing.check_stayed_local()


def test_swagger_ui_shows_the_routes_offline(server: LiveServer, browsing: Browsing) -> None:
    page = browsing.page
    page.goto(f"{server.url}/docs")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    expect(page.get_by_text("/workflows/", exact=True).first).to_be_visible()
    expect(page.get_by_text("/workflows/{workflow_id}/execute", exact=True)).to_be_visible()
    screenshot(page, "swagger-ui")
    browsing.check_stayed_local()


def test_assets_are_open_and_cached_for_a_year(server: LiveServer) -> None:
    pages_html = [
        httpx.get(f"{server.url}/graphql", headers={"accept": "text/html"}).text,
        httpx.get(f"{server.url}/docs").text,
    ]
    addresses = {
        address
        for html in pages_html
        for address in re.findall(r"""(?:src|href)=["'](/_assets/[^"']+)""", html)
    }
    assert len(addresses) == 7, addresses  # react, react-dom, graphiql's 2, swagger-ui's 3
    for address in sorted(addresses):
        answer = httpx.get(server.url + address)  # no key: the files are no secret
        assert answer.status_code == 200, address
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["content-type"] == CONTENT_TYPES[Path(address).suffix], address
        assert answer.content == (pages.ASSETS / address.removeprefix("/_assets/")).read_bytes()
    licence = httpx.get(f"{server.url}/_assets/graphiql@{pages.VERSIONS['graphiql']}/LICENSE")
    assert (licence.status_code, licence.headers["content-type"]) == (
        200,
        "text/plain; charset=utf-8",
    )
    for missing in ["/_assets/graphiql@0.0.1/graphiql.min.js", "/_assets/..%2F/pages.py"]:
        assert httpx.get(server.url + missing).status_code == 404, missing
    # FastAPI's ReDoc page stays off (graphql_api/pages.py says why).
    assert httpx.get(f"{server.url}/redoc", headers=bearer(ADMIN_KEY)).status_code == 404
