"""The scripts node tasks run: RayDog's defaults, and what the core puts in front of every one.

A config that names no ``ray_head_node_task_script`` / ``ray_worker_node_task_script`` gets the
defaults below. They run unchanged on every compute backend: what a backend knows about a node
arrives as environment variables, and the ones only some backends set (the ``local`` backend's
per-node ports and temp folder) are passed to ``ray start`` only when present.
"""

from __future__ import annotations

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


def compose(
    script: str, *, setup_wait: str | None = None, head_server_command: str | None = None
) -> str:
    """The script a compute backend runs: what the core does first, then the node's script.

    Everything the core puts in front of a task script is added here, in order, after the
    script's shebang (or bash's): the wait for the node's setup to finish
    (``node_setup.task_wait``), then the tag store's server on the head.
    """
    prefix: list[str] = []
    if setup_wait:
        prefix.append(setup_wait.rstrip("\n"))
    if head_server_command:
        prefix += ["# Started by RayDog: the tag store's server", head_server_command]
    if not prefix:
        return script
    lines = script.splitlines(keepends=True)
    shebang = lines.pop(0) if lines and lines[0].startswith("#!") else "#!/usr/bin/env bash\n"
    return shebang + "\n".join(prefix) + "\n" + "".join(lines)
