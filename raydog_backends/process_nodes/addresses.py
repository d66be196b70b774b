"""Addresses for nodes that share this machine: one loopback address each, free ports, and what
is listening where (read from ``/proc/net``). Linux only."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from raydog_backends.process_nodes.locks import folder_lock
from raydog_core.errors import BackendError


def listening_sockets() -> set[tuple[str, int]]:
    """``(address, port)`` of every TCP socket listening and UDP socket bound on this machine
    (``0.0.0.0`` and ``::`` stand for every address)."""
    found: set[tuple[str, int]] = set()
    for table, listening_only in (("tcp", True), ("tcp6", True), ("udp", False), ("udp6", False)):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if listening_only and fields[3] != "0A":  # 0A: TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            found.add((_decode_proc_address(address), int(port, 16)))
    return found


def bound_addresses() -> set[str]:
    """Addresses some socket listens on or is bound to."""
    return {address for address, _ in listening_sockets()}


def _decode_proc_address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc/net prints each 32-bit word in host byte order (little-endian here).
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(packed) == 4:
        return str(ipaddress.IPv4Address(packed))
    v6 = ipaddress.IPv6Address(packed)
    return str(v6.ipv4_mapped or v6)


RECENT_PORT_SECONDS = 120.0
"""How long a port handed out stays reserved: its caller binds it well within that."""


def free_port(host: str = "") -> int:
    """A TCP port nothing listens on (``host`` "": on any address), and that no process on this
    machine was handed in the last ``RECENT_PORT_SECONDS``.

    The kernel may give the same free port to two processes that each probe before either binds
    it (parallel test workers, two ``ray up`` at once); a ledger shared under a folder lock keeps
    the ports handed out recently apart.
    """
    folder = Path(tempfile.gettempdir()) / f"raydog-ports-{os.getuid()}"
    with folder_lock(folder):
        ledger = folder / "recent"
        now = time.time()
        recent = _recent_ports(ledger, now)
        for _ in range(64):
            port = _probe_port(host)
            if port not in recent:
                break
        recent[port] = now
        scratch = folder / f"recent.{os.getpid()}"
        scratch.write_text("".join(f"{p} {t}\n" for p, t in recent.items()))
        scratch.replace(ledger)
    return port


def _probe_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _recent_ports(ledger: Path, now: float) -> dict[int, float]:
    """Ports the ledger says were handed out less than ``RECENT_PORT_SECONDS`` ago."""
    recent: dict[int, float] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in ledger.read_text().splitlines():
            with contextlib.suppress(ValueError):
                port, handed_out = line.split()
                if now - float(handed_out) < RECENT_PORT_SECONDS:
                    recent[int(port)] = float(handed_out)
    return recent


class LoopbackAddresses:
    """Hands out 127.0.0.2, 127.0.0.3, … one per node, machine-wide.

    An address is leased by a symlink ``<lease_dir>/<ip> -> <owner>``, where the owner is a
    path that exists as long as the node does (its folder): a lease whose owner is gone is
    free again, so a crash leaks nothing. Addresses some socket is bound to are skipped.
    """

    FIRST = int(ipaddress.IPv4Address("127.0.0.2"))
    LAST = int(ipaddress.IPv4Address("127.255.255.254"))

    def __init__(self, lease_dir: Path | None = None) -> None:
        self.lease_dir = lease_dir or Path(tempfile.gettempdir()) / f"raydog-loopback-{os.getuid()}"

    def allocate(self, owner: Path) -> str:
        with self._locked():
            busy = bound_addresses()
            for ip in self._candidates():
                lease = self.lease_dir / ip
                if ip in busy or self._held(lease):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    lease.unlink()
                lease.symlink_to(owner.absolute())
                return ip
        raise BackendError("allocate", "a loopback address", "every 127.x.y.z address is in use")

    def release(self, ip: str, owner: Path) -> None:
        """Give ``ip`` back if ``owner`` holds it."""
        lease = self.lease_dir / ip
        with self._locked(), contextlib.suppress(OSError):
            if Path(os.readlink(lease)) == owner.absolute():
                lease.unlink()

    def holder(self, ip: str) -> Path | None:
        """Who holds ``ip`` now (the owner path it was leased to), if anyone."""
        lease = self.lease_dir / ip
        return Path(os.readlink(lease)) if self._held(lease) else None

    def _candidates(self) -> Iterator[str]:
        for number in range(self.FIRST, self.LAST + 1):
            if number & 0xFF not in (0, 255):
                yield str(ipaddress.IPv4Address(number))

    @staticmethod
    def _held(lease: Path) -> bool:
        return lease.is_symlink() and lease.exists()

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return folder_lock(self.lease_dir)
