"""YAML streams in and out, deterministically: key order is kept, multi-line strings print as blocks."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

import yaml


class InputError(ValueError):
    pass


def read_stream(path: str) -> list[Any]:
    """Documents of a YAML stream; `-` reads standard input. Empty documents are dropped."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not valid YAML: {error}") from error
    for index, doc in enumerate(documents):
        if not isinstance(doc, dict):
            raise InputError(f"{path}: document {index + 1} is not a mapping (a Kubernetes object)")
    return documents


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_stream(documents: Iterable[Any], out: TextIO) -> None:
    yaml.dump_all(
        list(documents), out, Dumper=_Dumper, sort_keys=False, default_flow_style=False, explicit_start=True
    )
