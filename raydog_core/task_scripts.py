"""The scripts node tasks run: RayDog's defaults, and what the core puts in front of every one.

A config that names no ``ray_head_node_task_script`` / ``ray_worker_node_task_script`` gets the
defaults below. They run unchanged on every compute backend: what a backend knows about a node
arrives as environment variables, and the ones only some backends set (the ``local`` backend's
per-node ports and temp folder) are passed to ``ray start`` only when present. The node type's
``resources`` arrive the same way on every backend (``resource_exports``), so Ray offers
exactly what its autoscaler plans with (``resources: {CPU: 0}`` keeps work off the head).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping

DEFAULT_HEAD_SCRIPT = """#!/usr/bin/env bash
# RayDog's default head task: Ray's head with the autoscaling config `ray up` uploads, and
# Ray's dashboard. It blocks for as long as the node lives.
set -euo pipefail
if [ -f /etc/profile.d/raydog.sh ]; then . /etc/profile.d/raydog.sh; fi
ulimit -n 65536 2>/dev/null || true

# `ray up` uploads the config RayDog bootstrapped once this node runs; Ray's head needs it.
until [ -s "$HOME/ray_bootstrap_config.yaml" ]; do sleep 1; done

# `exec`: stopping the node signals `ray start`, which stops Ray's processes in order.
exec ray start --head --block \\
    --port="${RAYDOG_GCS_PORT:-6379}" \\
    --autoscaling-config="$HOME/ray_bootstrap_config.yaml" \\
    --include-dashboard=true \\
    --dashboard-host="${RAYDOG_NODE_IP:-0.0.0.0}" \\
    ${RAYDOG_NODE_IP:+"--node-ip-address=$RAYDOG_NODE_IP"} \\
    ${RAYDOG_CLIENT_PORT:+"--ray-client-server-port=$RAYDOG_CLIENT_PORT"} \\
    ${RAYDOG_DASHBOARD_AGENT_PORT:+"--dashboard-agent-listen-port=$RAYDOG_DASHBOARD_AGENT_PORT"} \\
    ${RAYDOG_NUM_CPUS:+"--num-cpus=$RAYDOG_NUM_CPUS"} \\
    ${RAYDOG_NUM_GPUS:+"--num-gpus=$RAYDOG_NUM_GPUS"} \\
    ${RAYDOG_MEMORY:+"--memory=$RAYDOG_MEMORY"} \\
    ${RAYDOG_OBJECT_STORE_MEMORY:+"--object-store-memory=$RAYDOG_OBJECT_STORE_MEMORY"} \\
    ${RAYDOG_RESOURCES:+"--resources=$RAYDOG_RESOURCES"} \\
    ${RAY_TMPDIR:+"--temp-dir=$RAY_TMPDIR/ray"} \\
    --disable-usage-stats
"""

DEFAULT_WORKER_SCRIPT = """#!/usr/bin/env bash
# RayDog's default worker task: join the head's Ray (RAY_HEAD_IP, given by the compute
# backend) and block for as long as the node lives.
set -euo pipefail
if [ -f /etc/profile.d/raydog.sh ]; then . /etc/profile.d/raydog.sh; fi
ulimit -n 65536 2>/dev/null || true

exec ray start --block \\
    --address="${RAY_ADDRESS:-$RAY_HEAD_IP:6379}" \\
    ${RAYDOG_NODE_IP:+"--node-ip-address=$RAYDOG_NODE_IP"} \\
    ${RAYDOG_DASHBOARD_AGENT_PORT:+"--dashboard-agent-listen-port=$RAYDOG_DASHBOARD_AGENT_PORT"} \\
    ${RAYDOG_NUM_CPUS:+"--num-cpus=$RAYDOG_NUM_CPUS"} \\
    ${RAYDOG_NUM_GPUS:+"--num-gpus=$RAYDOG_NUM_GPUS"} \\
    ${RAYDOG_MEMORY:+"--memory=$RAYDOG_MEMORY"} \\
    ${RAYDOG_OBJECT_STORE_MEMORY:+"--object-store-memory=$RAYDOG_OBJECT_STORE_MEMORY"} \\
    ${RAYDOG_RESOURCES:+"--resources=$RAYDOG_RESOURCES"} \\
    ${RAY_TMPDIR:+"--temp-dir=$RAY_TMPDIR/ray"} \\
    --disable-usage-stats
"""

WAIT_FOR_HEAD_RAY = (
    'for i in $(seq 600); do [ -s "${RAY_TMPDIR:-/tmp}/ray/ray_current_cluster" ] && exit 0;'
    " sleep 0.5; done; echo \"Ray did not start on the head within 5 minutes: see the head task's"
    ' output" >&2; exit 1'
)
"""RayDog's default ``head_start_ray_commands``: the head's task script starts Ray, so ``ray up``
only waits for it (Ray writes ``ray_current_cluster`` into its temp folder once it runs)."""


RESOURCE_VARIABLES = {
    "CPU": "RAYDOG_NUM_CPUS",
    "GPU": "RAYDOG_NUM_GPUS",
    "memory": "RAYDOG_MEMORY",
    "object_store_memory": "RAYDOG_OBJECT_STORE_MEMORY",
}
"""The resources ``ray start`` takes as options of their own (``--num-cpus``, ``--num-gpus``,
``--memory``, ``--object-store-memory``; whole numbers, memory in bytes), and the variable each
reaches a task script in."""
CUSTOM_RESOURCES_VARIABLE = "RAYDOG_RESOURCES"
"""Every other resource of the node type, as the JSON object ``ray start --resources`` takes."""


def resource_exports(node_type: str, resources: Mapping[str, float]) -> str:
    """Bash exporting a node type's ``resources`` for the Ray its script starts: the variables
    of ``RESOURCE_VARIABLES`` and ``CUSTOM_RESOURCES_VARIABLE``, each only when the type names
    such a resource (Ray detects the rest itself, as it does under its own launcher)."""
    lines = [f"# Set by RayDog: the resources of node type {node_type}, for ray start"]
    for name, variable in RESOURCE_VARIABLES.items():
        if name in resources:
            lines.append(f"export {variable}={_whole(resources[name])}")
    custom = {name: value for name, value in resources.items() if name not in RESOURCE_VARIABLES}
    if custom:
        text = json.dumps(custom, sort_keys=True, separators=(",", ":"))
        lines.append(f"export {CUSTOM_RESOURCES_VARIABLE}={shlex.quote(text)}")
    return "\n".join(lines) if len(lines) > 1 else ""


def _whole(value: float) -> str:
    """A whole number as ``ray start`` takes it (``2.0`` is ``2``); config checks refuse others."""
    return str(int(value)) if float(value).is_integer() else str(value)


_TAG_SERVER = re.compile(r"(?:^|[\s/;&|(])(?:valkey|redis)-server(?:\s|$)")
_PORT_OPTION = re.compile(r"--port(?:\s+|=)['\"]?(\d+)")
SERVERS_DEFAULT_PORT = 6379


def starts_server_on(script: str, port: int) -> bool:
    """Whether a script starts a valkey or redis server of its own on ``port``: a command that
    runs ``valkey-server``/``redis-server`` with ``--port PORT`` (or no ``--port``, when
    ``port`` is their default). yellowdog-ray's example head task script starts one on 16667,
    the port RayDog's tag store takes too."""
    for line in script.splitlines():
        if line.lstrip().startswith("#") or not _TAG_SERVER.search(line):
            continue
        ports = [int(found) for found in _PORT_OPTION.findall(line)]
        if port in ports or (not ports and port == SERVERS_DEFAULT_PORT):
            return True
    return False


AUTOSCALER_V2_VARIABLE = "RAY_enable_autoscaler_v2"
"""Set to 1 where ``ray up`` runs: the head's Ray runs Ray's autoscaler v2."""


# Ray's variable naming its autoscaler's utilization scorer, and RayDog's (by name: importing it
# would import Ray's scheduler into every client).
SCORER_VARIABLE = "RAY_AUTOSCALER_UTILIZATION_SCORER"
SCORER = "raydog_core.scheduling.prefer_launchable"


def ray_exports(*, is_head: bool, autoscaler_v2: bool) -> str:
    """Bash exporting what Ray needs on a node, whatever starts Ray there.

    The head's autoscaler (v1) scores node types with RayDog's scorer
    (``raydog_core.scheduling``), which prefers a type whose launches did not fail lately;
    a ``RAY_AUTOSCALER_UTILIZATION_SCORER`` already set wins.

    v2 matches a Ray node to the node it launched by the id the Ray node reports
    (``RAY_CLOUD_INSTANCE_ID``: the compute backend's node id, which every backend gives its
    tasks as ``RAYDOG_NODE_ID``) and its node type (``RAY_NODE_TYPE_NAME``); without them it
    waits forever for the nodes it launched. The head also gets ``RAY_enable_autoscaler_v2=1``.
    """
    lines: list[str] = []
    if is_head and not autoscaler_v2:
        lines += [
            "# Set by RayDog: Ray's autoscaler prefers node types whose launches did not fail",
            f'export {SCORER_VARIABLE}="${{{SCORER_VARIABLE}:-{SCORER}}}"',
        ]
    if autoscaler_v2:
        lines += [
            "# Set by RayDog: Ray's autoscaler v2, and how it knows this node",
            'export RAY_CLOUD_INSTANCE_ID="${RAYDOG_NODE_ID:-}"',
            'export RAY_NODE_TYPE_NAME="${RAYDOG_NODE_TYPE:-}"',
        ]
        if is_head:
            lines.append(f"export {AUTOSCALER_V2_VARIABLE}=1")
    return "\n".join(lines)


def compose(
    script: str,
    *,
    ray_environment: str | None = None,
    resources: str | None = None,
    setup_wait: str | None = None,
    head_server_command: str | None = None,
) -> str:
    """The script a compute backend runs: what the core does first, then the node's script.

    Everything the core puts in front of a task script is added here, in order, after the
    script's shebang (or bash's): what Ray's autoscaler v2 needs (``ray_exports``), the wait
    for the node's setup to finish (``node_setup.task_wait``), the node type's resources
    (``resource_exports``), then the tag store's server on the head.
    """
    prefix: list[str] = []
    if ray_environment:
        prefix.append(ray_environment)
    if setup_wait:
        prefix.append(setup_wait.rstrip("\n"))
    if resources:
        prefix.append(resources)
    if head_server_command:
        prefix += ["# Started by RayDog: the tag store's server", head_server_command]
    if not prefix:
        return script
    lines = script.splitlines(keepends=True)
    shebang = lines.pop(0) if lines and lines[0].startswith("#!") else "#!/usr/bin/env bash\n"
    return shebang + "\n".join(prefix) + "\n" + "".join(lines)
