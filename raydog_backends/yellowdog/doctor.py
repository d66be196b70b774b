"""What ``raydog doctor`` reads of the account besides the cluster: limits and templates that
would stop the cluster from scaling or from being reached, found before ``ray up`` bills.

- A namespace policy can cap the nodes its pools autoscale to (``NamespacePolicy.
  autoscalingMaxNodes``, SDK; yellowdog-cli README, "Namespace Policies"): below what the config
  may run, Ray asks for workers the platform never boots.
- A compute source may assign no public IP (``assignPublicIp`` defaults to false in the SDK's
  cloud source models): Ray then cannot reach the head from outside its network.
"""

from __future__ import annotations

from yellowdog_client.model import ComputeSource

from raydog_backends.yellowdog.api import API_ERRORS, Api, is_refusal, reason
from raydog_backends.yellowdog.options import Options
from raydog_core.interfaces import Check


def namespace_cap(api: Api, options: Options) -> Check | None:
    """A failing check if the namespace's policy caps autoscaling below the cluster's size;
    None if it has no policy or a cap large enough."""
    namespace = options.namespace
    try:
        policy = api.sdk.namespaces_client.get_namespace_policy(namespace)
    except API_ERRORS as exc:
        if is_refusal(exc):
            return None  # no policy: no cap
        return Check("yellowdog namespace policy", False, f"{namespace}: {reason(exc)}")
    cap = policy.autoscalingMaxNodes
    most = sum(node_type.max_nodes for node_type in options.node_types.values())
    if cap is None or cap >= most:
        return None
    return Check(
        "yellowdog namespace policy",
        False,
        f"namespace {namespace} lets its pools autoscale to at most {cap} node(s) (its policy's "
        f"autoscalingMaxNodes), fewer than the {most} this config may run (the head and "
        f"available_node_types.*.max_workers): Ray would wait for workers that never boot",
        f"raise the policy's autoscalingMaxNodes to {most} or more, or lower max_workers",
    )


def templates_without_public_ip(api: Api, options: Options) -> list[Check]:
    """A failing check per compute requirement template none of whose sources assigns a public
    IP. Only static templates list their sources; a source model without ``assignPublicIp``
    (e.g. the simulator's) says nothing either way."""
    by_template: dict[str, list[str]] = {}
    for name, node_type in options.node_types.items():
        by_template.setdefault(node_type.template, []).append(name)
    checks = []
    for template, node_types in by_template.items():
        try:
            sources = _sources(api, template)
        except API_ERRORS as exc:
            checks.append(
                Check(
                    "yellowdog template",
                    False,
                    f"compute requirement template {template}: {reason(exc)}",
                    "check compute_requirement_template of node type(s) " + ", ".join(node_types),
                )
            )
            continue
        assigns = [getattr(s, "assignPublicIp", None) for s in sources]
        if assigns and all(a is False for a in assigns):
            checks.append(
                Check(
                    "yellowdog public IP",
                    False,
                    f"the compute sources of compute requirement template {template} (node "
                    f"type(s) {', '.join(node_types)}) assign no public IP (assignPublicIp), so "
                    "Ray cannot reach the head from outside their network",
                    "from inside that network, set `use_internal_ips: true` under `provider` "
                    "(with `transport: direct`); from outside, use a template whose sources "
                    "assign public IPs",
                )
            )
    return checks


def _sources(api: Api, template_id: str) -> list[ComputeSource]:
    compute = api.sdk.compute_client
    template = compute.get_compute_requirement_template_by_id(template_id)
    usages = getattr(template, "sources", None) or []
    return [compute.get_compute_source_template(u.sourceTemplateId).source for u in usages]
