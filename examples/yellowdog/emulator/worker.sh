#!/bin/bash
# A worker's task on YellowDog's emulator: join the head (RAY_HEAD_IP from RayDog, the cluster's
# Ray port from the emulator) with this node type's CPUs, and stay until cancelled.
set -euo pipefail

exec ray start --block \
    --num-cpus=2 \
    --address="$RAY_HEAD_IP:$RAYDOG_GCS_PORT" \
    --node-ip-address="$RAYDOG_NODE_IP" \
    --dashboard-agent-listen-port="$RAYDOG_DASHBOARD_AGENT_PORT" \
    --temp-dir="$RAY_TMPDIR/ray"
