"""The documentation says what the code does."""

from __future__ import annotations

from pathlib import Path

from raydog_core import config as raydog_config
from raydog_core import reference

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_plugin_option_tables_match_the_plugins() -> None:
    document = (DOCS / "configuration.md").read_text()
    assert reference.rewrite(document) == document, (
        "docs/configuration.md is out of date: "
        "python -m raydog_core.reference --write docs/configuration.md"
    )


def test_every_provider_key_and_ray_default_is_documented() -> None:
    document = (DOCS / "configuration.md").read_text()
    documented = raydog_config.CORE_KEYS - {
        raydog_config.NORMALIZED_KEY,
        raydog_config.ON_HEAD_KEY,
        "auth",
    }
    for key in sorted(
        documented | set(raydog_config.RAY_REQUIRED) | set(raydog_config.TOP_LEVEL_DEFAULTS)
    ):
        assert f"`{key}`" in document or f"\n{key}:" in document, f"{key} is not documented"


class _Base:
    def __init__(self, cluster_name: str, spec: object, *, size: int = 1, zone: str = "a") -> None:
        """- ``size``: how many.
        - ``zone``: where."""


class _Same(_Base):
    pass


class _Different(_Base):
    def __init__(self, cluster_name: str, spec: object, *, size: int = 2, port: int = 0) -> None:
        """- ``size``: how many.
        - ``port``: which port."""


def test_a_subclass_plugin_is_described_by_what_differs_from_its_base() -> None:
    classes = {"base": _Base, "same": _Same, "different": _Different}
    assert reference._nearest_base(_Same, classes) == "base"
    assert reference._nearest_base(_Base, classes) is None
    base_rows = reference._option_rows(_Base)
    same = reference._options_against_base(reference._option_rows(_Same), "base", base_rows)
    assert same == "The same options as `base`."
    different = reference._options_against_base(
        reference._option_rows(_Different), "base", base_rows
    )
    assert different.startswith("The options of `base`, without `zone`; these are new or different")
    assert "| `size` | `int` | `2` | how many. |" in different
    assert "| `port` | `int` | `0` | which port. |" in different
    assert "`zone` |" not in different
