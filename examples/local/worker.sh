#!/bin/bash
# A worker node of a local RayDog cluster. RAY_ADDRESS is the head's Ray address and
# RAY_OVERRIDE_RESOURCES this node type's resources, both set by RayDog.
set -euo pipefail

# A temp folder of its own: nodes starting at once must not share Ray's socket names.
exec ray start --block \
    --address="$RAY_ADDRESS" \
    --node-ip-address="$RAYDOG_NODE_IP" \
    --dashboard-agent-listen-port="$RAYDOG_DASHBOARD_AGENT_PORT" \
    --temp-dir="$RAY_TMPDIR/ray"
