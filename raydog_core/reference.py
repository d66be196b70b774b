"""The generated parts of docs/configuration.md: Ray's top-level keys (which are required and
what RayDog fills in) from ``raydog_core.config``, and the plugin options from the plugins.

Each option is a keyword argument of the plugin's constructor: its name, type and default come
from the signature, its description from a ``- ``name``: text`` line in the constructor's
docstring. A test regenerates the sections and compares, so the reference cannot drift.
Rewrite them with ``python -m raydog_core.reference --write docs/configuration.md``.
"""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import yaml

from raydog_core import config, plugins, task_scripts

BEGIN = "<!-- BEGIN GENERATED: plugin options (python -m raydog_core.reference --write) -->"
END = "<!-- END GENERATED: plugin options -->"
KEYS_BEGIN = "<!-- BEGIN GENERATED: top-level keys (python -m raydog_core.reference --write) -->"
KEYS_END = "<!-- END GENERATED: top-level keys -->"
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


def options_table(kind: plugins.Kind, name: str) -> str:
    plugin = plugins.load(kind, name, f"provider.{kind}")
    hints = plugins.type_hints(plugin)
    descriptions = _descriptions(plugin)
    rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for option, param in plugins.option_names(plugin).items():
        default = "required" if param.default is inspect.Parameter.empty else f"`{param.default!r}`"
        kind_name = _type_name(hints.get(option, param.annotation))
        cells = [f"`{option}`", f"`{kind_name}`", default, descriptions.get(option, "")]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if len(rows) == 2:
        return "No options."
    return "\n".join(rows)


def generated_section() -> str:
    parts = [BEGIN, ""]
    for kind in plugins.GROUPS:
        for info in plugins.installed(kind):
            if info.distribution != "raydog":
                continue
            parts += [f"### {kind} `{info.name}`", "", options_table(kind, info.name), ""]
    parts.append(END)
    return "\n".join(parts)


def _shown_default(value: object) -> str:
    if value == [task_scripts.WAIT_FOR_HEAD_RAY]:
        return "a wait until the head's task script has started Ray"
    return f"`{yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}`"


def top_level_keys() -> str:
    rows = [KEYS_BEGIN, "", "| key | required | when left out |", "|---|---|---|"]
    for key, example in config.RAY_REQUIRED.items():
        rows.append(f"| `{key}` | yes | Ray reads it before any provider code: write `{example}` |")
    for key, value in config.TOP_LEVEL_DEFAULTS.items():
        rows.append(f"| `{key}` | no | {_shown_default(value)} |")
    for key, value in config.NODE_TYPE_DEFAULTS.items():
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="rewrite the generated sections of this file")
    args = parser.parse_args()
    if args.write:
        args.write.write_text(rewrite(args.write.read_text()))
    else:
        print(top_level_keys())
        print()
        print(generated_section())


if __name__ == "__main__":
    main()
