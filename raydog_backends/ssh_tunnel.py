"""The ``sshtunnel`` transport: a local port forwarded over SSH to the head's tag-store port.

paramiko's ``SSHClient`` makes the SSH connection (bounded timeouts, host-key checking before
authentication); sshtunnel's forwarder then serves the local port over that connection.

Host keys (option ``host_key_policy``):

- ``accept-new`` (default): trust a head's key the first time, refuse a different one later.
  Ray's own SSH to the head checks nothing (``StrictHostKeyChecking=no``,
  ``UserKnownHostsFile=/dev/null``), so refusing unknown heads would fail every new cluster while
  adding no protection Ray's SSH does not already lack; pinning the first key still catches a
  head whose key changes during the cluster's life. Keys go to the cluster's own ``known_hosts``
  (``~/.raydog/clusters/<cluster>/known_hosts``), not ``~/.ssh/known_hosts``: cloud addresses are
  reused by other machines, which would otherwise raise false alarms for unrelated clusters.
- ``reject``: only keys already in ``known_hosts`` (for users who provision heads' keys).
- ``ignore``: check nothing (like Ray's own SSH).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paramiko
from sshtunnel import BaseSSHTunnelForwarderError, SSHTunnelForwarder

from raydog_core import state
from raydog_core.errors import ConfigError, UnreachableError
from raydog_core.interfaces import Endpoint, Transport

logger = logging.getLogger(__name__)

HostKeyPolicy = Literal["reject", "accept-new", "ignore"]
HOST_KEY_POLICIES: tuple[HostKeyPolicy, ...] = ("reject", "accept-new", "ignore")


class _ExpectedStopWarnings(logging.Filter):
    """sshtunnel warns that a tunnel "is not started" when stopping one whose SSH connection
    already dropped, which is exactly when this module stops it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Please .start() first" not in record.getMessage()


_forwarder_logger = logging.getLogger(f"{__name__}.forwarder")
_forwarder_logger.addFilter(_ExpectedStopWarnings())


class _AcceptAnyHostKey(paramiko.MissingHostKeyPolicy):
    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        """Accept without recording: policy ``ignore``."""


class _Forwarder(SSHTunnelForwarder):
    """sshtunnel's local forwarding server over an SSH transport connected by this module
    (sshtunnel's own connection has neither host-key checking nor a bounded connect)."""

    def __init__(self, transport: paramiko.Transport, **options: Any) -> None:
        self._checked_transport = transport
        super().__init__(**options)

    def _connect_to_gateway(self) -> None:
        self._transport = self._checked_transport


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    user: str
    key_path: str


@dataclass
class _Tunnel:
    target: _Target
    client: paramiko.SSHClient
    forwarder: _Forwarder
    endpoint: Endpoint


class SSHTunnelTransport(Transport):
    """Forwards a port of ``127.0.0.1`` here to ``127.0.0.1:<port>`` on the head, over SSH."""

    uses_ssh = True

    def __init__(
        self,
        cluster_name: str,
        *,
        ssh_port: int = 22,
        host_key_policy: HostKeyPolicy = "accept-new",
        known_hosts: str | None = None,
        connect_timeout: float = 10.0,
        keepalive_seconds: float = 15.0,
    ) -> None:
        """Options (the cluster YAML's ``transport`` mapping):

        - ``ssh_port``: the head's SSH port.
        - ``host_key_policy``: ``accept-new``, ``reject`` or ``ignore`` (see the module's notes).
        - ``known_hosts``: the file of trusted host keys; default: the cluster's own.
        - ``connect_timeout``: seconds for each step of connecting (TCP, SSH handshake,
          authentication, opening the forwarded channel).
        - ``keepalive_seconds``: SSH keepalives, so idle NATs and firewalls keep the tunnel.
        """
        super().__init__(cluster_name)
        if isinstance(ssh_port, bool) or not 1 <= ssh_port <= 65535:
            raise ConfigError("ssh_port", f"expected a TCP port from 1 to 65535, got {ssh_port!r}")
        if host_key_policy not in HOST_KEY_POLICIES:
            raise ConfigError(
                "host_key_policy", f"unknown policy {host_key_policy!r}", HOST_KEY_POLICIES
            )
        if known_hosts is not None and not known_hosts.strip():
            raise ConfigError("known_hosts", "expected a file path")
        if not 0 < connect_timeout <= 600 or not math.isfinite(connect_timeout):
            raise ConfigError(
                "connect_timeout",
                f"expected seconds above 0 and at most 600, got {connect_timeout!r}",
            )
        if not 0 <= keepalive_seconds <= 3600 or not math.isfinite(keepalive_seconds):
            raise ConfigError(
                "keepalive_seconds", f"expected 0 (off) to 3600 seconds, got {keepalive_seconds!r}"
            )
        self.ssh_port = ssh_port
        self.host_key_policy = host_key_policy
        self.known_hosts = (
            Path(known_hosts).expanduser()
            if known_hosts is not None
            else state.cluster_dir(cluster_name) / "known_hosts"
        )
        self.connect_timeout = float(connect_timeout)
        self.keepalive_seconds = float(keepalive_seconds)
        self._tunnel: _Tunnel | None = None
        self._lock = threading.Lock()

    def open(self, host: str, port: int, auth: Mapping[str, Any]) -> Endpoint:
        target = _Target(host, port, *_user_and_key(auth))
        with self._lock:
            tunnel = self._tunnel
            if tunnel is not None and tunnel.target == target and self._usable(tunnel):
                return tunnel.endpoint
            self._close_locked()
            tunnel = self._tunnel = self._start(target)
            if not self._usable(tunnel):
                self._close_locked()
                raise UnreachableError(
                    "SSH tunnel to the head", host, self.ssh_port, "it closed as soon as it opened"
                )
            return tunnel.endpoint

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _start(self, target: _Target) -> _Tunnel:
        key = _load_key(target.key_path)
        client = self._ssh_client()
        try:
            client.connect(
                target.host,
                port=self.ssh_port,
                username=target.user,
                pkey=key,
                allow_agent=False,
                look_for_keys=False,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                channel_timeout=self.connect_timeout,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise self._unreachable(
                target,
                f"its host key ({exc.key.get_name()} {exc.key.fingerprint}) is not the one "
                f"recorded in {self.known_hosts}; if the head was replaced, delete its line there",
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise self._unreachable(
                target, f"user {target.user!r} was refused with the key {target.key_path}"
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise self._unreachable(target, _describe(exc, self.connect_timeout)) from exc
        transport = client.get_transport()
        assert transport is not None  # connect() succeeded
        if self.keepalive_seconds:
            transport.set_keepalive(int(max(1, self.keepalive_seconds)))
        forwarder = _Forwarder(
            transport,
            ssh_address_or_host=(target.host, self.ssh_port),
            ssh_username=target.user,
            ssh_pkey=key,
            ssh_config_file=None,
            allow_agent=False,
            host_pkey_directories=[],
            remote_bind_address=("127.0.0.1", target.port),
            local_bind_address=("127.0.0.1", 0),
            set_keepalive=self.keepalive_seconds,
            logger=_forwarder_logger,
        )
        try:
            forwarder.start()
        except BaseSSHTunnelForwarderError as exc:
            client.close()
            raise self._unreachable(target, f"could not forward a local port: {exc}") from exc
        endpoint = Endpoint("127.0.0.1", int(forwarder.local_bind_port))
        logger.info(
            "RayDog: SSH tunnel %s:%d -> %s:%d (head port %d) is open",
            endpoint.host,
            endpoint.port,
            target.host,
            self.ssh_port,
            target.port,
        )
        return _Tunnel(target, client, forwarder, endpoint)

    def _usable(self, tunnel: _Tunnel) -> bool:
        """True if the SSH path carries a connection to the head's port right now.

        A channel to the port is opened and closed (one round trip, only when ``open`` is
        called, i.e. on (re)connecting): it finds a silently dead path that ``is_active``
        cannot see. SSH working but nothing listening on the head's port is an error of its own.
        """
        transport = tunnel.client.get_transport()
        if transport is None or not transport.is_active():
            logger.info("RayDog: the SSH tunnel to %s dropped; reopening it", tunnel.target.host)
            return False
        try:
            channel = transport.open_channel(
                "direct-tcpip",
                dest_addr=("127.0.0.1", tunnel.target.port),
                src_addr=("127.0.0.1", 0),
                timeout=self.connect_timeout,
            )
        except paramiko.ChannelException as exc:
            raise UnreachableError(
                "tag store on the head",
                tunnel.target.host,
                tunnel.target.port,
                f"SSH works but nothing accepts connections on its port ({exc.text}); "
                "is the tag store's server running on the head?",
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            logger.info(
                "RayDog: the SSH tunnel to %s dropped (%s); reopening it", tunnel.target.host, exc
            )
            return False
        channel.close()
        return True

    def _close_locked(self) -> None:
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is None:
            return
        try:
            tunnel.forwarder.stop(force=True)
        finally:
            tunnel.client.close()

    def _ssh_client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if self.host_key_policy == "ignore":
            client.set_missing_host_key_policy(_AcceptAnyHostKey())
            return client
        if self.host_key_policy == "accept-new":
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.known_hosts.touch(mode=0o600, exist_ok=True)
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if self.known_hosts.exists():
            client.load_host_keys(str(self.known_hosts))
        return client

    def _unreachable(self, target: _Target, reason: str) -> UnreachableError:
        return UnreachableError("SSH to the head", target.host, self.ssh_port, reason)


def _user_and_key(auth: Mapping[str, Any]) -> tuple[str, str]:
    user = auth.get("ssh_user")
    if not isinstance(user, str) or not user:
        raise ConfigError("auth.ssh_user", "the sshtunnel transport needs the SSH user of the head")
    key = auth.get("ssh_private_key")
    if not isinstance(key, str) or not key:
        raise ConfigError(
            "auth.ssh_private_key", "the sshtunnel transport needs a private key file"
        )
    return user, os.path.expanduser(key)


def _load_key(path: str) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(path)
    except FileNotFoundError:
        raise ConfigError("auth.ssh_private_key", f"no such file: {path}") from None
    except paramiko.PasswordRequiredException:
        raise ConfigError(
            "auth.ssh_private_key", f"{path} is encrypted; give a key without a passphrase"
        ) from None
    except (paramiko.SSHException, OSError, ValueError) as exc:
        raise ConfigError(
            "auth.ssh_private_key", f"cannot read a private key from {path}: {exc}"
        ) from None


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s"
    return str(exc) or type(exc).__name__
