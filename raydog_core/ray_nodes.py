"""Ray's live nodes as the head's GCS lists them. ``raydog status --why`` runs this module on the
head (``python -m raydog_core.ray_nodes``, through Ray's command runner) and reads the line it
prints: the head's GCS is reachable there whatever the path from the client."""

from __future__ import annotations

import json
import os
import sys

MARK = "RAYDOG_RAY_NODES "


def ray_nodes() -> dict[str, float]:
    """On the head: Ray's live nodes, address -> when each joined (seconds since epoch), from
    the head's GCS (its address from RayDog's node environment, else Ray's own lookup)."""
    from ray._private.gcs_utils import GcsNodeInfo
    from ray._private.services import canonicalize_bootstrap_address_or_die
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # not in Ray's stub

    host, port = os.environ.get("RAYDOG_NODE_IP"), os.environ.get("RAYDOG_GCS_PORT")
    address = f"{host}:{port}" if host and port else canonicalize_bootstrap_address_or_die("auto")
    nodes = GcsClient(address=address).get_all_node_info(timeout=30)
    return {
        node.node_manager_address: node.start_time_ms / 1000.0
        for node in nodes.values()
        if node.state == GcsNodeInfo.GcsNodeState.ALIVE
    }


def parse(output: str) -> dict[str, float] | None:
    """``ray_nodes`` as printed on the head; None if the line is absent (Ray did not answer)."""
    for line in output.splitlines():
        if line.startswith(MARK):
            try:
                found = json.loads(line.removeprefix(MARK))
                return {str(ip): float(at) for ip, at in found.items()}
            except (ValueError, TypeError, AttributeError):
                return None
    return None


def main() -> int:
    """Print the mark line; when the head's Ray does not answer, say why on stderr and print
    no mark (the caller then says Ray joined is not known)."""
    from ray.exceptions import RayError

    try:
        found = ray_nodes()
    except (RayError, ConnectionError, RuntimeError, ValueError) as exc:
        sys.stderr.write(f"the head's Ray did not answer: {exc}\n")
        return 0
    sys.stdout.write(MARK + json.dumps(found) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
