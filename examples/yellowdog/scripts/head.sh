#!/usr/bin/env bash
# The head node's YellowDog task. RayDog puts the tag store's server start above this script.
# `ray up` starts Ray here over SSH (head_start_ray_commands); this task only keeps the node
# for the cluster's lifetime. `ray down` cancels it.
set -euo pipefail
[ -f /etc/profile.d/raydog.sh ] && . /etc/profile.d/raydog.sh
echo "RayDog head of cluster ${RAYDOG_CLUSTER_NAME:-?} is up"
exec sleep infinity
