"""The YellowDog names of a Ray cluster's objects: lower case, deterministic, traceable.

YellowDog names are lower-case letters, digits, ``-`` and ``_``, start with a letter, end with a
letter or digit, and are at most 60 characters long. Ray's cluster and node type names are freer,
so they are mapped to *slugs*: lower case, with ``.``, ``_``, ``/`` and spaces turned into ``-``.
Slugs never contain ``_``, which is kept as the separator of the parts of a name::

    work requirement    <cluster>_<generation>
    worker pool         <cluster>_<generation>_<node type>_<pool stamp>
    worker tag          <cluster>_<generation>_<node type>
    task group          <node type>_<number>
    task                <cluster>_<node type>_<launch>_<index>
    task tag            ray-<Ray's launch config hash>

The generation is a stamp taken when the cluster's work requirement is made, so a cluster that is
brought down and up again gets fresh names (YellowDog keeps finished objects under their names),
and every object made for a cluster, even by an interrupted ``ray up``, is found by its name.
A task's launch is random, drawn once per launch request, so the tasks of a request whose reply
was lost are recognised by their names (the node type check below keeps every task name within
the 60 characters allowed, as pool names are).

The naming rules cover tags too (yellowdog-cli README, "Naming Rules"). Ray's launch config hash
(52 base32hex characters) often starts with a digit, so a task's tag keeps it behind ``ray-``;
no hash contains ``-``, so a tag written before the prefix existed (the hash alone) reads back
as itself.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from raydog_core.errors import ConfigError, Problems

MAX_LENGTH = 60
STAMP_LENGTH = 7
SEPARATOR = "_"
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
# Used with fullmatch only: ``$`` would also match before a trailing newline.
_NAME = re.compile(r"[a-z]([a-z0-9_-]*[a-z0-9])?")
_SLUG = re.compile(r"[a-z]([a-z0-9-]*[a-z0-9])?")
_STAMP = re.compile(rf"[0-9a-z]{{{STAMP_LENGTH}}}")
_TO_HYPHEN = re.compile(r"[._/\s]")
LAUNCH_TAG_PREFIX = "ray-"
RULE = (
    "lower-case letters, digits, '-' and '_', starting with a letter, ending with a letter or digit"
)


def is_valid_name(name: str) -> bool:
    """Whether YellowDog accepts ``name`` as the name of a namespace, tag or object."""
    return len(name) <= MAX_LENGTH and _NAME.fullmatch(name) is not None


def launch_tag(launch_config: str) -> str | None:
    """A task's tag for Ray's launch config hash (None for none), or ValueError if the hash
    cannot be kept in a tag."""
    if not launch_config:
        return None
    tag = LAUNCH_TAG_PREFIX + launch_config
    if not is_valid_name(tag):
        raise ValueError(
            f"the launch config hash {launch_config!r} cannot be kept in a YellowDog tag as "
            f"{tag!r}: tags are made of {RULE}, at most {MAX_LENGTH} characters"
        )
    return tag


def launch_config_of(tag: str | None) -> str:
    """The launch config hash a task's tag keeps ("" for none)."""
    return (tag or "").removeprefix(LAUNCH_TAG_PREFIX)


def slug(text: str) -> str | None:
    """``text`` as a name part (``Ray.Head_1`` -> ``ray-head-1``), or None if it cannot be one."""
    mapped = _TO_HYPHEN.sub("-", text.lower())
    return mapped if _SLUG.fullmatch(mapped) else None


def launch_id() -> str:
    """7 random base-36 characters: one launch request's tasks, told from every other's."""
    return "".join(secrets.choice(_DIGITS) for _ in range(STAMP_LENGTH))


def stamp(now: float | None = None) -> str:
    """A 7-character base-36 stamp of the time in tenths of a second: sortable, unique enough."""
    value = int((time.time() if now is None else now) * 10)
    digits = ""
    for _ in range(STAMP_LENGTH):
        value, digit = divmod(value, 36)
        digits = _DIGITS[digit] + digits
    return digits


def _node_type_slug(cluster_name: str, cluster: str, node_type: str, owners: dict[str, str]) -> str:
    """A node type's slug, once every name made of it (the worker pool's is the longest) fits
    the platform's limit beside the cluster's; ``owners``: the slugs taken so far."""
    path = f"available_node_types.{node_type}"
    mapped = slug(node_type)
    if mapped is None:
        raise ConfigError(
            path,
            f"the node type name {node_type!r} cannot be a YellowDog name: after lower-casing "
            f"and turning '.', '_', '/' and spaces into '-', it must be made of {RULE}",
        )
    if mapped in owners:
        raise ConfigError(
            path,
            f"node types {owners[mapped]!r} and {node_type!r} both become {mapped!r} "
            "in YellowDog names; rename one",
        )
    owners[mapped] = node_type
    longest = len(cluster) + len(mapped) + 3 + 2 * STAMP_LENGTH
    if longest > MAX_LENGTH:
        raise ConfigError(
            path,
            f"cluster name {cluster_name!r} and node type {node_type!r} make YellowDog worker "
            f"pool names of {longest} characters (`<cluster>_<7-character generation>_<node "
            f"type>_<7-character stamp>`), more than the {MAX_LENGTH} allowed: shorten them by "
            f"{longest - MAX_LENGTH}",
        )
    return mapped


@dataclass(frozen=True)
class ClusterNames:
    """Every YellowDog name of one Ray cluster; ``for_spec`` checks they all can be made."""

    cluster: str
    node_types: Mapping[str, str]
    """Ray node type name -> its slug."""

    @classmethod
    def for_cluster(cls, cluster_name: str, node_types: list[str]) -> ClusterNames:
        cluster = slug(cluster_name)
        if cluster is None:
            raise ConfigError(
                "cluster_name",
                f"{cluster_name!r} cannot be a YellowDog name: after lower-casing and turning "
                f"'.', '_', '/' and spaces into '-', it must be made of {RULE}",
            )
        slugs: dict[str, str] = {}
        owners: dict[str, str] = {}
        problems = Problems()
        for node_type in node_types:
            with problems.collect():
                slugs[node_type] = _node_type_slug(cluster_name, cluster, node_type, owners)
        problems.raise_any()
        return cls(cluster, slugs)

    def work_requirement(self, generation: str) -> str:
        return f"{self.cluster}{SEPARATOR}{generation}"

    def generation_of(self, work_requirement_name: str | None) -> str | None:
        """The generation of one of this cluster's work requirements; None for other names."""
        parts = (work_requirement_name or "").split(SEPARATOR)
        if len(parts) == 2 and parts[0] == self.cluster and _STAMP.fullmatch(parts[1]):
            return parts[1]
        return None

    def worker_tag(self, generation: str, node_type: str) -> str:
        return SEPARATOR.join((self.cluster, generation, self.node_types[node_type]))

    def pool(self, generation: str, node_type: str, pool_stamp: str) -> str:
        return SEPARATOR.join((self.worker_tag(generation, node_type), pool_stamp))

    def parse_pool(self, pool_name: str | None) -> tuple[str, str] | None:
        """``(generation, ray node type)`` of one of this cluster's pools; None for other names."""
        parts = (pool_name or "").split(SEPARATOR)
        if len(parts) != 4 or parts[0] != self.cluster:
            return None
        _, generation, type_slug, pool_stamp = parts
        if not (_STAMP.fullmatch(generation) and _STAMP.fullmatch(pool_stamp)):
            return None
        for node_type, mapped in self.node_types.items():
            if mapped == type_slug:
                return generation, node_type
        return None

    def task_group(self, node_type: str, number: int) -> str:
        return f"{self.node_types[node_type]}{SEPARATOR}{number}"

    def task(self, node_type: str, launch: str, index: int) -> str:
        return SEPARATOR.join((self.cluster, self.node_types[node_type], launch, str(index)))

    def launch_of(self, task_name: str | None) -> str | None:
        """The launch that named one of this cluster's tasks; None for other names."""
        parts = (task_name or "").split(SEPARATOR)
        if len(parts) == 4 and parts[0] == self.cluster and _STAMP.fullmatch(parts[2]):
            return parts[2]
        return None


@dataclass(frozen=True)
class ParsedName:
    """What a RayDog name says of its object, read without the cluster's config."""

    cluster: str
    generation: str
    node_type: str | None
    """The node type's slug (a pool or compute requirement); None for a work requirement."""


def parse_name(name: str | None) -> ParsedName | None:
    """A work requirement's (``<cluster>_<generation>``) or a pool's or its compute
    requirement's (``<cluster>_<generation>_<node type>_<pool stamp>``) name, read; None for
    a name RayDog does not make."""
    parts = (name or "").split(SEPARATOR)
    if len(parts) not in (2, 4) or not all(_SLUG.fullmatch(p) for p in parts[:1] + parts[2:3]):
        return None
    if not all(_STAMP.fullmatch(p) for p in parts[1::2]):
        return None
    return ParsedName(parts[0], parts[1], parts[2] if len(parts) == 4 else None)


def stamp_time(text: str) -> float:
    """The time a :func:`stamp` was taken, in seconds since the epoch."""
    return int(text, 36) / 10
