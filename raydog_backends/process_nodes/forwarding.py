"""Ray's SSH port forwarding for a node on this machine: the node's ports are on its own loopback
address, so ``localhost:<local>`` is relayed to ``<node ip>:<remote>`` while a command runs."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Sequence


def pairs(
    port_forward: Sequence[tuple[int, int]] | tuple[int, int] | None,
) -> list[tuple[int, int]]:
    if not port_forward:
        return []
    if isinstance(port_forward, tuple):
        return [(int(port_forward[0]), int(port_forward[1]))]
    return [(int(local), int(remote)) for local, remote in port_forward]


@contextlib.contextmanager
def forwarding(pairs: list[tuple[int, int]], node_ip: str) -> Iterator[None]:
    """While the command runs, ``localhost:<local>`` reaches ``<node ip>:<remote>``."""
    servers = []
    try:
        for local, remote in pairs:
            server = socket.create_server(("127.0.0.1", local))
            servers.append(server)
            threading.Thread(target=_accept, args=(server, (node_ip, remote)), daemon=True).start()
        yield
    finally:
        for server in servers:
            server.close()


def _accept(server: socket.socket, target: tuple[str, int]) -> None:
    while True:
        try:
            client, _ = server.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(target, timeout=10)
        except OSError:
            client.close()
            continue
        upstream.settimeout(None)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
