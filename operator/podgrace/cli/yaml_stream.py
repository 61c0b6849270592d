"""YAML streams in and out, deterministically: key order is kept, multi-line strings print as blocks.

What podgrace reads is bounded whatever the input: nesting depth, alias expansion and integer size are
limited (an input over a limit is a clear `InputError`, never a crash), and the stream is composed from
parser events by a loop, not by recursion (libyaml's own composer recurses in C and overflows the stack on
deep nesting). libyaml's C parser and emitter are used when PyYAML has them; the output is the same bytes
as PyYAML's pure-Python emitter (tests/unit/test_yaml_stream.py).

For speed (bench/render), plain manifests take a short way in and out: objects built straight from the
parser's events (_read_plain, which takes only what is within every bound and leaves the rest to the
checked reader), and emitter events made here rather than by PyYAML's representer (_EventWriter).
"""

from __future__ import annotations

import contextlib
import gc
import io
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# Kubernetes objects nest a few dozen levels at most (a CRD's schema included).
MAX_DEPTH = 100
# Aliases may add this many nodes to a document beyond what it spells out (or double a larger document):
# enough for any anchor reuse in a manifest, far from a "billion laughs".
ALIAS_EXTRA_NODES = 100_000
# Kubernetes integers are int64 (19 digits); the longest spelling of one (binary) has 66 characters.
MAX_INT_CHARS = 70

HAVE_LIBYAML = bool(getattr(yaml, "__with_libyaml__", False))
_BaseLoader: type[Any] = yaml.CSafeLoader if HAVE_LIBYAML else yaml.SafeLoader
_BaseDumper: type[Any] = yaml.CSafeDumper if HAVE_LIBYAML else yaml.SafeDumper


class InputError(ValueError):
    pass


@dataclass(frozen=True)
class Source:
    """Where an object comes from: file, document (1-based), a List's item (0-based), and its node."""

    path: str
    document: int
    nodes: _Nodes = field(repr=False, compare=False)
    item: int | None = None

    @property
    def file(self) -> str:
        return "<stdin>" if self.path == "-" else self.path

    @property
    def node(self) -> Node:
        node = self.nodes.document(self.document)
        if self.item is None:
            return node
        items = _child(node, "items")
        return (_child(items, self.item) if items is not None else None) or node

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def describe(self) -> str:
        item = f" item {self.item}" if self.item is not None else ""
        return f"{self.file}: document {self.document}{item} (line {self.line})"

    def for_item(self, index: int) -> Source:
        """The source of item `index` of this document's `items` (a `kind: List`)."""
        return Source(self.path, self.document, self.nodes, item=index)

    def line_of(self, path: Sequence[str | int]) -> int:
        """The line of the deepest node found along `path` (keys and list indexes) below this object."""
        node, line = self.node, self.line
        for step in path:
            found = _entry(node, step)
            if found is None:
                break
            marker, node = found
            line = int(marker.start_mark.line) + 1  # a key's line, or a list item's
        return line


class _Nodes:
    """The node graphs of a stream's documents (they give the lines of messages). The fast reader makes
    none: they are composed, bounded, from the text when a line is first asked for."""

    def __init__(self, text: str, where: str, composed: list[Node] | None = None) -> None:
        self._text, self._where, self._composed = text, where, composed

    def document(self, number: int) -> Node:
        if self._composed is None:
            loader = _Loader(self._text)
            try:
                with _no_cyclic_gc():
                    self._composed = list(_compose(loader, self._where))
            finally:
                loader.dispose()
        return self._composed[number - 1]


def _entry(node: Node, step: str | int) -> tuple[Node, Node] | None:
    """(the key or item that names it, the node) of `step` below `node`."""
    if isinstance(node, MappingNode) and isinstance(step, str):
        return next(((k, v) for k, v in node.value if isinstance(k, ScalarNode) and k.value == step), None)
    if isinstance(node, SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
        return node.value[step], node.value[step]
    return None


def _child(node: Node, step: str | int) -> Node | None:
    found = _entry(node, step)
    return found[1] if found is not None else None


@dataclass(frozen=True)
class Document:
    obj: dict[Any, Any]
    source: Source


class _Loader(_BaseLoader):  # type: ignore[misc]
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.plain_scalars: dict[tuple[str, Any], Any] = {}  # the fast reader's: (value, implicit) -> object

    def construct_yaml_int(self, node: ScalarNode) -> int:
        if len(node.value) > MAX_INT_CHARS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(node.value)} characters is out of range", node.start_mark
            )
        value: int = super().construct_yaml_int(node)
        return value

    def construct_unsupported(self, node: Node) -> Any:
        raise yaml.constructor.ConstructorError(
            None, None, f"{node.tag} is not supported in Kubernetes objects", node.start_mark
        )


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:omap", _Loader.construct_unsupported)
_Loader.add_constructor("tag:yaml.org,2002:pairs", _Loader.construct_unsupported)


@dataclass
class _Frame:
    node: MappingNode | SequenceNode
    anchor: str | None
    size: int = 1
    key: Node | None = None
    key_size: int = 0


_TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"


def _at(where: str, mark: Any, message: str) -> InputError:
    return InputError(f"{where} (line {mark.line + 1}): {message}")


def _compose(loader: Any, where: str) -> Iterator[Node]:
    """The stream's documents as node graphs, like PyYAML's Composer but iterative and bounded."""
    loader.get_event()  # StreamStartEvent
    number = 1  # the document being read
    try:
        while not loader.check_event(StreamEndEvent):
            event = loader.get_event()
            assert isinstance(event, DocumentStartEvent | StreamStartEvent)
            yield _compose_document(loader, f"{where}: document {number}")
            loader.get_event()  # DocumentEndEvent
            number += 1
    except yaml.MarkedYAMLError as error:
        # PyYAML 6.0.4+ bounds nesting in its scanner (1,000 levels), which reads a run of `[` ahead of the
        # events _compose_document counts: the same input error, said the same way.
        if "maximum nesting depth" not in str(error.problem) or error.problem_mark is None:
            raise
        raise _at(f"{where}: document {number}", error.problem_mark, _TOO_DEEP) from error
    loader.get_event()


def _compose_document(loader: Any, where: str) -> Node:
    anchors: dict[str, tuple[Node, int]] = {}
    stack: list[_Frame] = []
    spelled = expanded = 0
    root: Node | None = None

    def fail(message: str, mark: Any) -> InputError:
        return _at(where, mark, message)

    def attach(node: Node, size: int) -> None:
        nonlocal root
        if not stack:
            root = node
            return
        top = stack[-1]
        if isinstance(top.node, SequenceNode):
            top.node.value.append(node)
            top.size += size
        elif top.key is None:
            top.key, top.key_size = node, size
        else:
            top.node.value.append((top.key, node))
            top.size += top.key_size + size
            top.key = None

    def register(anchor: str, node: Node, size: int, mark: Any) -> None:
        if anchor in anchors:
            raise fail(f"duplicate anchor &{anchor}", mark)
        anchors[anchor] = (node, size)

    get_event, resolve = loader.get_event, _cached_resolver(loader)
    while root is None:
        event = get_event()
        kind = type(event)
        if kind is ScalarEvent:
            spelled += 1
            expanded += 1
            tag = event.tag
            if tag is None or tag == "!":
                tag = resolve(ScalarNode, event.value, event.implicit)
            scalar = ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
            if event.anchor is not None:
                register(event.anchor, scalar, 1, event.start_mark)
            attach(scalar, 1)
        elif kind is MappingStartEvent or kind is SequenceStartEvent:
            spelled += 1
            expanded += 1
            if len(stack) >= MAX_DEPTH:
                raise fail(_TOO_DEEP, event.start_mark)
            node_class = SequenceNode if kind is SequenceStartEvent else MappingNode
            tag = event.tag
            if tag is None or tag == "!":
                tag = resolve(node_class, None, event.implicit)
            collection = node_class(tag, [], event.start_mark, None, flow_style=event.flow_style)
            if event.anchor is not None and event.anchor in anchors:
                raise fail(f"duplicate anchor &{event.anchor}", event.start_mark)
            stack.append(_Frame(collection, event.anchor))
        elif kind is MappingEndEvent or kind is SequenceEndEvent:
            frame = stack.pop()
            frame.node.end_mark = event.end_mark
            if frame.anchor is not None:
                register(frame.anchor, frame.node, frame.size, frame.node.start_mark)
            attach(frame.node, frame.size)
        elif kind is AliasEvent:
            if event.anchor not in anchors:
                open_anchors = {f.anchor for f in stack}
                problem = (
                    "refers to a node that contains it" if event.anchor in open_anchors else "is undefined"
                )
                raise fail(f"alias *{event.anchor} {problem}", event.start_mark)
            node, size = anchors[event.anchor]
            expanded += size
            if expanded - spelled > max(ALIAS_EXTRA_NODES, spelled):
                raise fail(
                    f"aliases expand the document beyond {max(ALIAS_EXTRA_NODES, spelled):,} extra nodes",
                    event.start_mark,
                )
            attach(node, size)
        else:  # pragma: no cover - the parser emits only the events above inside a document
            raise fail(f"unexpected {kind.__name__}", event.start_mark)
    assert loader.check_event(DocumentEndEvent)
    return root


def _cached_resolver(loader: Any) -> Any:
    """The loader's implicit tag resolution, memoised: manifests repeat the same keys and values."""
    cache: dict[tuple[Any, str | None, Any], str] = {}
    resolve = loader.resolve

    def cached(kind: type[Node], value: str | None, implicit: Any) -> str:
        key = (kind, value, implicit)
        tag = cache.get(key)
        if tag is None:
            tag = cache[key] = resolve(kind, value, implicit)
        return tag

    return cached


def read_text(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        name = "<stdin>" if path == "-" else path
        raise InputError(f"{name}: not UTF-8 text ({error.reason} at byte {error.start})") from error


def parse_documents(text: str, path: str) -> list[Document]:
    """The stream's non-empty documents, each a mapping (a Kubernetes object), with where it came from."""
    name = "<stdin>" if path == "-" else path
    with _no_cyclic_gc():
        plain = _read_plain(text, path, name)
        return plain if plain is not None else _read_checked(text, path, name)


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """The node graphs and objects built here hold no cycles (recursive aliases are refused): the cyclic
    garbage collector's passes over the growing heap would only cost time (half of it, measured)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _read_checked(text: str, path: str, name: str) -> list[Document]:
    """Any stream: composed by the bounded loop, constructed by PyYAML's (safe) constructor."""
    loader = _Loader(text)
    composed: list[Node] = []
    nodes = _Nodes(text, name, composed)
    documents: list[Document] = []
    try:
        for number, node in enumerate(_compose(loader, name), start=1):
            composed.append(node)
            source = Source(path, number, nodes)
            try:
                obj = loader.construct_document(node)
            except yaml.YAMLError as error:
                raise InputError(f"{source.describe()}: {_yaml_problem(error)}") from error
            except (ValueError, OverflowError, TypeError, RecursionError) as error:
                # A scalar the resolver took for a timestamp but is none (2024-13-45), an explicit tag
                # applied to a value it cannot take (!!int abc), ...
                raise InputError(f"{source.describe()}: not a valid value: {error}") from error
            if obj is None:
                continue
            if not isinstance(obj, dict):
                raise InputError(f"{source.describe()}: not a mapping (a Kubernetes object)")
            documents.append(Document(obj, source))
    except yaml.YAMLError as error:
        raise InputError(f"{name}: not valid YAML: {_yaml_problem(error)}") from error
    finally:
        loader.dispose()
    return documents


class _NotPlain(Exception):
    """Something the fast reader leaves to the checked one."""


# The scalars of plain manifests, constructed by the checked reader's own constructors (the bounded int).
_PLAIN_SCALARS = {
    tag: _Loader.yaml_constructors[tag]
    for tag in (f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null"))
}
_MISSING = object()


def _read_plain(text: str, path: str, name: str) -> list[Document] | None:
    """The fast reader, for streams of plain manifests: no tags, anchors or aliases, nesting within
    MAX_DEPTH, only string, number, boolean and null scalars, every document a mapping or empty. It builds
    the objects straight from the parser's events (no node graph), constructing each distinct scalar once.
    None for any other stream (and any error), which the checked reader then reads, or refuses with its
    specific message: no bound is skipped, the fast reader only takes what is within all of them."""
    loader = _Loader(text)
    nodes = _Nodes(text, name)
    documents: list[Document] = []
    try:
        loader.get_event()  # StreamStartEvent
        number = 0
        while type(loader.get_event()) is DocumentStartEvent:
            number += 1
            obj = _build_plain(loader)
            loader.get_event()  # DocumentEndEvent
            if obj is None:
                continue
            if type(obj) is not dict:
                return None
            documents.append(Document(obj, Source(path, number, nodes)))
    except (_NotPlain, yaml.YAMLError, ValueError, OverflowError):
        return None
    finally:
        loader.dispose()
    return documents


def _build_plain(loader: Any) -> Any:
    """One document's object from the parser's events (see _read_plain)."""
    get_event, resolve, scalars = loader.get_event, loader.resolve, loader.plain_scalars
    stack: list[Any] = []  # the collections being filled, innermost last
    keys: list[Any] = []  # per collection: a mapping's key waiting for its value, else _MISSING
    while True:
        event = get_event()
        kind = type(event)
        if kind is ScalarEvent:
            if event.anchor is not None or event.tag is not None:
                raise _NotPlain
            cached = (event.value, event.implicit)
            value = scalars.get(cached, _MISSING)
            if value is _MISSING:
                tag = resolve(ScalarNode, event.value, event.implicit)
                construct = _PLAIN_SCALARS.get(tag)
                if construct is None:
                    raise _NotPlain  # a timestamp, a merge key, ...
                node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
                value = scalars[cached] = construct(loader, node)
        elif kind is MappingStartEvent or kind is SequenceStartEvent:
            if event.anchor is not None or event.tag is not None or len(stack) >= MAX_DEPTH:
                raise _NotPlain
            stack.append({} if kind is MappingStartEvent else [])
            keys.append(_MISSING)
            continue
        elif kind is MappingEndEvent or kind is SequenceEndEvent:
            value = stack.pop()
            keys.pop()
        else:  # an alias
            raise _NotPlain
        if not stack:
            return value
        top = stack[-1]
        if type(top) is list:
            top.append(value)
        elif keys[-1] is _MISSING:
            if type(value) is dict or type(value) is list:
                raise _NotPlain  # an unhashable key
            keys[-1] = value
        else:
            top[keys[-1]] = value
            keys[-1] = _MISSING


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A parser's or constructor's error on one line, with the line and column it concerns."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        context = f"{error.context}: " if error.context else ""
        return " ".join(f"line {mark.line + 1} column {mark.column + 1}: {context}{error.problem}".split())
    return " ".join(str(error).split())


def read_documents(path: str) -> list[Document]:
    return parse_documents(read_text(path), path)


def read_stream(path: str) -> list[Any]:
    """Objects of a YAML stream; `-` reads standard input. Empty documents are dropped."""
    return [document.obj for document in read_documents(path)]


class _Dumper(_BaseDumper):  # type: ignore[misc]
    pass


class _PureDumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
_PureDumper.add_representer(str, _str)


# libyaml's emitter and PyYAML's differ on a few rare strings: empty or control-character keys, and a
# block scalar that keeps trailing line breaks (libyaml adds a `...` marker). A document that has such a
# string, or a value that is not JSON-like, is written by PyYAML's emitter, so the bytes never change.
_TAME = re.compile(r"[\x20-\x7e\n]*")
_TAME_KEY = re.compile(r"[\x20-\x7e]{1,127}")


class _EventWriter:
    """Documents as emitter events, made here rather than by PyYAML's representer and serializer (most of
    the writing time): the very events they make, so the emitter writes the same bytes. Each distinct
    scalar is represented (by _Dumper's representers), resolved and checked once."""

    def __init__(self) -> None:
        self._representer = _Dumper(io.StringIO())
        self._resolve = self._representer.resolve
        self._values: dict[tuple[type, Any], ScalarEvent | None] = {}
        self._keys: dict[tuple[type, Any], ScalarEvent | None] = {}

    def events(self, document: Any) -> list[Any] | None:
        """The document's events; None when it holds a string libyaml writes differently, a value that is
        not JSON-like, or one collection twice (PyYAML writes that as an anchor and an alias)."""
        out: list[Any] = [_DOCUMENT_START]
        if not self._add(document, out, set()):
            return None
        out.append(_DOCUMENT_END)
        return out

    def _add(self, value: Any, out: list[Any], seen: set[int]) -> bool:
        kind = type(value)
        if kind is not dict and kind is not list:
            event = self._scalar(value, key=False)
            out.append(event)
            return event is not None
        if id(value) in seen:
            return False
        seen.add(id(value))
        if kind is list:
            out.append(_SEQUENCE_START)
            for item in value:
                if not self._add(item, out, seen):
                    return False
            out.append(_SEQUENCE_END)
            return True
        out.append(_MAPPING_START)
        for key, item in value.items():
            event = self._scalar(key, key=True)
            out.append(event)
            if event is None or not self._add(item, out, seen):
                return False
        out.append(_MAPPING_END)
        return True

    def _scalar(self, value: Any, *, key: bool) -> ScalarEvent | None:
        cache = self._keys if key else self._values
        cached = (type(value), value)  # the type too: 1, 1.0 and True are equal
        try:
            return cache[cached]
        except KeyError:
            event = cache[cached] = self._make(value, key=key)
            return event
        except TypeError:  # unhashable: not a scalar
            return None

    def _make(self, value: Any, *, key: bool) -> ScalarEvent | None:
        kind = type(value)
        if kind is str:
            if key:
                tame = bool(_TAME_KEY.fullmatch(value))
            else:
                kept_breaks = value.endswith("\n") and (len(value) == 1 or value[-2] == "\n")
                tame = bool(_TAME.fullmatch(value)) and not kept_breaks
            if not tame:
                return None
        elif value is not None and kind not in (int, float, bool):
            return None
        node = self._representer.represent_data(value)
        tag = node.tag
        # As the serializer does: may the emitter write it plain, or quoted, without its tag?
        implicit = (
            self._resolve(ScalarNode, node.value, (True, False)) == tag,
            self._resolve(ScalarNode, node.value, (False, True)) == tag,
        )
        return ScalarEvent(None, tag, implicit, node.value, style=node.style)


_DOCUMENT_START = DocumentStartEvent(explicit=True)
_DOCUMENT_END = DocumentEndEvent(explicit=False)
# Collections in block style with their implicit tags: the representer's nodes (default_flow_style False)
# as the serializer turns them into events.
_MAPPING_START = MappingStartEvent(None, "tag:yaml.org,2002:map", True, flow_style=False)
_MAPPING_END = MappingEndEvent()
_SEQUENCE_START = SequenceStartEvent(None, "tag:yaml.org,2002:seq", True, flow_style=False)
_SEQUENCE_END = SequenceEndEvent()
# libyaml's emitter (the C half of CDumper; the stubs do not re-export it from yaml.cyaml), else PyYAML's.
_Emitter: type[Any] = yaml.cyaml.CEmitter if HAVE_LIBYAML else yaml.emitter.Emitter  # type: ignore[attr-defined]


class _Run:
    """One emitter for a run of documents: one YAML stream, each document starting with `---`."""

    def __init__(self) -> None:
        self._text = io.StringIO()
        self._emit = _Emitter(self._text).emit
        self._emit(StreamStartEvent())

    def write(self, events: list[Any]) -> None:
        for event in events:
            self._emit(event)

    def close(self) -> str:
        self._emit(StreamEndEvent())
        return self._text.getvalue()


def dumps(documents: Iterable[Any], *, pure: bool = False) -> str:
    """The documents as one YAML stream, in PyYAML's bytes (`pure`: PyYAML's Python emitter only).
    Runs of documents that libyaml writes alike go to one libyaml emitter as events made here, the rest
    through PyYAML's representer and emitter (each document starts with `---` and ends open: the stream
    is the concatenation of its documents)."""
    parts: list[str] = []
    writer = _EventWriter()
    run: _Run | None = None
    for document in documents:
        events = None if pure else writer.events(document)
        if events is not None:
            run = run or _Run()
            run.write(events)
            continue
        if run is not None:
            parts.append(run.close())
            run = None
        parts.append(_dump([document], _PureDumper))
    if run is not None:
        parts.append(run.close())
    return "".join(parts)


def _dump(documents: list[Any], dumper: type[Any]) -> str:
    text: str = yaml.dump_all(
        documents, Dumper=dumper, sort_keys=False, default_flow_style=False, explicit_start=True
    )
    return text
