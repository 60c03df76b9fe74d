"""A real HTTP server for `http` tasks to call: it counts every hit per path.

`GET /hit/LABEL?delay=S&status=N&fail=F` waits S seconds, then answers N (default 200) with
{"label": LABEL, "hit": H}, or 500 for the first F hits of that label. The counts tell a test
how many times each task really ran, whichever process ran it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Recorder:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()

    def url(self, label: str, delay: float = 0.0, status: int = 200, fail: int = 0) -> str:
        return f"{self.base}/hit/{label}?delay={delay}&status={status}&fail={fail}"

    def count(self, label: str) -> int:
        with self.lock:
            return self.hits[label]


@contextmanager
def recorder() -> Iterator[Recorder]:
    state: dict[str, Recorder] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parsed = urlparse(self.path)
            label = parsed.path.removeprefix("/hit/")
            query = parse_qs(parsed.query)
            delay = float(query.get("delay", ["0"])[0])
            status = int(query.get("status", ["200"])[0])
            record = state["recorder"]
            with record.lock:
                record.hits[label] += 1
                hit = record.hits[label]
            if hit <= int(query.get("fail", ["0"])[0]):
                status = 500
            time.sleep(delay)  # this handler's own thread: the delay of a slow endpoint
            body = json.dumps({"label": label, "hit": hit}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state["recorder"] = Recorder(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["recorder"]
    finally:
        server.shutdown()
        server.server_close()
