"""The generated parts of docs/configuration.md: Ray's top-level keys (which are required and
what RayDog fills in) from ``raydog_core.ray_defaults``, and the plugin options from the plugins.

Each option is a keyword argument of the plugin's constructor: its name, type and default come
from the signature, its description from a ``- ``name``: text`` line in the constructor's
docstring. A plugin that subclasses another one listed is described by how its options differ
from that one's ("the same options as ..."), never by a repeated table. A test regenerates the
sections and compares, so the reference cannot drift.
Rewrite them with ``python -m raydog_core.reference --write`` (from the repository's root; or
``--write FILE``).
"""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from raydog_core import plugins, ray_defaults, task_scripts

BEGIN = "<!-- BEGIN GENERATED: plugin options (python -m raydog_core.reference --write) -->"
END = "<!-- END GENERATED: plugin options -->"
KEYS_BEGIN = "<!-- BEGIN GENERATED: top-level keys (python -m raydog_core.reference --write) -->"
KEYS_END = "<!-- END GENERATED: top-level keys -->"
CONFIGURATION_DOC = Path("docs/configuration.md")
_DOC_LINE = re.compile(r"^\s*-\s*``(\w+)``:\s*(.*)$")


def _descriptions(plugin: type) -> dict[str, str]:
    docs: dict[str, str] = {}
    current = None
    for raw in (inspect.getdoc(plugin.__init__) or "").splitlines():  # type: ignore[misc]
        match = _DOC_LINE.match(raw)
        if match:
            current = match.group(1)
            docs[current] = match.group(2).strip()
        elif current and raw.startswith("  ") and raw.strip():
            docs[current] += " " + raw.strip()
        else:
            current = None
    return docs


def _type_name(annotation: object) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _option_rows(plugin: type) -> dict[str, str]:
    """Each option's row of the table, by option name."""
    hints = plugins.type_hints(plugin)
    descriptions = _descriptions(plugin)
    rows: dict[str, str] = {}
    for option, param in plugins.option_names(plugin).items():
        default = "required" if param.default is inspect.Parameter.empty else f"`{param.default!r}`"
        kind_name = _type_name(hints.get(option, param.annotation))
        cells = [f"`{option}`", f"`{kind_name}`", default, descriptions.get(option, "")]
        rows[option] = "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
    return rows


def _table(rows: Mapping[str, str]) -> str:
    if not rows:
        return "No options."
    return "\n".join(["| option | type | default | meaning |", "|---|---|---|---|", *rows.values()])


def options_table(kind: plugins.Kind, name: str) -> str:
    return _table(_option_rows(plugins.load(kind, name, f"provider.{kind}")))


def _options_against_base(rows: Mapping[str, str], base: str, base_rows: Mapping[str, str]) -> str:
    """A subclass plugin's options said as the difference from those of the plugin it extends,
    so that a page never repeats a table (and the reader sees at once what the subclass changes)."""
    if rows == base_rows:
        return f"The same options as `{base}`."
    changed = {option: row for option, row in rows.items() if base_rows.get(option) != row}
    dropped = [f"`{option}`" for option in base_rows if option not in rows]
    text = f"The options of `{base}`"
    if dropped:
        text += ", without " + ", ".join(dropped)
    if not changed:
        return text + "."
    return text + "; these are new or different:\n\n" + _table(changed)


def _nearest_base(plugin: type, others: Mapping[str, type]) -> str | None:
    """The name of the listed plugin that ``plugin`` subclasses most closely, if any."""
    ancestors = plugin.__mro__[1:]
    bases = [name for name, other in others.items() if other in ancestors]
    return min(bases, key=lambda name: ancestors.index(others[name]), default=None)


def generated_section() -> str:
    parts = [BEGIN, ""]
    for kind in plugins.GROUPS:
        names = [info.name for info in plugins.installed(kind) if info.distribution == "raydog"]
        classes = {name: plugins.load(kind, name, f"provider.{kind}") for name in names}
        rows = {name: _option_rows(plugin) for name, plugin in classes.items()}
        for name, plugin in classes.items():
            base = _nearest_base(plugin, classes)
            if base is None:
                text = _table(rows[name])
            else:
                text = _options_against_base(rows[name], base, rows[base])
            parts += [f"### {kind} `{name}`", "", text, ""]
    parts.append(END)
    return "\n".join(parts)


def _shown_default(value: object) -> str:
    if value == [task_scripts.WAIT_FOR_HEAD_RAY]:
        return "a wait until the head's task script has started Ray"
    return f"`{yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}`"


def top_level_keys() -> str:
    rows = [KEYS_BEGIN, "", "| key | required | when left out |", "|---|---|---|"]
    for key, example in ray_defaults.RAY_REQUIRED.items():
        rows.append(f"| `{key}` | yes | Ray reads it before any provider code: write `{example}` |")
    for key, value in ray_defaults.TOP_LEVEL_DEFAULTS.items():
        rows.append(f"| `{key}` | no | {_shown_default(value)} |")
    for key, value in ray_defaults.NODE_TYPE_DEFAULTS.items():
        rows.append(f"| `available_node_types.*.{key}` | no | {_shown_default(value)} |")
    rows += ["", KEYS_END]
    return "\n".join(rows)


def rewrite(document: str) -> str:
    for begin, end, text in (
        (KEYS_BEGIN, KEYS_END, top_level_keys()),
        (BEGIN, END, generated_section()),
    ):
        start, stop = document.index(begin), document.index(end) + len(end)
        document = document[:start] + text + document[stop:]
    return document


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--write",
        type=Path,
        nargs="?",
        const=CONFIGURATION_DOC,
        metavar="FILE",
        help=f"rewrite the generated sections of FILE (default: {CONFIGURATION_DOC}, from the "
        "repository's root)",
    )
    args = parser.parse_args(argv)
    if args.write:
        try:
            text = args.write.read_text()
        except OSError as exc:
            parser.error(
                f"cannot read {args.write}: {exc.strerror} (run it from the repository's root)"
            )
        args.write.write_text(rewrite(text))
        print(f"rewrote the generated sections of {args.write}")
    else:
        print(top_level_keys())
        print()
        print(generated_section())


if __name__ == "__main__":
    main()
