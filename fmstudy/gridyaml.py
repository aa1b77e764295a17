"""Reading a grid file's YAML with bounds, so a hostile or mistaken file is refused in one line
before anything is built from it.

``yaml.safe_load`` never runs code (``!!python/...`` tags are refused) but has three traps:

- aliases: ``&a`` / ``*a`` share one object, so a few lines can stand for a tree of 10^9 nodes
  that only explodes later, when the runner walks it (a JSON dump for a cell id, a message).
  :func:`expanded_size` counts the nodes of the expanded tree on the shared graph (each shared
  object once, memoised), so the count costs the size of the file, not of the expansion;
- duplicate keys: silently the last one wins (even a second top-level ``axes``);
- YAML 1.1 floats: ``1e-3`` (no dot) is a string; :func:`float_hint` says so in a message.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["MAX_FILE_BYTES", "MAX_NODES", "expanded_size", "float_hint", "load_yaml", "short"]

MAX_FILE_BYTES = 1_000_000  # a grid file is a page of text; 1 MB is far beyond any real one
MAX_NODES = 200_000  # nodes of the expanded tree (the full profile has a few thousand)
MAX_ECHO = 80  # characters of a value quoted in a message


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing a mapping that names one key twice (merge keys ``<<`` aside)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {short(key_node.value)!s} (line {key_node.start_mark.line + 1}): each key once",
                        key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Loader.construct_mapping)


def short(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr(value)`` cut to ``limit`` characters (a message must stay one short line)."""
    if isinstance(value, (list, dict)):
        try:
            expanded_size(value, 4 * limit)
        except (ValueError, RecursionError):
            return f"<a {type(value).__name__} too large to show>"
    try:
        text = repr(value)
    except ValueError:  # an integer of more digits than Python converts
        return f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def expanded_size(obj: Any, limit: int = MAX_NODES) -> int:
    """Nodes of ``obj`` with every shared (aliased) object counted as often as it is reached,
    computed once per shared object; raises ValueError past ``limit`` or on a cycle."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(o: Any) -> int:
        if not isinstance(o, (list, dict)):
            return 1 + (len(o) // 64 if isinstance(o, str) else 0)  # a long string weighs like several nodes
        key = id(o)
        if key in memo:
            return memo[key]
        if key in active:
            raise ValueError("a YAML alias refers to itself (a recursive structure)")
        active.add(key)
        items = [*o.keys(), *o.values()] if isinstance(o, dict) else o
        n = 1
        for item in items:
            n += size(item)
            if n > limit:
                raise ValueError(f"more than {limit} values once its aliases are expanded")
        active.discard(key)
        memo[key] = n
        return n

    return size(obj)


def load_yaml(text: str) -> Any:
    """Parse ``text`` with the checks above; raises ValueError (one line) or yaml.YAMLError."""
    try:
        spec = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except RecursionError:
        raise ValueError("nested too deeply") from None
    try:
        expanded_size(spec)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return spec


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def float_hint(value: Any) -> str:
    """A hint when ``value`` is a string that reads as a number (YAML 1.1 reads ``1e-3`` as text)."""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return f" (YAML reads {short(value)} as text: write it with a dot and a signed exponent, e.g. 1.0e-3, or as 0.001)"
    return ""
