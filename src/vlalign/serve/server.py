"""The HTTP layer over ``SearchService`` (stdlib ``ThreadingHTTPServer``; 127.0.0.1 by default).

    GET  /                  the web page (static/index.html)
    GET  /health            {"status": "ok", "images": N, ...}
    GET  /search?q=TEXT&k=8 {"results": [{"id", "key", "caption", "score"}, ...]}
    POST /classify?labels=a,b,c   body: the image bytes  -> {"labels": [{"label", "probability"}, ...]}
    GET  /image/<id>        PNG of indexed image <id> (ids come from /search; nothing else is served)

Errors are JSON ``{"error": message}`` with a 4xx status.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from urllib.parse import parse_qs, urlsplit

from vlalign.errors import VlalignError
from vlalign.serve.service import MAX_UPLOAD_BYTES, RequestError, SearchService

log = logging.getLogger(__name__)
DRAIN_LIMIT = 4 * MAX_UPLOAD_BYTES  # larger refused bodies are cut off with the connection


def make_handler(service: SearchService) -> type[BaseHTTPRequestHandler]:
    page = files("vlalign.serve").joinpath("static/index.html").read_bytes()
    # One model call at a time: torch already uses every core, and the model is not re-entrant-safe in eval.
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "vlalign"

        def do_GET(self):
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            try:
                if url.path in ("/", "/index.html"):
                    return self._send(200, page, "text/html; charset=utf-8")
                if url.path == "/health":
                    return self._json(200, service.health())
                if url.path == "/search":
                    k = _int(query.get("k", ["8"])[0], "k")
                    with lock:
                        results = service.search(query.get("q", [""])[0], k)
                    return self._json(200, {"query": query.get("q", [""])[0], "results": results})
                if url.path.startswith("/image/"):
                    row = _int(url.path[len("/image/"):], "image id")
                    return self._send(200, service.image_png(row), "image/png")
                raise RequestError(404, f"No such endpoint: {url.path}. See GET /health, /search, /image/<id>.")
            except RequestError as err:
                return self._json(err.status, {"error": str(err)})

        def do_POST(self):
            url = urlsplit(self.path)
            try:
                if url.path != "/classify":
                    raise RequestError(404, f"No such endpoint: POST {url.path}. Use POST /classify.")
                length = _int(self.headers.get("Content-Length", ""), "Content-Length")
                if length > MAX_UPLOAD_BYTES:
                    self._discard_body(length)
                    raise RequestError(413, f"The upload is {length} bytes; the limit is {MAX_UPLOAD_BYTES}.")
                data = self.rfile.read(length)
                labels = [label for value in parse_qs(url.query).get("labels", []) for label in value.split(",")]
                with lock:
                    ranked = service.classify(data, labels)
                return self._json(200, {"labels": ranked})
            except RequestError as err:
                return self._json(err.status, {"error": str(err)})

        def _discard_body(self, length: int) -> None:
            """Read a refused body (up to a bound) so the client, still sending, gets the 413 not a reset."""
            self.close_connection = True  # whatever is left unread must never be parsed as a request
            remaining = min(length, DRAIN_LIMIT)
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                remaining -= len(chunk)

        def _json(self, status: int, payload: dict):
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            log.info("%s %s", self.address_string(), format % args)

    return Handler


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RequestError(400, f"{what} must be an integer, got {text!r}.") from None


def make_server(service: SearchService, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """A bound, not yet running server; a port already in use is a ``VlalignError``."""
    try:
        return ThreadingHTTPServer((host, port), make_handler(service))
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise VlalignError(f"Port {port} on {host} is already in use. Pick another with --port.") from None
        raise VlalignError(f"Cannot listen on {host}:{port}: {err.strerror}.") from None
