"""The YAML reader and writer: bounded composition, libyaml's speed, PyYAML's bytes."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from podgrace.cli import yaml_stream
from podgrace.cli.yaml_stream import InputError, dumps, parse_documents

REPO = Path(__file__).resolve().parents[2]

BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]"
            for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "metadata: {name: x, annotations: {podgrace.dev/profile: *i}}",
    ]
)


def test_libyaml_is_used_here() -> None:
    """The speed figures in README.md are with libyaml; PyYAML wheels for Linux ship it."""
    assert yaml_stream.HAVE_LIBYAML


def test_the_542_byte_alias_bomb_is_refused_at_once() -> None:
    assert len(BOMB) < 700
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"f.yaml: document 1 \(line \d+\): aliases expand the document"):
        parse_documents(BOMB, "f.yaml")
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # generous bounds that the unbounded expansion (6.7 s, 372 MB) is far beyond
    assert peak < 20_000_000
    assert elapsed < 5


def test_aliases_within_the_budget_are_read() -> None:
    text = "base: &b {cpu: 100m}\nitems: [*b, *b, *b]\n"
    (document,) = parse_documents(text, "f.yaml")
    assert document.obj == {"base": {"cpu": "100m"}, "items": [{"cpu": "100m"}] * 3}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[" * 3000 + "]" * 3000, "document 1 (line 1): nested more than 100 levels deep"),
        (
            "[" * 1_000_000,
            "nested more than 100 levels deep",
        ),  # libyaml's composer would overflow the C stack
        ("a: " + "1" * 4301, "an integer of 4301 characters is out of range"),
        ("a: 0x" + "f" * 5000, "an integer of 5002 characters is out of range"),
        ("a: 2024-13-45\n", "document 1 (line 1): not a valid value: month must be in 1..12"),
        ("a: !!int abc\n", "not a valid value: invalid literal for int()"),
        ("a: !!omap [{b: 1}]\n", "tag:yaml.org,2002:omap is not supported in Kubernetes objects"),
        ("a: &x [*x]\n", "alias *x refers to a node that contains it"),
        ("a: *nope\n", "alias *nope is undefined"),
        ("a: &x 1\nb: &x 2\n", "duplicate anchor &x"),
        ("a: !!python/object:os.system x\n", "could not determine a constructor"),
        ("a: [1,\n", "not valid YAML: line 2 column 1"),
        ("a: 1\n---\n- 2\n", "document 2 (line 3): not a mapping"),
    ],
    ids=[
        "nesting-3000",
        "nesting-1e6",
        "int-4301-digits",
        "hex-int-huge",
        "bad-timestamp",
        "int-tag-on-text",
        "omap",
        "recursive-alias",
        "undefined-alias",
        "duplicate-anchor",
        "python-tag",
        "unclosed",
        "list-document",
    ],
)
def test_bad_input_is_one_clear_line(text: str, words: str) -> None:
    with pytest.raises(InputError) as raised:
        parse_documents(text, "f.yaml")
    message = str(raised.value)
    assert words in message
    assert message.startswith("f.yaml: ") and "\n" not in message


def test_nesting_up_to_the_limit_is_read() -> None:
    depth = yaml_stream.MAX_DEPTH
    (document,) = parse_documents("a: " + "[" * (depth - 1) + "]" * (depth - 1), "f.yaml")
    assert dumps([document.obj])  # and written back (PyYAML's representer recurses)


def test_same_objects_as_pyyaml_for_the_repository_manifests() -> None:
    paths = [REPO / "examples" / "php-fpm-deployment.yaml", *sorted((REPO / "charts").rglob("*.yaml"))]
    read = 0
    for path in paths:
        text = path.read_text()
        try:
            expected = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError:
            continue  # Helm templates
        if not all(isinstance(d, dict) for d in expected):
            continue
        assert [d.obj for d in parse_documents(text, str(path))] == expected, path
        read += 1
    assert read >= 3


def test_lines_point_at_keys_and_items() -> None:
    text = "a: 1\n---\nkind: List\nitems:\n- kind: A\n  spec:\n    x: 1\n- kind: B\n"
    _, listing = parse_documents(text, "f.yaml")
    assert listing.source.describe() == "f.yaml: document 2 (line 3)"
    second = listing.source.for_item(1)
    assert (second.line, second.item) == (8, 1)
    first = listing.source.for_item(0)
    assert first.line_of(["spec", "x"]) == 7
    assert first.line_of(["spec", "missing"]) == 6  # the deepest found


# --- the writer: libyaml's emitter gives PyYAML's bytes ------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=120),
    st.text(alphabet=" \n\t:#-'\"|>{}[]&*!%@`,?abc0123", max_size=60),
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=20), documents, max_size=6), min_size=1, max_size=3))
def test_libyaml_writes_the_same_bytes_as_pyyaml(stream: list[dict[str, Any]]) -> None:
    assert dumps(stream) == dumps(stream, pure=True)


def test_libyaml_writes_the_same_bytes_for_the_example(repo_root: Path) -> None:
    objects = [
        d.obj for d in parse_documents((repo_root / "examples" / "php-fpm-deployment.yaml").read_text(), "x")
    ]
    assert dumps(objects) == dumps(objects, pure=True)


@pytest.mark.parametrize(
    "document",
    [
        {"a": (shared := {"cpu": "1"}), "b": shared},  # an alias
        {"when": __import__("datetime").date(2024, 1, 1)},
        {"bytes": b"\x00\x01"},
        {"": 1, "\r": 2},
        {"script": "line\n\n"},
        {"x": float("inf"), "y": float("-inf"), "z": 1e17, "n": None, "t": True},
    ],
    ids=["alias", "date", "bytes", "odd-keys", "kept-line-breaks", "numbers"],
)
def test_what_libyaml_would_write_differently_falls_back(document: dict[str, Any]) -> None:
    assert dumps([document]) == dumps([document], pure=True)


# --- the fast reader: it takes only plain manifests, and reads them as the checked reader does ------------


def _read_both(text: str) -> tuple[list[yaml_stream.Document] | None, list[yaml_stream.Document]]:
    plain = yaml_stream._read_plain(text, "f.yaml", "f.yaml")
    return plain, yaml_stream._read_checked(text, "f.yaml", "f.yaml")


def _same(plain: list[yaml_stream.Document], checked: list[yaml_stream.Document]) -> None:
    # repr: 1, 1.0 and True are equal but not the same value
    assert repr([d.obj for d in plain]) == repr([d.obj for d in checked])
    assert [d.source.describe() for d in plain] == [d.source.describe() for d in checked]


def test_the_fast_reader_reads_the_example_as_the_checked_one(repo_root: Path) -> None:
    plain, checked = _read_both((repo_root / "examples" / "php-fpm-deployment.yaml").read_text())
    assert plain is not None
    _same(plain, checked)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.dictionaries(st.text(max_size=20), documents, max_size=6) | st.none(), max_size=3),
    st.booleans(),
)
def test_the_fast_reader_reads_what_the_checked_one_reads(stream: list[Any], flow: bool) -> None:
    plain, checked = _read_both(yaml.safe_dump_all(stream, default_flow_style=flow))
    assert plain is not None  # safe_dump writes no tags, anchors or aliases here
    _same(plain, checked)


@pytest.mark.parametrize(
    "text",
    [
        "a: &x 1\nb: *x\n",
        "a: &x 1\n",
        "a: !!str 1\n",
        "a: 2024-01-01\n",
        "<<: {a: 1}\nb: 2\n",
        "a: =\n",
        "? [a]\n: 1\n",
        "- 1\n",
        "a: " + "[" * yaml_stream.MAX_DEPTH + "]" * yaml_stream.MAX_DEPTH,
        "a: " + "1" * 80,
        "a: [1,\n",
    ],
    ids=[
        "alias",
        "anchor",
        "tag",
        "timestamp",
        "merge-key",
        "value-key",
        "collection-key",
        "list-document",
        "too-deep",
        "int-too-long",
        "unclosed",
    ],
)
def test_the_fast_reader_leaves_the_rest_to_the_checked_one(text: str) -> None:
    assert yaml_stream._read_plain(text, "f.yaml", "f.yaml") is None
