"""The emulator over HTTP: the REST subset of YellowDog that RayDog uses, plus ``/emulator/``.

The API paths and JSON are the SDK's own (``PlatformClient.create(ServicesSchema(defaultUrl=URL),
ApiKey(id, secret))`` talks to it unchanged; ``routes`` lists them). ``/emulator/`` is for tests
and users: inspect every object and every request served, inject faults and latency, lose nodes,
fail tasks, fail provisioning, make a node search miss a node.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from yellowdog_client.common.json import Json

from raydog_backends.yellowdog_emulator.platform import Platform
from raydog_backends.yellowdog_emulator.records import ApiError, EmulatorConfig, Query
from raydog_backends.yellowdog_emulator.routes import ROUTES

Reply = tuple[int, Any, dict[str, str]]
"""Status, JSON payload, extra headers."""

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.02
TOO_MANY_REQUESTS = 429
AUTH_PREFIX = "yd-key "


@dataclass
class Fault:
    """Make matching API calls fail with ``status`` and/or answer after ``latency`` seconds."""

    path: str
    """A regular expression searched for in the request path (``/work/requirements``)."""
    method: str | None = None
    status: int = 0
    """0: no failure (latency only)."""
    skip: int = 0
    """Let this many matching calls through first (``nth`` call = skip n-1)."""
    times: int | None = 1
    """How many calls fail after the skipped ones; None: every one."""
    latency: float = 0.0
    after_apply: bool = False
    """Serve the request (its change is made), then fail its reply: what a client sees when a
    reply is lost; the SDK retries POSTs too on 429 and 5xx (``platform_client.py``)."""
    retry_after: int | None = None
    """Seconds the failure's ``Retry-After`` header asks the client to wait: the SDK honours it
    on a 429 (``full_jitter_retry.py``, through urllib3's ``Retry``)."""
    seen: int = 0

    def applies(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and re.search(
            self.path, path
        ) is not None

    def fires(self) -> bool:
        """Count a matching call; whether it fails."""
        self.seen += 1
        fired = self.seen - self.skip
        return self.status > 0 and fired >= 1 and (self.times is None or fired <= self.times)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Fault:
        """``nth``: fail the nth matching call only (``times`` more from there); without it,
        ``skip`` calls pass and then ``times`` fail (every one if ``times`` is absent)."""
        nth = body.get("nth")
        if nth is not None:
            skip, times = int(nth) - 1, body.get("times", 1)
        else:
            skip, times = int(body.get("skip", 0)), body.get("times")
        return cls(
            path=str(body["path"]),
            method=body.get("method"),
            status=int(body.get("status", 0)),
            skip=skip,
            times=None if times is None else int(times),
            latency=float(body.get("latency", 0.0)),
            after_apply=bool(body.get("after_apply", False)),
            retry_after=None if body.get("retry_after") is None else int(body["retry_after"]),
        )


class Api:
    """Routing, authentication, faults and the log of every request served."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.faults: list[Fault] = []
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def handle(self, method: str, path: str, query: Query, authorization: str, body: Any) -> Reply:
        key_id, secret = _key(authorization)
        with self._lock:
            record: dict[str, Any] = {
                "seq": len(self.requests),
                "time": time.time(),
                "method": method,
                "path": path,
                "query": {k: list(v) for k, v in query.items()},
                "body": body,
                "key_id": key_id,
                "status": None,
            }
            self.requests.append(record)
            matching = [f for f in self.faults if f.applies(method, path)]
            fired = [f for f in matching if f.fires()]
        delay = sum(f.latency for f in matching)
        if delay:
            time.sleep(delay)
        reply = self._answer(method, path, query, key_id, secret, body, fired)
        record["status"] = reply[0]
        return reply

    def _answer(
        self,
        method: str,
        path: str,
        query: Query,
        key_id: str | None,
        secret: str | None,
        body: Any,
        fired: list[Fault],
    ) -> Reply:
        injected = [f for f in fired if not f.after_apply]
        if injected:
            return _injected(injected[0])
        expected = self.platform.config.api_key
        if not key_id or not secret or (expected is not None and f"{key_id}:{secret}" != expected):
            return 401, _error(ApiError(401, "unknown API key", "NotAuthorisedException")), {}
        status, payload = self._serve(method, path, query, body)
        return _injected(fired[0]) if fired else (status, payload, {})

    def _serve(self, method: str, path: str, query: Query, body: Any) -> tuple[int, Any]:
        for route_method, pattern, handler in ROUTES:
            match = pattern.fullmatch(path)
            if route_method == method and match:
                try:
                    with self.platform.lock:
                        return 200, _dump(handler(self.platform, match.groupdict(), query, body))
                except ApiError as exc:
                    return exc.status, _error(exc)
                except (KeyError, TypeError, ValueError) as exc:
                    return 400, _error(ApiError(400, f"malformed request: {exc}"))
        return 404, _error(ApiError(404, f"no such API: {method} {path}"))

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def served(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self.requests[since:]]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()


def _key(authorization: str) -> tuple[str | None, str | None]:
    if not authorization.startswith(AUTH_PREFIX):
        return None, None
    key_id, _, secret = authorization[len(AUTH_PREFIX) :].partition(":")
    return key_id or None, secret or None


def _injected(fault: Fault) -> Reply:
    headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
    if fault.status == TOO_MANY_REQUESTS:
        # Without an errorType, so that the SDK raises requests' HTTPError, whose response
        # shows the status and Retry-After (a custom exception carries neither). What the
        # platform's 429 body holds is unconfirmed.
        return fault.status, {"message": "Too Many Requests"}, headers
    error = ApiError(fault.status, "failure injected by the emulator", _kind(fault.status))
    return fault.status, _error(error), headers


def _kind(status: int) -> str:
    if status in (401, 403):
        return "NotAuthorisedException"
    return "InternalServerException" if status >= 500 else "InvalidRequestException"


def _error(exc: ApiError) -> dict[str, Any]:
    return {"errorType": exc.error_type, "message": exc.message, "detail": []}


def _dump(value: Any) -> Any:
    if isinstance(value, list):
        return [Json.dump(item) for item in value]
    return Json.dump(value)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # An answer is written as headers, then body: with Nagle's algorithm the body waits for the
    # client's delayed ACK of the headers (40 ms a request on Linux), not for any work.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("emulator: " + format, *args)

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = re.sub(r"/{2,}", "/", unquote(parts.path))
        query = parse_qs(parts.query, keep_blank_values=True)
        try:
            body = self._body()
        except (ValueError, OSError) as exc:
            self._send(400, _error(ApiError(400, f"unreadable request body: {exc}")))
            return
        headers: dict[str, str] = {}
        if path.startswith("/emulator/"):
            status, payload = _control(self.server.emulator, method, path, query, body)
        else:
            status, payload, headers = self.server.emulator.api.handle(
                method, path, query, self.headers.get("Authorization", ""), body
            )
        self._send(status, payload, headers)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        return json.loads(raw) if raw.strip() else None

    def _send(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _control(
    emulator: Emulator, method: str, path: str, query: Query, body: Any
) -> tuple[int, Any]:
    platform, api = emulator.platform, emulator.api
    try:
        if (method, path) == ("GET", "/emulator/state"):
            return 200, {
                **platform.snapshot(),
                "request_count": len(api.requests),
                "searches_with_a_node_left_out": platform.nodes.searches_with_a_node_left_out,
            }
        if (method, path) == ("GET", "/emulator/requests"):
            since = int((query.get("since") or ["0"])[0])
            return 200, {"requests": api.served(since)}
        if (method, path) == ("DELETE", "/emulator/requests"):
            api.clear_requests()
            return 200, {}
        if (method, path) == ("POST", "/emulator/faults"):
            api.add_fault(Fault.from_json(body or {}))
            return 200, {}
        if (method, path) == ("DELETE", "/emulator/faults"):
            api.clear_faults()
            platform.clear_faults()
            return 200, {}
        if (method, path) == ("POST", "/emulator/settings"):
            with platform.lock:
                platform.config.update(body or {})
            return 200, {}
        if (method, path) == ("POST", "/emulator/reset"):
            api.clear_faults()
            api.clear_requests()
            platform.reset()
            return 200, {}
        if method == "POST":
            with platform.lock:
                changed = _change(platform, path, body or {})
            if changed is not None:
                return 200, changed
    except ApiError as exc:
        return exc.status, _error(exc)
    except (KeyError, TypeError, ValueError) as exc:
        return 400, _error(ApiError(400, f"malformed request: {exc}"))
    return 404, _error(ApiError(404, f"no such emulator endpoint: {method} {path}"))


def _change(platform: Platform, path: str, body: Mapping[str, Any]) -> Any:
    """What ``/emulator/`` POSTs do to the platform; None for an unknown path."""
    fail_tasks = body.get("fail_tasks")
    if match := re.fullmatch(r"/emulator/nodes/([^/]+)/lose", path):
        return Json.dump(platform.nodes.lose_node(match[1], fail_tasks))
    if match := re.fullmatch(r"/emulator/tasks/([^/]+)/lose-node", path):
        return Json.dump(platform.nodes.lose_node_of_task(match[1], fail_tasks))
    if match := re.fullmatch(r"/emulator/tasks/([^/]+)/fail", path):
        return Json.dump(platform.work.fail_task(match[1]))
    if path == "/emulator/provisioning-failures":
        platform.compute.fail_provisioning(body.get("template_id"), str(body["reason"]))
        return {}
    if path == "/emulator/node-search-glitches":
        platform.nodes.hide_from_searches(body.get("node_id"), int(body.get("times", 1)))
        return {}
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    emulator: Emulator


class Emulator:
    """The emulator as a server, in this process: ``Emulator(config).start()`` ... ``stop()``."""

    def __init__(
        self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.platform = Platform(config)
        self.api = Api(self.platform)
        self._address = (host, port)
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Emulator:
        server = _Server(self._address, _RequestHandler)
        server.emulator = self
        self._server = server
        self._stopping.clear()
        self._threads = [
            threading.Thread(
                target=server.serve_forever,
                args=(TICK_SECONDS,),
                name="yd-emulator-http",
                daemon=True,
            ),
            threading.Thread(target=self._tick_forever, name="yd-emulator-tick", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, stop every task process, release every address."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=10)
        self.platform.close()

    def _tick_forever(self) -> None:
        while not self._stopping.wait(TICK_SECONDS):
            try:
                self.platform.tick()
            except Exception:  # a bug in one tick must not stop the simulation
                logger.exception("emulator: tick failed")

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
