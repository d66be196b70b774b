"""The plugin options part of docs/configuration.md, generated from the plugins themselves.

Each option is a keyword argument of the plugin's constructor: its name, type and default come
from the signature, its description from a ``- ``name``: text`` line in the constructor's
docstring. A test regenerates the section and compares, so the reference cannot drift.
Rewrite it with ``python -m raydog_core.reference --write docs/configuration.md``.
"""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

from raydog_core import plugins

BEGIN = "<!-- BEGIN GENERATED: plugin options (python -m raydog_core.reference --write) -->"
END = "<!-- END GENERATED: plugin options -->"
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


def rewrite(document: str) -> str:
    start, end = document.index(BEGIN), document.index(END) + len(END)
    return document[:start] + generated_section() + document[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="rewrite the generated section of this file")
    args = parser.parse_args()
    if args.write:
        args.write.write_text(rewrite(args.write.read_text()))
    else:
        print(generated_section())


if __name__ == "__main__":
    main()
