"""Load one YAML file into plain data, remembering the file:line:col of every key and value.

PyYAML's libyaml composer gives positioned nodes quickly; we build the data from those nodes
ourselves so that nothing unsafe is ever constructed and every failure is a positioned
:class:`~compiler.errors.LoadError`.

>>> doc = load_text("a: 1\\nb: [x, y]\\n", "demo.yaml")
>>> doc.data, str(doc.position_of(("b", 1)))
({'a': 1, 'b': ['x', 'y']}, 'demo.yaml:2:8')
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compiler.errors import LoadError, MlopsError, Position
from compiler.yaml_slips import explain

MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_EXPANDED_NODES = 200_000
"""An alias may repeat a subtree, but the expanded document may not exceed this many nodes
unless it is no more than 10x the nodes actually written (a cap against alias bombs)."""
MAX_DEPTH = 100
"""How deeply collections may nest (a spec needs under 10 levels; the builders recurse once per level)."""
MAX_INT_BITS = 4096
"""The largest integer accepted (hex, octal and binary spellings have no length limit in Python)."""

_DEFAULT_TAGS = {yaml.ScalarNode: "tag:yaml.org,2002:str", yaml.SequenceNode: "tag:yaml.org,2002:seq",
                 yaml.MappingNode: "tag:yaml.org,2002:map"}


class _Loader(getattr(yaml, "CBaseLoader", yaml.BaseLoader)):  # type: ignore[misc]
    """libyaml's composer, with the cheapest possible resolver: every scalar arrives as text and only
    plain ones are typed afterwards (the safe resolver costs a Python call chain per node)."""

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        return None

    def ascend_resolver(self) -> None:
        return None

    def resolve(self, kind: type, value: Any, implicit: Any) -> str:
        return _DEFAULT_TAGS[kind]
_IMPLICIT = yaml.resolver.Resolver.yaml_implicit_resolvers
_STR_TAG = "tag:yaml.org,2002:str"
_FAST_SCALARS: dict[str, Any] = {
    "tag:yaml.org,2002:int": lambda text: int(text, 10) if text.lstrip("+-").isdigit()
    and not (text.lstrip("+-").startswith("0") and len(text.lstrip("+-")) > 1) else {}[text],
    "tag:yaml.org,2002:float": lambda text: float(text) if "_" not in text and ":" not in text
    and text.lower().lstrip("+-") not in (".inf", ".nan") else {}[text],
    "tag:yaml.org,2002:bool": {"true": True, "false": False}.__getitem__,
    "tag:yaml.org,2002:null": {"": None, "~": None, "null": None}.__getitem__,
}
"""Plain decimal ints, ordinary floats, lowercase booleans and nulls; anything else (octal ``012``,
``0x1F``, ``1_000``, sexagesimal ``1:30``, ``.inf``, ``Yes``) falls back to PyYAML's constructor."""
_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
}
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"
_MERGE_TAG = "tag:yaml.org,2002:merge"

Loc = tuple[str | int, ...]
Span = tuple[int, int, int, int]
"""1-based (line, column, end line, end column); the end column is just after the last character."""


@dataclass
class Document:
    """Plain data from one YAML file, with the position of every key and value by its path."""

    file: str
    data: dict[str, Any]
    value_positions: dict[Loc, Span] = field(default_factory=dict)
    """path -> (line, column, end line, end column) of the value; plain tuples because there is one per node."""
    key_positions: dict[Loc, Span] = field(default_factory=dict)

    def position_of(self, loc: Sequence[str | int], key: bool = False) -> Position:
        """The position of the value at ``loc`` (or of its key), else of its nearest known ancestor."""
        path = tuple(loc)
        while True:
            if key and path in self.key_positions:
                return Position(self.file, *self.key_positions[path])
            if path in self.value_positions:
                return Position(self.file, *self.value_positions[path])
            if not path:
                return Position(self.file, 1, 1)
            path = path[:-1]


def load_file(path: str | Path, display_name: str | None = None) -> Document:
    """Read and load ``path``; ``display_name`` is how the file is named in messages."""
    name = display_name or str(path)
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise LoadError.one(f"no such file: {name}", Position(name, 1, 1)) from None
    except OSError as exc:
        raise LoadError.one(f"cannot read: {exc.strerror}", Position(name, 1, 1)) from None
    if size > MAX_FILE_BYTES:
        raise LoadError.one(
            f"file is {size:,} bytes; the limit is {MAX_FILE_BYTES:,} (10 MB)", Position(name, 1, 1)
        )
    try:
        raw = p.read_bytes()
    except IsADirectoryError:
        raise LoadError.one("is a directory, not a YAML file", Position(name, 1, 1)) from None
    return load_bytes(raw, name)


def load_bytes(raw: bytes, name: str) -> Document:
    """Decode ``raw`` as UTF-8 and load it."""
    if len(raw) > MAX_FILE_BYTES:
        raise LoadError.one(f"file is {len(raw):,} bytes; the limit is {MAX_FILE_BYTES:,} (10 MB)",
                            Position(name, 1, 1))
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start + bom  # the decoder counted from after the byte order mark
        before = raw[:start]
        line = before.count(b"\n") + 1
        column = start - (before.rfind(b"\n") + 1) + 1
        raise LoadError.one(
            f"not valid UTF-8 (byte 0x{raw[start]:02x})", Position(name, line, column)
        ) from None
    return load_text(text, name)


def load_text(text: str, name: str) -> Document:
    """Load YAML text that must hold exactly one mapping."""
    if "\x00" in text:
        offset = text.index("\x00")
        line = text.count("\n", 0, offset) + 1
        raise LoadError.one("contains a NUL character", Position(name, line, offset - text.rfind("\n", 0, offset)))
    with paused_gc():
        return _load_nodes(text, name)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many long-lived objects.

    Composing a large document allocates hundreds of thousands of nodes that all survive; the
    collector would rescan them over and over (measured: composing twice as slow with it on).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load_nodes(text: str, name: str) -> Document:
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(text, name, exc) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow; libyaml counts UTF-8 bytes
        before = text.encode()[: exc.position].decode("utf-8", "replace")
        line = before.count("\n") + 1
        column = len(before) - before.rfind("\n")
        code = ord(exc.character) if isinstance(exc.character, str) else int(exc.character)
        raise LoadError.one(f"invalid YAML: {exc.reason}: #x{code:04x}", Position(name, line, column)) from None
    except yaml.YAMLError as exc:
        raise LoadError.one(f"invalid YAML: {exc}", Position(name, 1, 1)) from None
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == "tag:yaml.org,2002:null"
                        and root.value in ("", "~", "null")):
        raise LoadError.one("the file is empty; expected a mapping with apiVersion, project, ...",
                            Position(name, 1, 1))
    builder = _Builder(name, text)
    if not isinstance(root, yaml.MappingNode) or root.tag != _MAP_TAG:
        raise LoadError.one("the document must be a mapping of keys to values", builder.pos(root))
    if "&" in text:  # aliases need anchors: without one there is nothing to expand
        builder.check_expansion(root)
    data = builder.build(root, ())
    return Document(name, data, builder.value_positions, builder.key_positions)


def _syntax_error(text: str, name: str, exc: yaml.MarkedYAMLError) -> MlopsError:
    """The parser's error, in plain words at the slip's own place when :mod:`compiler.yaml_slips` knows it."""
    marks = [(mark.line, mark.column) if mark is not None else None for mark in (exc.problem_mark, exc.context_mark)]
    explained = explain(text, exc.problem, exc.context, marks[0], marks[1])
    if explained is not None:
        message, line, column = explained
        return LoadError.one(f"invalid YAML: {message}", Position(name, line, column))
    mark = exc.problem_mark or exc.context_mark
    message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
    position = Position(name, mark.line + 1, mark.column + 1) if mark else Position(name, 1, 1)
    return LoadError.one(f"invalid YAML: {message}", position)


class _Builder:
    """Turns composed nodes into plain data, refusing unsafe tags and duplicate keys."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        self.value_positions: dict[Loc, Span] = {}
        self.key_positions: dict[Loc, Span] = {}
        self._lines: list[str] | None = None
        self._scalars = yaml.constructor.SafeConstructor()

    def pos(self, node: yaml.Node) -> Position:
        return Position(self.name, node.start_mark.line + 1, node.start_mark.column + 1)

    def span(self, node: yaml.Node) -> Span:
        start = node.start_mark
        end_line, end_column = self._end(node)
        if (end_line, end_column) <= (start.line, start.column):  # an alias at the end: its anchor is earlier
            end_line, end_column = start.line, start.column + 1
        return start.line + 1, start.column + 1, end_line + 1, end_column + 1

    def _end(self, node: yaml.Node) -> tuple[int, int]:
        """Where ``node``'s text ends (0-based line and the column after its last character).

        A block collection's own end mark is the start of whatever follows it (the next key, after any blank
        lines and comments), so its end is taken from its last entry; a literal or folded scalar's end mark
        is past its trailing line breaks, so its end is the end of its last line that has text.
        """
        if isinstance(node, yaml.ScalarNode):
            if node.style in ("|", ">"):
                return self._block_scalar_end(node)
            return node.end_mark.line, node.end_mark.column
        if not isinstance(node, yaml.CollectionNode) or node.flow_style or not node.value:
            return node.end_mark.line, node.end_mark.column
        if isinstance(node, yaml.MappingNode):
            key, value = node.value[-1]
            return max(self._end(key), self._end(value))
        return self._end(node.value[-1])

    def _block_scalar_end(self, node: yaml.ScalarNode) -> tuple[int, int]:
        line, column = node.end_mark.line, node.end_mark.column
        if column:
            return line, column
        if self._lines is None:
            self._lines = self.text.split("\n")
        while line > node.start_mark.line:
            line -= 1
            text = self._lines[line].rstrip() if line < len(self._lines) else ""
            if text:
                return line, len(text)
        return node.end_mark.line, node.end_mark.column

    def check_expansion(self, root: yaml.Node) -> None:
        """Refuse recursive aliases and documents whose aliases expand past the cap."""
        sizes: dict[int, int] = {}
        visiting: set[int] = set()
        unique = 0

        def size(node: yaml.Node, depth: int) -> int:
            nonlocal unique
            key = id(node)
            if key in sizes:
                return sizes[key]
            if key in visiting:
                raise LoadError.one("recursive alias: a node contains itself", self.pos(node))
            if depth > MAX_DEPTH:
                raise self._too_deep(node)
            visiting.add(key)
            unique += 1
            total = 1
            if isinstance(node, yaml.SequenceNode):
                total += sum(size(child, depth + 1) for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
            visiting.discard(key)
            sizes[key] = total
            if total > MAX_EXPANDED_NODES and total > 10 * unique:
                raise LoadError.one(
                    f"aliases expand to over {MAX_EXPANDED_NODES:,} nodes (an alias bomb?)", self.pos(node)
                )
            return total

        size(root, 0)

    def _too_deep(self, node: yaml.Node) -> MlopsError:
        return LoadError.one(f"nested more than {MAX_DEPTH} levels deep", self.pos(node))

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        if len(loc) > MAX_DEPTH:  # the path to a node is as long as it is deep: no extra walk
            raise self._too_deep(node)
        if isinstance(node, yaml.ScalarNode):
            start, end = node.start_mark, node.end_mark
            if node.style in ("|", ">"):
                self.value_positions[loc] = self.span(node)
            else:
                self.value_positions[loc] = (start.line + 1, start.column + 1, end.line + 1, end.column + 1)
            return self._scalar(node)
        self.value_positions[loc] = self.span(node)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                raise LoadError.one(f"unsupported YAML tag {_short(node.tag)}", self.pos(node))
            return [self.build(child, (*loc, i)) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                raise LoadError.one(f"unsupported YAML tag {_short(node.tag)}", self.pos(node))
            return self._mapping(node, loc)
        raise LoadError.one("unsupported YAML node", self.pos(node))  # pragma: no cover

    def _implicit_tag(self, node: yaml.ScalarNode) -> str:
        """The YAML 1.1 type of a scalar written plain and without an explicit tag."""
        value = node.value
        for tag, pattern in _IMPLICIT.get(value[0] if value else "", ()):
            if pattern.match(value):
                index = node.start_mark.index  # an empty scalar at the very end starts past the text
                return tag if index >= len(self.text) or self.text[index] != "!" else _STR_TAG
        return _STR_TAG

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        tag = node.tag
        if tag == _STR_TAG and not node.style:  # plain: None from PyYAML, "" from libyaml
            tag = self._implicit_tag(node)
        if tag not in _SCALAR_TAGS:
            raise LoadError.one(f"unsupported YAML tag {_short(tag)}", self.pos(node))
        if tag in (_STR_TAG, "tag:yaml.org,2002:timestamp"):
            return node.value  # dates stay text: the spec's models parse them
        fast = _FAST_SCALARS.get(tag)
        if fast is not None:  # the common spellings, without the constructor's machinery
            try:
                return fast(node.value)
            except (ValueError, KeyError):
                pass  # 0x1F, 1_000, 1:30, .inf, Yes, ...: the full YAML 1.1 rules below
        try:
            node.tag = tag
            value = self._scalars.construct_object(node)
            if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:  # 0xfff...: no text form later
                raise ValueError(f"integer of {value.bit_length():,} bits; the limit is {MAX_INT_BITS:,}")
            return value
        except (ValueError, IndexError, KeyError, yaml.YAMLError) as exc:  # '!!int ""', '!!bool x', ...
            detail = str(exc) if isinstance(exc, ValueError | yaml.YAMLError) else f"not a {_short(tag)}"
            raise LoadError.one(f"invalid scalar {node.value!r}: {detail}", self.pos(node)) from None

    def _mapping(self, node: yaml.MappingNode, loc: Loc, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
        """Build a mapping; ``exclude`` names keys already set by the mapping a merge (<<) goes into."""
        out: dict[str, Any] = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or (key_node.value == "<<" and not key_node.style
                                              and isinstance(key_node, yaml.ScalarNode)):
                merges.append(value_node)
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                raise LoadError.one("mapping keys must be plain scalars", self.pos(key_node))
            key = key_node.value
            if key in out:
                first_line = self.key_positions[(*loc, key)][0]
                raise LoadError.one(
                    f"duplicate key '{key}' (first defined at line {first_line})", self.pos(key_node)
                )
            if key in exclude:
                out[key] = None  # overridden by the mapping merged into; neither built nor positioned
                continue
            start, end = key_node.start_mark, key_node.end_mark
            self.key_positions[(*loc, key)] = (start.line + 1, start.column + 1, end.line + 1, end.column + 1)
            out[key] = self.build(value_node, (*loc, key))
        for key in exclude:
            out.pop(key, None)
        for merge in merges:  # explicit keys win over merged ones, earlier merges over later ones
            for key, value in self._merge_source(merge, loc, exclude | frozenset(out)).items():
                out.setdefault(key, value)
        return out

    def _merge_source(self, node: yaml.Node, loc: Loc, exclude: frozenset[str]) -> dict[str, Any]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict[str, Any] = {}
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                raise LoadError.one("a merge key (<<) takes a mapping or a list of mappings", self.pos(source))
            for key, value in self._mapping(source, loc, exclude | frozenset(merged)).items():
                merged.setdefault(key, value)
        return merged


def _short(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag
