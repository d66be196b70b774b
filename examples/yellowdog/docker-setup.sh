#!/usr/bin/env bash
# Userdata for the Docker variant's workers: Docker, and the YellowDog agent (see node-setup).
set -euo pipefail
command -v docker >/dev/null || { apt-get update -q && apt-get install -y -q docker.io; }
usermod -aG docker yd-agent 2>/dev/null || true
