#!/usr/bin/env bash
# Userdata for the Docker variant's workers: Docker, and the YellowDog agent (see node-setup).
set -euo pipefail
# RayDog's task scripts wait for this marker: written once this whole userdata (extra_userdata
# included) has succeeded, as `raydog node-setup` does.
rm -f /opt/raydog/setup-finished
trap '[ $? -ne 0 ] || { mkdir -p /opt/raydog && date > /opt/raydog/setup-finished.tmp &&
  mv -f /opt/raydog/setup-finished.tmp /opt/raydog/setup-finished; }' EXIT
command -v docker >/dev/null || { apt-get update -q && apt-get install -y -q docker.io; }
usermod -aG docker yd-agent 2>/dev/null || true
