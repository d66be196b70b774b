"""The ``/compute/`` API: compute requirements (one per provisioned pool) and their instances.

Where a node's public address is found since the platform stopped filling
``Node.details.publicIpAddress``: the instance whose ``id.instanceId`` is the node's
``details.instanceId``, among ``compute_client.get_instances(InstanceSearch(
computeRequirementId=pool.computeRequirementId))`` (yellowdog-ray commit 54e2599).
"""

from __future__ import annotations

import logging

from yellowdog_client.model import (
    AutoShutdown,
    AwsInstancesComputeSource,
    ComputeRequirement,
    ComputeRequirementStaticTemplate,
    ComputeRequirementStatus,
    ComputeRequirementSummary,
    ComputeSourceTemplate,
    ComputeSourceUsage,
    Instance,
    Slice,
)

from raydog_backends.yellowdog_emulator.pools import Pools
from raydog_backends.yellowdog_emulator.records import (
    Account,
    ApiError,
    ComputeRecord,
    Query,
    many,
    one,
    page,
)

logger = logging.getLogger(__name__)


SOURCE_SUFFIX = ":source"
"""A template's one compute source template is its id plus this."""


class Compute:
    """Compute requirements and instances. Callers hold ``account.lock``."""

    def __init__(self, account: Account, pools: Pools) -> None:
        self.account = account
        self.pools = pools

    def get(self, requirement_id: str) -> ComputeRequirement:
        return self._record(requirement_id).requirement

    def get_by_name(self, namespace: str, name: str) -> ComputeRequirement:
        matching = [
            c.requirement
            for c in self.account.computes.values()
            if c.requirement.namespace == namespace and c.requirement.name == name
        ]
        if not matching:
            raise ApiError(404, f"no compute requirement {namespace}/{name}")
        return matching[-1]

    def search(self, query: Query) -> Slice[ComputeRequirementSummary]:
        """Compute requirements by namespace, name, tag and status, as summaries."""
        namespaces = many(query, "namespaces") or many(query, "namespace")
        name, tag, statuses = one(query, "name"), one(query, "tag"), many(query, "statuses")
        found = [
            self._summary(c)
            for c in self.account.computes.values()
            if (namespaces is None or c.requirement.namespace in namespaces)
            and (name is None or c.requirement.name == name)
            and (tag is None or c.requirement.tag == tag)
            and (statuses is None or str(c.requirement.status) in statuses)
        ]
        return page(found, query, self.account.config.slice_size)

    def _summary(self, compute: ComputeRecord) -> ComputeRequirementSummary:
        requirement = compute.requirement
        return ComputeRequirementSummary(
            id=requirement.id,
            namespace=requirement.namespace,
            name=requirement.name,
            tag=requirement.tag,
            targetInstanceCount=requirement.targetInstanceCount,
            expectedInstanceCount=requirement.expectedInstanceCount,
            aliveInstanceCount=sum(
                i.status is not None and i.status.alive for i in compute.instances.values()
            ),
            createdTime=requirement.createdTime,
            statusChangedTime=requirement.statusChangedTime,
            status=requirement.status,
            healthy=compute.failure is None,
        )

    def transition(self, requirement_id: str, status: str) -> ComputeRequirement:
        """``terminate_compute_requirement_by_id``: every instance stops at once, booting ones
        included (yellowdog-cli README: ``--terminate`` "immediately terminate")."""
        compute = self._record(requirement_id)
        if status != ComputeRequirementStatus.TERMINATED.value:
            raise ApiError(400, f"the emulator only terminates compute requirements, not {status}")
        if compute.requirement.status is not ComputeRequirementStatus.TERMINATED:
            self.pools.terminate(compute)
        return compute.requirement

    def search_instances(self, query: Query) -> Slice[Instance]:
        requirement_id, statuses = one(query, "computeRequirementId"), many(query, "statuses")
        found = [
            instance
            for compute in self.account.computes.values()
            if requirement_id is None or compute.id == requirement_id
            for instance in compute.instances.values()
            if statuses is None or str(instance.status) in statuses
        ]
        return page(found, query, self.account.config.slice_size)

    def update_auto_shutdown(
        self, requirement_id: str, shutdown: AutoShutdown
    ) -> ComputeRequirement:
        """``compute_client.update_compute_requirement_auto_shutdown``: replaced, its timeout
        restarted from now (the SDK's docstring)."""
        compute = self._record(requirement_id)
        if compute.requirement.status is ComputeRequirementStatus.TERMINATED:
            raise ApiError(400, f"compute requirement {compute.requirement.name} is terminated")
        self.account.schedule_auto_shutdown(compute, shutdown)
        return compute.requirement

    def advance(self, now: float) -> None:
        """Compute requirements whose auto shutdown is due are terminated, instances and all."""
        for compute in list(self.account.computes.values()):
            due = compute.auto_shutdown_at is not None and now >= compute.auto_shutdown_at
            if due and compute.requirement.status is not ComputeRequirementStatus.TERMINATED:
                logger.info(
                    "emulator: %s shuts down, its autoShutdown due", compute.requirement.name
                )
                compute.auto_shutdown_at = None
                self.pools.terminate(compute)

    def template(self, template_id: str) -> ComputeRequirementStaticTemplate:
        """``compute_client.get_compute_requirement_template_by_id``: one source, whose
        template says whether it assigns public IPs."""
        self._check_template(template_id)
        return ComputeRequirementStaticTemplate(
            name=template_id.rsplit(":", 1)[-1],
            strategyType="co.yellowdog.platform.model.SingleSourceProvisionStrategy",
            sources=[ComputeSourceUsage(sourceTemplateId=f"{template_id}{SOURCE_SUFFIX}")],
        )

    def source_template(self, source_id: str) -> ComputeSourceTemplate:
        """``compute_client.get_compute_source_template``: an AWS source (the emulator's
        stand-in for a cloud source) whose ``assignPublicIp`` is false for the templates named
        in ``no_public_ip_templates`` (the SDK's default is false)."""
        if not source_id.endswith(SOURCE_SUFFIX):
            raise ApiError(404, f"no compute source template {source_id}")
        template_id = source_id.removesuffix(SOURCE_SUFFIX)
        self._check_template(template_id)
        assigns = template_id not in self.account.config.no_public_ip_templates
        source = AwsInstancesComputeSource(
            name="emulated",
            credential="emulated",
            region="emulated",
            securityGroupId="emulated",
            instanceType="emulated",
            imageId="emulated",
            assignPublicIp=assigns,
        )
        return ComputeSourceTemplate(source=source)

    def _check_template(self, template_id: str) -> None:
        templates = self.account.config.templates
        if templates is not None and template_id not in templates:
            raise ApiError(404, f"no compute requirement template {template_id!r}")

    def fail_provisioning(self, template_id: str | None, reason: str) -> None:
        """From now on, provisioning from ``template_id`` (None: any template) fails."""
        self.account.provisioning_failures[template_id] = reason

    def _record(self, requirement_id: str) -> ComputeRecord:
        found = self.account.computes.get(requirement_id)
        if found is None:
            raise ApiError(404, f"no compute requirement {requirement_id}")
        return found
