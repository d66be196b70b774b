"""The e2e job: needs more CPUs than the head offers, so Ray's autoscaler must add workers.

Its argument is the CPUs each of its two tasks asks for (default 2; 1 for a worker type that
offers 1 CPU, as yellowdog-ray's example does). Prints when the first worker joined (the wall
clock, to compare with the submission's) and where its tasks ran.
Two tasks, not more: each needs a worker of its own, and every worker costs the e2e tests a Ray
node's start-up (several CPU-seconds); two show the autoscaler launching several at once.
"""

import json
import sys
import time

import ray

CPUS_PER_TASK = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0

ray.init()
head_ip = ray.util.get_node_ip_address()


@ray.remote(num_cpus=CPUS_PER_TASK)
def where() -> str:
    time.sleep(1)
    return ray.util.get_node_ip_address()


refs = [where.remote() for _ in range(2)]
while not any(node["Alive"] and node["NodeManagerAddress"] != head_ip for node in ray.nodes()):
    time.sleep(0.2)
print(f"FIRST_WORKER_JOINED {time.time():.3f}", flush=True)
print("RAN_ON " + json.dumps({"head": head_ip, "tasks": ray.get(refs)}), flush=True)
