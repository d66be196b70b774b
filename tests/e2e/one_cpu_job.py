"""A job of three 1-CPU tasks (yellowdog-ray's example worker type offers 1 CPU): on a cluster
whose head offers none, each runs on a worker the autoscaler launches. Prints where they ran."""

import json
import time

import ray

ray.init()
head_ip = ray.util.get_node_ip_address()


@ray.remote(num_cpus=1)
def where() -> str:
    time.sleep(1)
    return ray.util.get_node_ip_address()


tasks = ray.get([where.remote() for _ in range(3)])
print("RAN_ON " + json.dumps({"head": head_ip, "tasks": tasks}), flush=True)
