#!/usr/bin/env bash
# A worker's YellowDog task: join the head's Ray cluster and stay until stopped.
# YellowDog gives the task RAY_HEAD_IP (the head's private address).
set -euo pipefail
[ -f /etc/profile.d/raydog.sh ] && . /etc/profile.d/raydog.sh
exec ray start --address="${RAY_HEAD_IP}:6379" --block
