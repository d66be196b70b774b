"""Everything the emulated account holds, live and finished, as plain data (``/emulator/state``)."""

from __future__ import annotations

from typing import Any

from yellowdog_client.model import WorkRequirement

from raydog_backends.yellowdog_emulator.records import (
    Account,
    ComputeRecord,
    NodeRecord,
    PoolRecord,
    TaskRecord,
    seconds,
    total,
)


def snapshot(account: Account) -> dict[str, Any]:
    """Callers hold ``account.lock``."""
    return {
        "work_requirements": [_requirement(r) for r in account.requirements.values()],
        "tasks": [_task(t) for t in account.tasks.values()],
        "pools": [_pool(p) for p in account.pools.values()],
        "nodes": [_node(n) for n in account.nodes.values()],
        "compute_requirements": [_compute(c) for c in account.computes.values()],
    }


def _requirement(requirement: WorkRequirement) -> dict[str, Any]:
    return {
        "id": requirement.id,
        "name": requirement.name,
        "namespace": requirement.namespace,
        "tag": requirement.tag,
        "status": str(requirement.status),
        "live": requirement.status is not None and not requirement.status.finished,
        "task_groups": [
            {
                "id": g.id,
                "name": g.name,
                "tag": g.tag,
                "status": str(g.status),
                "worker_tags": g.runSpecification.workerTags or [],
                "task_timeout": total(g.runSpecification.taskTimeout),
                "disable_preallocation": bool(g.runSpecification.disablePreallocation),
            }
            for g in requirement.taskGroups or []
        ],
    }


def _task(task: TaskRecord) -> dict[str, Any]:
    return {
        "id": task.id,
        "name": task.task.name,
        "work_requirement_id": task.requirement_id,
        "task_group_id": task.group_id,
        "status": str(task.status),
        "node_id": task.task.nodeId,
        "worker_id": task.task.workerId,
        "environment": dict(task.task.environment or {}),
        "arguments": list(task.task.arguments or []),
        "task_data": task.task.taskData,
        "errors": [e.error for e in task.task.errors or []],
        "pid": task.process.pid if task.process is not None else None,
        "work_dir": str(task.work_dir) if task.work_dir is not None else None,
    }


def _pool(pool: PoolRecord) -> dict[str, Any]:
    properties = pool.properties
    return {
        "id": pool.pool.id,
        "name": pool.pool.name,
        "namespace": pool.pool.namespace,
        "status": str(pool.pool.status),
        "live": pool.live,
        "target": pool.pool.expectedNodeCount,
        "max_nodes": properties.maxNodes,
        "limit": pool.max_nodes,
        "compute_requirement_id": pool.pool.computeRequirementId,
        "worker_tag": properties.workerTag,
        "template_id": pool.usage.templateId,
        "images_id": pool.usage.imagesId,
        "user_data": pool.usage.userData,
        "requirement_tag": pool.usage.requirementTag,
        "instance_tags": dict(pool.usage.instanceTags or {}),
        "metrics_enabled": properties.metricsEnabled,
        "idle_node_shutdown": seconds(properties.idleNodeShutdown),
        "idle_pool_shutdown": seconds(properties.idlePoolShutdown),
    }


def _node(node: NodeRecord) -> dict[str, Any]:
    details = node.node.details
    return {
        "id": node.id,
        "pool_id": node.pool_id,
        "status": str(node.node.status) if node.registered else "BOOTING",
        "live": node.alive,
        "orphaned": node.orphaned,
        "setup_done": node.setup_done,
        "instance_id": node.instance_id,
        "private_ip": node.private_ip,
        "public_ip": details.publicIpAddress if details else None,
        "instance_public_ip": node.public_ip,
        "task_id": node.task_id,
        "queued_task_ids": list(node.queue),
    }


def _compute(compute: ComputeRecord) -> dict[str, Any]:
    requirement = compute.requirement
    status = requirement.status
    return {
        "id": compute.id,
        "name": requirement.name,
        "namespace": requirement.namespace,
        "pool_id": compute.pool_id,
        "status": str(status),
        "live": status is not None and status.name != "TERMINATED",
        "failure": compute.failure,
        "auto_shutdown": seconds(requirement.autoShutdown),
        "instances": [
            {
                "id": instance.id.instanceId if instance.id else None,
                "status": str(instance.status),
                "live": instance.status is not None and instance.status.alive,
                "private_ip": instance.privateIpAddress,
                "public_ip": instance.publicIpAddress,
            }
            for instance in compute.instances.values()
        ],
    }
