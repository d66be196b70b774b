"""The documentation says what the code does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from raydog_core import config_parsing, ray_defaults, reference

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_plugin_option_tables_match_the_plugins() -> None:
    document = (DOCS / "configuration.md").read_text()
    assert reference.rewrite(document) == document, (
        "docs/configuration.md is out of date: python -m raydog_core.reference --write"
    )


def test_the_reference_is_rewritten_as_its_markers_say(tmp_path: Path) -> None:
    """`python -m raydog_core.reference --write`, as docs/configuration.md says, from the root."""
    (tmp_path / "docs").mkdir()
    stale = (DOCS / "configuration.md").read_text().replace("| `upscaling_speed` |", "| `x` |", 1)
    (tmp_path / "docs" / "configuration.md").write_text(stale)
    result = subprocess.run(
        [sys.executable, "-m", "raydog_core.reference", "--write"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "docs" / "configuration.md").read_text() == (
        DOCS / "configuration.md"
    ).read_text()


def test_every_provider_key_and_ray_default_is_documented() -> None:
    document = (DOCS / "configuration.md").read_text()
    documented = config_parsing.CORE_KEYS - {
        config_parsing.NORMALIZED_KEY,
        config_parsing.ON_HEAD_KEY,
        "auth",
    }
    for key in sorted(
        documented | set(ray_defaults.RAY_REQUIRED) | set(ray_defaults.TOP_LEVEL_DEFAULTS)
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


def test_every_built_in_plugin_is_listed_where_the_docs_list_them() -> None:
    """The tables of built-in plugins (README, docs/plugins.md) name what `raydog plugins` shows."""
    from raydog_core import plugins

    documents = {"README.md": DOCS.parent / "README.md", "docs/plugins.md": DOCS / "plugins.md"}
    for name, path in documents.items():
        lines = path.read_text().splitlines()
        for kind in plugins.GROUPS:
            row_start = "| " + {"compute": "compute backend"}.get(kind, kind.replace("_", " "))
            (row,) = [line for line in lines if line.startswith(row_start)]
            built_in = [i.name for i in plugins.installed(kind) if i.distribution == "raydog"]
            missing = [plugin for plugin in built_in if f"`{plugin}`" not in row]
            assert not missing, f"{name}: the {kind} row does not list {missing}"


def test_the_readme_names_every_system_package_ci_installs() -> None:
    import re

    ci = (DOCS.parent / ".ci" / "run").read_text()
    packages = re.findall(r"missing\+=\(([\w.-]+)\)", ci)
    assert packages, "no `missing+=(...)` lines in .ci/run"
    develop = (DOCS.parent / "README.md").read_text().split("## Develop", 1)[1]
    assert [p for p in packages if f"`{p}`" not in develop] == []


def test_the_account_walkthrough_is_linked_and_its_links_resolve() -> None:
    """docs/yellowdog-account.md is reachable from the README and the guides, and every relative
    link in it (and in the pages that link to it) names a file and heading that exist."""
    import re

    def anchor(heading: str) -> str:
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    pages = [DOCS / "yellowdog-account.md", DOCS.parent / "README.md", DOCS / "user-guide.md"]
    for page in [*pages[1:], DOCS / "yellowdog.md"]:
        assert "yellowdog-account.md" in page.read_text(), f"{page.name} does not link it"
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target} does not exist"
            if fragment and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", linked.read_text(), re.MULTILINE)
                assert fragment in {anchor(h) for h in headings}, f"{page.name}: {target}"
