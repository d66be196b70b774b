"""A job of one 2-CPU task: on a cluster whose head offers no CPU, it runs on a worker the
autoscaler launches. Prints where it ran: the node's address and RayDog's node type there."""

import json
import os

import ray

ray.init()
head_ip = ray.util.get_node_ip_address()


@ray.remote(num_cpus=2)
def where() -> dict[str, str | None]:
    return {"ip": ray.util.get_node_ip_address(), "node_type": os.environ.get("RAYDOG_NODE_TYPE")}


print("RAN_ON " + json.dumps({"head": head_ip, "tasks": [ray.get(where.remote())]}), flush=True)
