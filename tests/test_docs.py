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
