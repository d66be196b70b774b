#!/usr/bin/env bash
# The Docker variant of a worker's task: Ray and the workload's libraries come from an image
# (the same Ray and Python versions as the client), so the instance needs only Docker.
set -euo pipefail
IMAGE=${RAY_IMAGE:-rayproject/ray:2.60.0-py311-cpu}
# RAY_CLOUD_INSTANCE_ID, RAY_NODE_TYPE_NAME: set by RayDog under Ray's autoscaler v2, which knows
# the node by them.
exec docker run --rm --network host --shm-size=2g --name "ray-${RAYDOG_NODE_ID//[:\/]/-}" \
  -e RAY_CLOUD_INSTANCE_ID -e RAY_NODE_TYPE_NAME \
  "$IMAGE" ray start --address="${RAY_HEAD_IP}:6379" --block
