"""A reader for the protobuf text files AMCT uses: the simple config (`calibration_config_tf
.proto`, a `.cfg` file) and the record file. Fields are `name: value` or `name { ... }`;
every field may repeat, so each maps to a list of values (scalars or nested dicts)."""
from __future__ import annotations

import re
from typing import Any

from amct_targets.errors import ConfigError

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}:;,<>])|([^\s{}:;,<>"#]+))')


def _tokens(text: str, where: str) -> list[tuple[str, int]]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            if text[pos:].strip():
                line = text.count("\n", 0, pos) + 1
                raise ConfigError(f"{where}: line {line}: cannot read '{text[pos:pos + 20]}' "
                                  "(protobuf text format expected)")
            break
        pos = match.end()
        if match.group(1):
            continue
        token = match.group(2) or match.group(3) or match.group(4)
        tokens.append((token, text.count("\n", 0, match.start()) + 1))
    return tokens


def _scalar(token: str) -> Any:
    if token.startswith('"'):
        return bytes(token[1:-1], "utf-8").decode("unicode_escape")
    lowered = token.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(token)
    except ValueError:
        pass
    try:
        return float(token)
    except ValueError:
        return token   # an enum value such as INT8


def parse(text: str, where: str) -> dict[str, list]:
    """{field: [values]} of a protobuf text message; ConfigError naming the line on a
    syntax error."""
    tokens = _tokens(text, where)
    pos = 0

    def message(end: str | None) -> dict[str, list]:
        nonlocal pos
        fields: dict[str, list] = {}
        while pos < len(tokens):
            token, line = tokens[pos]
            if token == end:
                pos += 1
                return fields
            if token in "{}:;,<>":
                raise ConfigError(f"{where}: line {line}: unexpected '{token}'")
            name = token
            pos += 1
            if pos < len(tokens) and tokens[pos][0] == ":":
                pos += 1
            if pos >= len(tokens):
                raise ConfigError(f"{where}: line {line}: field '{name}' has no value")
            value, line = tokens[pos]
            if value in ("{", "<"):
                pos += 1
                fields.setdefault(name, []).append(message("}" if value == "{" else ">"))
            else:
                pos += 1
                fields.setdefault(name, []).append(_scalar(value))
            while pos < len(tokens) and tokens[pos][0] in ";,":
                pos += 1
        if end is not None:
            raise ConfigError(f"{where}: a '{{' is never closed (missing '{end}')")
        return fields

    return message(None)


def one(fields: dict[str, list], name: str, where: str, default: Any = None) -> Any:
    """The single value of a non-repeated field (the last one, as protobuf does)."""
    values = fields.get(name)
    return values[-1] if values else default
