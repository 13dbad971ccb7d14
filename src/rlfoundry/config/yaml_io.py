"""Reading YAML configs and override values safely.

A ``yaml.SafeLoader`` that also

* reads ``1e-5`` (no dot) as a float, as people write learning rates;
* rejects a key written twice in one mapping, naming both lines (PyYAML keeps the last one
  silently); ``<<: *defaults`` merges stay allowed, and explicit keys override merged ones;
* rejects alias expansion beyond :data:`MAX_ALIAS_NODES` values or :data:`MAX_ALIAS_CHARS`
  characters ("billion laughs": a 1 KB file of nested ``&a``/``*a`` stands for billions of
  values, and one long string aliased a thousand times for gigabytes, which every later copy,
  validation, error message and checkpoint would expand) and self-referencing aliases;
* turns undecodable bytes and nesting too deep to parse into :class:`ConfigError` naming the
  file and line.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from rlfoundry.errors import ConfigError
from rlfoundry.safe_text import clip, escape_control

MAX_ALIAS_NODES = 10_000  # values that aliases may add to a document beyond its own nodes
MAX_ALIAS_CHARS = 1_000_000  # characters of scalars that aliases may add
MAX_CONFIG_BYTES = 50 * 2**20


class ConfigYAMLError(yaml.YAMLError):
    """A problem found while composing a document (duplicate key, alias expansion)."""


class _Loader(yaml.SafeLoader):
    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], Node] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            ident = (key.tag, key.value)
            if ident in seen:
                raise ConfigYAMLError(
                    f"{_where(key)}: key '{clip(escape_control(key.value), 80)}' is written twice in "
                    f"one mapping (first at line {seen[ident].start_mark.line + 1}); keep one")
            seen[ident] = key
        return node

    def compose_document(self) -> Node:
        node = super().compose_document()
        _check_expansion(node)
        return node

    def construct_yaml_int(self, node: Node) -> int:
        # Python refuses to convert integers of more than 4,300 digits (a raw ValueError)
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise ConfigYAMLError(
                f"{_where(node)}: the integer of {len(str(node.value)):,} characters is too large "
                f"to read; no setting needs more than 19 digits") from None


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _where(node: Node) -> str:
    mark = node.start_mark
    return f"{mark.name}:{mark.line + 1}"


def _check_expansion(root: Node) -> None:
    """Count the values and the scalar characters the document stands for with every alias
    expanded (memoised per node, so the count costs one pass over the distinct nodes); raise
    when aliases add more than :data:`MAX_ALIAS_NODES` values or :data:`MAX_ALIAS_CHARS`
    characters, or when a node contains itself."""
    expanded: dict[int, tuple[int, int]] = {}
    active: set[int] = set()

    def size(node: Node) -> tuple[int, int]:
        key = id(node)
        if key in expanded:
            return expanded[key]
        if key in active:
            raise ConfigYAMLError(f"{_where(node)}: an alias refers to a value that contains it "
                                  "(a recursive structure); write the value out instead")
        active.add(key)
        count, chars = 1, 0
        if isinstance(node, ScalarNode):
            chars = len(node.value)
        else:
            children = node.value if isinstance(node, SequenceNode) else [
                child for pair in node.value for child in pair]
            for child in children:
                c, n = size(child)
                count, chars = count + c, chars + n
        active.discard(key)
        expanded[key] = (count, chars)
        return count, chars

    count, chars = size(root)
    written = len(expanded)
    written_chars = sum(len(n.value) for n in _distinct_scalars(root))
    if count - written > MAX_ALIAS_NODES or chars - written_chars > MAX_ALIAS_CHARS:
        raise ConfigYAMLError(
            f"{_where(root)}: aliases (*name) expand this document to {count:,} values and "
            f"{chars:,} characters from {written:,} values and {written_chars:,} characters "
            f"written (aliases may add at most {MAX_ALIAS_NODES:,} values and "
            f"{MAX_ALIAS_CHARS:,} characters); write the values out, or reuse less")


def _distinct_scalars(root: Node) -> list[ScalarNode]:
    seen: set[int] = set()
    out: list[ScalarNode] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            out.append(node)
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, MappingNode):
            stack.extend(child for pair in node.value for child in pair)
    return out


class _NamedText(io.StringIO):
    """Text whose ``name`` PyYAML puts in its error marks."""

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self.name = name


def load_yaml_text(text: str, name: str) -> Any:
    """Parse one YAML document; any problem is a :class:`ConfigError` starting with ``name``
    (e.g. the file) and bounded in size."""
    try:
        return yaml.load(_NamedText(text, name), Loader=_Loader)
    except ConfigYAMLError as e:
        raise ConfigError(str(e)) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: not valid YAML: {clip(escape_control(str(e)), 2000)}") from None
    except RecursionError:
        raise ConfigError(f"{name}: the YAML is nested too deeply to read; flatten it") from None


def read_yaml_file(path: str | Path) -> Any:
    """The parsed document of a YAML file (UTF-8), or a :class:`ConfigError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes is too large for a config file "
                          f"(limit {MAX_CONFIG_BYTES:,}); put data rows in a data file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); "
                          "save the config as UTF-8") from None
    return load_yaml_text(text, str(path))
