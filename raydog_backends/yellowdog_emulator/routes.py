"""The REST subset of YellowDog the emulator serves: method, path pattern, and what it does.

Paths and JSON are the SDK's own (``yellowdog_client``'s service proxies: ``/work/``,
``/workerPools/``, ``/compute/``, ``/namespaces/``). The first pattern that matches a request's
path wins, so the more specific ones come first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from yellowdog_client.common.json import Json
from yellowdog_client.model import AutoShutdown, Task, WorkRequirement

from raydog_backends.yellowdog_emulator.platform import Platform
from raydog_backends.yellowdog_emulator.records import Query

Handler = Callable[[Platform, dict[str, str], Query, Any], Any]
ID = r"(?P<id>[^/]+)"
NS_NAME = r"(?P<ns>[^/]+)/requirements/(?P<name>[^/]+)"


def _flag(query: Query, key: str) -> bool:
    return (query.get(key) or ["false"])[0].lower() == "true"


def _tasks(body: Any) -> list[Task]:
    return [Json.load(item, Task) for item in body]


_TABLE: list[tuple[str, str, Handler]] = [
    # work_client
    ("POST", "/work/requirements", lambda p, m, q, b: p.work.add_work_requirement(
        Json.load(b, WorkRequirement))),
    ("PUT", "/work/requirements", lambda p, m, q, b: p.work.update_work_requirement(
        Json.load(b, WorkRequirement))),
    ("GET", "/work/requirements", lambda p, m, q, b: p.work.find_work_requirements(q)),
    ("GET", f"/work/requirements/{ID}", lambda p, m, q, b: p.work.get_work_requirement(m["id"])),
    ("PUT", f"/work/requirements/{ID}/transition/(?P<status>[A-Z_]+)",
        lambda p, m, q, b: p.work.transition_work_requirement(
            m["id"], m["status"], _flag(q, "abort"))),
    ("GET", f"/work/namespaces/{NS_NAME}",
        lambda p, m, q, b: p.work.get_work_requirement_by_name(m["ns"], m["name"])),
    ("POST", f"/work/namespaces/{NS_NAME}/taskGroups/(?P<group>[^/]+)/tasks",
        lambda p, m, q, b: p.work.add_tasks_by_name(m["ns"], m["name"], m["group"], _tasks(b))),
    ("POST", f"/work/taskGroups/{ID}/tasks", lambda p, m, q, b: p.work.add_tasks(
        m["id"], _tasks(b))),
    ("GET", "/work/tasks", lambda p, m, q, b: p.work.find_tasks(q)),
    ("GET", f"/work/tasks/{ID}", lambda p, m, q, b: p.work.get_task(m["id"])),
    ("PUT", f"/work/tasks/{ID}/cancel", lambda p, m, q, b: p.work.cancel_task(
        m["id"], _flag(q, "abort"))),
    # worker_pool_client
    ("POST", "/workerPools/provisioned/template", lambda p, m, q, b: p.pools.provision_pool(b)),
    ("PUT", f"/workerPools/provisioned/{ID}", lambda p, m, q, b: p.pools.resize_pool(
        m["id"], int((q.get("size") or [""])[0]))),
    ("GET", "/workerPools/nodes", lambda p, m, q, b: p.nodes.find_nodes(q)),
    ("GET", f"/workerPools/nodes/{ID}", lambda p, m, q, b: p.nodes.get_node(m["id"])),
    ("DELETE", f"/workerPools/nodes/{ID}", lambda p, m, q, b: p.nodes.shutdown_node(m["id"])),
    ("GET", f"/workerPools/workers/{ID}/node", lambda p, m, q, b: p.nodes.node_of_worker(
        m["id"])),
    ("GET", "/workerPools/?", lambda p, m, q, b: p.pools.find_pools(q)),
    ("GET", f"/workerPools/{ID}", lambda p, m, q, b: p.pools.get_pool(m["id"])),
    ("GET", "/workerPools/(?P<ns>[^/]+)/(?P<name>[^/]+)",
        lambda p, m, q, b: p.pools.get_pool_by_name(m["ns"], m["name"])),
    ("DELETE", f"/workerPools/{ID}", lambda p, m, q, b: p.pools.shutdown_pool(m["id"])),
    # compute_client
    # compute_client.get_compute_requirement_summaries (GET /compute/requirements?summaries=true)
    ("GET", "/compute/requirements", lambda p, m, q, b: p.compute.search(q)),
    ("GET", f"/compute/requirements/{ID}", lambda p, m, q, b: p.compute.get(m["id"])),
    ("GET", f"/compute/namespaces/{NS_NAME}", lambda p, m, q, b: p.compute.get_by_name(
        m["ns"], m["name"])),
    ("PUT", f"/compute/requirements/{ID}/autoShutdown",
        lambda p, m, q, b: p.compute.update_auto_shutdown(m["id"], Json.load(b, AutoShutdown))),
    ("PUT", f"/compute/requirements/{ID}/transition/(?P<status>[A-Z_]+)",
        lambda p, m, q, b: p.compute.transition(m["id"], m["status"])),
    ("GET", "/compute/instances", lambda p, m, q, b: p.compute.search_instances(q)),
    ("GET", f"/compute/templates/requirements/{ID}", lambda p, m, q, b: p.compute.template(
        m["id"])),
    ("GET", f"/compute/templates/sources/{ID}", lambda p, m, q, b: p.compute.source_template(
        m["id"])),
    # namespaces_client
    ("GET", "/namespaces/(?P<ns>[^/]+)/policy", lambda p, m, q, b: p.pools.namespace_policy(
        m["ns"])),
]  # fmt: skip

ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    (method, re.compile(pattern), handler) for method, pattern, handler in _TABLE
]
