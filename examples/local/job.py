"""A job that needs more CPUs than the head offers: Ray's autoscaler adds workers for it.

ray submit examples/local/cluster.yaml examples/local/job.py
"""

import collections
import socket

import ray

ray.init()


@ray.remote(num_cpus=2)
def where() -> str:
    """Runs on a node with 2 free CPUs; the head has 1, so only on a worker."""
    return ray.util.get_node_ip_address()


nodes = collections.Counter(ray.get([where.remote() for _ in range(4)]))
print(f"job ran on {dict(nodes)} (driver on {socket.gethostname()})")
print("JOB DONE")
