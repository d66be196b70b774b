"""``raydog init``: a first cluster config that validates as written, and what goes with it.

For YellowDog that is the node setup each node type's ``userdata`` names (``raydog
node-setup``'s output) and a ``.env`` template with the credential variables' names, no values.
Nothing is overwritten: if any file is already there, nothing is written.
"""

from __future__ import annotations

from pathlib import Path

from raydog_core.errors import RayDogError

LOCAL_CONFIG = """\
# A Ray cluster on this machine (Linux): each node is a process session with its own loopback
# address. No cloud account and no SSH. Everything not written here has a default
# (docs/configuration.md): the nodes run RayDog's task scripts, which start Ray.
#
#   raydog validate cluster.yaml
#   ray up -y cluster.yaml
#   ray submit cluster.yaml my_job.py
#   ray down -y cluster.yaml
cluster_name: my-local-cluster

# The most workers at once, over all node types.
max_workers: 4

# Ray reads these three before RayDog can fill them in. Commands here run on each node before
# Ray starts; none are needed.
setup_commands: []
head_setup_commands: []
worker_setup_commands: []

provider:
  type: external
  module: raydog_core.RayDogNodeProvider
  compute: local         # nodes are processes on this machine
  tag_store: valkey      # valkey-server on the head: pip install 'raydog[local]'
  transport: direct      # the client reaches the head's store without SSH

# Node types: what Ray's autoscaler may launch. `resources` is what it plans with.
available_node_types:
  head:
    resources: {CPU: 1}
    max_workers: 0
  cpu_worker:
    resources: {CPU: 2}
    min_workers: 0
    max_workers: 4
head_node_type: head
"""

YELLOWDOG_CONFIG = """\
# A Ray cluster on YellowDog. Run `raydog` and `ray` commands from THIS folder: the `file:`
# paths below are relative to the working directory, as Ray's own local paths are.
#
#   raydog validate cluster.yaml     # no credentials needed
#   raydog doctor cluster.yaml       # with the credentials in .env
#   ray up -y cluster.yaml
#   ray down -y cluster.yaml
#
# Everything not written here has a default (docs/configuration.md): the nodes run RayDog's task
# scripts (the head starts Ray with the autoscaler and the dashboard, workers join it).
cluster_name: my-yellowdog-cluster

# The most workers at once, over all node types.
max_workers: 10

# Ray reads these three before RayDog can fill them in. Nodes are set up by their userdata
# below instead, so none are needed.
setup_commands: []
head_setup_commands: []
worker_setup_commands: []

provider:
  type: external
  module: raydog_core.RayDogNodeProvider
  # compute: yellowdog, tag_store: valkey and transport: sshtunnel are the defaults.
  cluster_namespace: my-namespace      # your YellowDog namespace
  cluster_lifetime_hours: 8            # YellowDog ends everything after this, whatever happens

# Ray reaches the head over SSH as this user (the YellowDog agent's). Make the key with
#   mkdir -p -m 700 ~/.ssh && ssh-keygen -t ed25519 -N '' -f ~/.ssh/raydog
# then run `raydog node-setup` again (below) so the nodes accept it.
auth:
  ssh_user: yd-agent
  ssh_private_key: ~/.ssh/raydog

available_node_types:
  head:
    resources: {CPU: 0}                # keep work off the head
    max_workers: 0
    node_config:
      compute_requirement_template: my-namespace/my-head-template
      # The node's setup: `raydog node-setup cluster.yaml --node-type head -o node-setup-head.sh`
      userdata: "file:node-setup-head.sh"
  cpu_worker:
    resources: {CPU: 4}                # what one worker offers; Ray's autoscaler plans with it
    min_workers: 0
    max_workers: 10
    node_config:
      compute_requirement_template: my-namespace/my-worker-template
      # `raydog node-setup cluster.yaml --node-type cpu_worker -o node-setup-worker.sh`
      userdata: "file:node-setup-worker.sh"
head_node_type: head
"""

ENV_TEMPLATE = """\
# YellowDog credentials for `ray up` and `raydog doctor`: an application's API key, and the
# platform's URL (https). Fill in the values; keep this file out of version control.
YD_API_KEY_ID=
YD_API_KEY_SECRET=
YD_API_URL=
"""

NODE_SETUP_FILES = {"head": "node-setup-head.sh", "cpu_worker": "node-setup-worker.sh"}
COMPUTES = ("yellowdog", "local")


def planned_files(compute: str) -> dict[str, str | None]:
    """The files ``init`` writes for a compute backend, with their text (None: node setup,
    generated from the config once written)."""
    if compute == "local":
        return {"cluster.yaml": LOCAL_CONFIG}
    return {
        "cluster.yaml": YELLOWDOG_CONFIG,
        **dict.fromkeys(NODE_SETUP_FILES.values()),
        ".env": ENV_TEMPLATE,
    }


def refuse_overwrites(folder: Path, names: list[str]) -> None:
    existing = [name for name in names if (folder / name).exists()]
    if existing:
        raise RayDogError(
            f"{folder}: {', '.join(existing)} already there; nothing written "
            "(move them away or choose another folder)"
        )
