"""The e2e job: needs more CPUs than the head offers, so Ray's autoscaler must add workers.

Prints when the first worker joined (the wall clock, to compare with the submission's) and where
its tasks ran.
"""

import json
import time

import ray

ray.init()
head_ip = ray.util.get_node_ip_address()


@ray.remote(num_cpus=2)
def where() -> str:
    time.sleep(1)
    return ray.util.get_node_ip_address()


refs = [where.remote() for _ in range(3)]
while not any(node["Alive"] and node["NodeManagerAddress"] != head_ip for node in ray.nodes()):
    time.sleep(0.2)
print(f"FIRST_WORKER_JOINED {time.time():.3f}", flush=True)
print("RAN_ON " + json.dumps({"head": head_ip, "tasks": ray.get(refs)}), flush=True)
