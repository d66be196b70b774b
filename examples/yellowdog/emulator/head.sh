#!/bin/bash
# The head's task on YellowDog's emulator: a process session on this machine with its own
# loopback address ($RAYDOG_NODE_IP), home folder and Ray ports, all given by the emulator.
# RayDog has already started the tag store's server in front of this script.
set -euo pipefail

# `ray up` uploads the autoscaling config once this task runs; Ray's head needs it to start.
until [ -s "$HOME/ray_bootstrap_config.yaml" ]; do sleep 0.2; done

# `exec`: cancelling the task signals `ray start`, which stops Ray's processes in order.
exec ray start --head --block \
    --num-cpus=1 \
    --node-ip-address="$RAYDOG_NODE_IP" \
    --port="$RAYDOG_GCS_PORT" \
    --ray-client-server-port="$RAYDOG_CLIENT_PORT" \
    --dashboard-host="$RAYDOG_NODE_IP" \
    --dashboard-agent-listen-port="$RAYDOG_DASHBOARD_AGENT_PORT" \
    --temp-dir="$RAY_TMPDIR/ray" \
    --autoscaling-config="$HOME/ray_bootstrap_config.yaml" \
    --disable-usage-stats
