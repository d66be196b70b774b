"""Reading a cluster config nobody checked yet: YAML, and the shape of what it holds.

A config comes from a user (or from someone who handed it to one), so reading it must end, and
end in a ConfigError: a list nested hundreds deep would end every recursive walk (Ray's, PyYAML's,
``copy.deepcopy``) in a RecursionError; a few hundred bytes of YAML aliases, each naming the one
before several times, expand to billions of values for whoever walks them (a "billion laughs");
an integer of 400 digits or ``1.0e+308`` overflows where it is turned into a time or a float; a
lone surrogate (``"\\ud800"``) cannot be written as UTF-8 anywhere it goes.

``load_yaml`` is the one loader of user YAML: it refuses deep nesting while it reads, and alias
expansion beyond ``MAX_EXPANSION`` times the text's size before anything is built from it.
``problems`` checks a loaded config's shape, however it was loaded (Ray loads the YAML itself for
``ray up``): depth, size, text keys, encodable text and numbers in range.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from raydog_core.errors import ConfigError, raise_together

MAX_DEPTH = 32
"""Nesting levels a config may use (Ray's own keys need fewer than ten)."""
MAX_EXPANSION = 10
"""How many times its text's size a YAML config may grow to once its aliases are expanded."""
MAX_VALUES = 100_000
"""Values a loaded config may hold, aliases expanded (a large cluster config holds a thousand)."""
MAX_NUMBER = 2**63 - 1
"""Numbers beyond a signed 64-bit integer fit no setting of Ray's or RayDog's."""


def load_yaml(text: str, source: str) -> Any:
    """The YAML document in ``text``; a ConfigError naming ``source`` when it cannot be read,
    nests too deep or expands too far, or holds what no setting can take (``problems``)."""
    import yaml

    try:
        loaded = _compose_and_build(text, source)
    except yaml.YAMLError as exc:
        raise ConfigError(source, f"not valid YAML: {_encodable(str(exc))}") from None
    except ValueError as exc:  # characters YAML does not allow, an integer of 4,300+ digits
        if "integer string conversion" in str(exc):
            raise ConfigError(source, "holds an integer of thousands of digits") from None
        raise ConfigError(source, f"not valid YAML: {_encodable(str(exc))}") from None
    raise_together(problems(loaded))
    return loaded


def _compose_and_build(text: str, source: str) -> Any:
    loader = _loader_class()(text)  # its reader refuses characters YAML does not allow
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, len(text.encode("utf-8", "surrogatepass")), source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def problems(config: Any) -> list[ConfigError]:
    """What no check further on can read safely: nesting beyond ``MAX_DEPTH``, more than
    ``MAX_VALUES`` values, keys that are not text, text UTF-8 cannot hold, numbers out of range.

    Walks without recursion and stops at the first limit reached, so any object ends quickly.
    """
    found: list[ConfigError] = []
    for count, (path, depth, key, value) in enumerate(_walk(config)):
        if count >= MAX_VALUES:
            return [
                ConfigError(
                    "(cluster config)",
                    f"holds more than {MAX_VALUES} values (YAML aliases expanded?): "
                    "no cluster config needs that many",
                )
            ]
        if depth > MAX_DEPTH:
            return [
                ConfigError(
                    path or "(top level)",
                    f"nested more than {MAX_DEPTH} levels deep: no setting needs that many",
                )
            ]
        if key is not None and not isinstance(key, str):
            found.append(ConfigError(path, f"a key must be text, got {_shown(key)}: quote it"))
        problem = _value_problem(key, value)
        if problem:
            found.append(ConfigError(path or "(top level)", problem))
    return found


def key_path(where: str, key: object) -> str:
    """``where.key`` as a printable key path (a key may hold a newline or a lone surrogate)."""
    text = _printable(str(key))
    return f"{where}.{text}" if where else text


def _walk(config: Any) -> Iterator[tuple[str, int, object, Any]]:
    """Every key and value, depth first: (key path, depth, the key or None, the value)."""
    stack: list[tuple[str, int, object, Any]] = [("", 0, None, config)]
    while stack:
        path, depth, key, value = stack.pop()
        yield path, depth, key, value
        if depth > MAX_DEPTH:
            continue
        if isinstance(value, Mapping):
            children = [(key_path(path, k), depth + 1, k, v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            children = [(f"{path}[{i}]", depth + 1, None, v) for i, v in enumerate(value)]
        else:
            continue
        stack.extend(reversed(children))


def _value_problem(key: object, value: Any) -> str | None:
    if isinstance(key, str) and _unencodable(key):
        return "the key holds a lone surrogate (such as \\ud800), which UTF-8 cannot hold"
    if isinstance(value, str) and _unencodable(value):
        return "holds a lone surrogate (such as \\ud800), which UTF-8 cannot hold: remove it"
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and abs(value) > MAX_NUMBER:
        return (
            f"a number of {len(str(abs(value)))} digits is out of range for every setting "
            f"(at most {MAX_NUMBER})"
        )
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a number, got {value!r}, which no setting can use"
    if isinstance(value, float) and abs(value) > MAX_NUMBER:
        return f"{value!r} is out of range for every setting (at most {MAX_NUMBER})"
    return None


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _encodable(text: str) -> str:
    """Text UTF-8 can hold: lone surrogates as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _printable(text: str) -> str:
    """Text safe to print: newlines and lone surrogates as escapes."""
    if text.isprintable() and not _unencodable(text):
        return text
    return text.encode("unicode_escape", "backslashreplace").decode("ascii")


def _shown(value: object) -> str:
    text = _printable(repr(value))
    return f"{type(value).__name__} {text[:57] + '...' if len(text) > 60 else text}"


def _check_expansion(root: Any, text_size: int, source: str) -> None:
    """Refuse a document whose aliases expand it beyond ``MAX_EXPANSION`` times its text.

    Measured on PyYAML's node graph before anything is built: each node counts once for every
    path that reaches it (a scalar by its length), memoised per node, so the measure itself is
    linear in the text; a node that contains itself is refused too.
    """
    import yaml

    limit = MAX_EXPANSION * max(text_size, 1)
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            if id(node) in open_nodes:
                raise ConfigError(source, "a YAML alias refers to a value that contains it")
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(id(node))
        own = len(node.value) + 1 if isinstance(node, yaml.ScalarNode) else 1
        sizes[id(node)] = own + sum(sizes[id(child)] for child in children)
        if sizes[id(node)] > limit:
            raise ConfigError(
                source,
                f"its YAML aliases expand it to more than {MAX_EXPANSION} times its size: "
                "write the values out, or use fewer aliases of aliases",
            )


def _children(node: Any) -> list[Any]:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _loader_class() -> type:
    """PyYAML's safe loader, refusing nesting beyond ``MAX_DEPTH`` as it composes (its
    composer recurses once per level, so a deeper document would end in a RecursionError)."""
    import yaml

    class DepthLimitedLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.depth >= MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_DEPTH} levels deep: no setting needs that many",
                    mark,
                )
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return DepthLimitedLoader
