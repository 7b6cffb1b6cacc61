"""The typed field reader: one YAML mapping read key by key, every problem recorded with its place.

A `Fields` wraps one mapping `Node` and its config path (`sites.clinic.server`). Its getters
(`text`, `number`, `flag`, `path_value`, `argv`, `address`, `listen`, `items_of`) return the
value, or the default the caller passes (from `defaults.py`) when the key is absent, and record
a problem as `FILE:LINE: path.to.key: message` when the value has the wrong type or is out of
range; reading goes on, so every problem of a file is reported at once. `finish()` reports the
keys nobody asked for as unknown, with a "did you mean" for a near miss.
"""

from __future__ import annotations

import os
import re
from typing import Any

from mamoru.config.yamlnodes import Node, Problems, kind
from mamoru.i18n import N_
from mamoru.netaddr import parse_address

REQUIRED: Any = object()  # the default of a key that must be given

# A bare port is a valid listen setting; this host only lets parse_address accept one.
_ANY_HOST = "0.0.0.0"  # noqa: S104 - only parsed, never bound
# Characters that end a directive, a block or a line, start a comment, quote, or expand a
# variable in nginx or Apache config files.
_UNSAFE = frozenset(';{}#"\'\\$`')
_UNSAFE_OR_CONTROL = re.compile(r"[;{}#\"'\\$`\x00-\x1f\x7f]")


def unsafe_characters(value: str) -> str:
    """A description of the characters in `value` that may not go into a generated web server
    config ('' when there are none)."""
    if not _UNSAFE_OR_CONTROL.search(value):
        return ""
    found = sorted({c for c in value if c in _UNSAFE or ord(c) < 0x20 or ord(c) == 0x7F})
    return ", ".join("a line break" if c in "\r\n" else repr(c) for c in found)


class Fields:
    """Reads the keys of one YAML mapping, records problems, and reports unknown keys at
    finish()."""

    def __init__(self, problems: Problems, node: Node | None, path: str, *,
                 required: bool = False, parent_line: int | None = None) -> None:
        self.problems = problems
        self.path = path
        self.line = node.line if node else parent_line
        self.items: dict[str, tuple[int, Node]] = {}
        self.used: set[str] = set()
        self.present = node is not None
        if node is not None and not isinstance(node.value, dict):
            if not (node.value is None and not required):
                problems.error(node.line, path, N_("must be a mapping (key: value), not {kind}"),
                               kind=kind(node))
            self.present = False
        elif node is not None:
            self.items = node.value
        elif required:
            problems.error(parent_line, path, N_("is required"))

    def child_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str, /, **params: Any) -> None:
        """Record a problem of `key`, at the key's line (the mapping's when it is absent);
        `message` and `params` as for Problems.error."""
        self.problems.error(self.key_line(key), self.child_path(key), message, **params)

    def node(self, key: str) -> Node | None:
        self.used.add(key)
        entry = self.items.get(key)
        return entry[1] if entry else None

    def key_line(self, key: str) -> int | None:
        entry = self.items.get(key)
        return entry[0] if entry else self.line

    def has(self, key: str) -> bool:
        return key in self.items

    def sub(self, key: str, *, required: bool = False) -> Fields:
        return Fields(self.problems, self.node(key), self.child_path(key), required=required,
                      parent_line=self.line)

    def value(self, key: str, types: tuple[type, ...], what: str, default: Any = REQUIRED) -> Any:
        node = self.node(key)
        if node is None or node.value is None:
            if default is REQUIRED:
                self.problems.error(self.line, self.child_path(key), N_("is required"))
                return None
            return default
        value = node.value
        if isinstance(value, bool) and bool not in types:
            self.problems.error(node.line, self.child_path(key),
                                N_("must be {what}, not a true/false value"), what=what)
            return default if default is not REQUIRED else None
        if not isinstance(value, types):
            self.problems.error(node.line, self.child_path(key), N_("must be {what}, not {kind}"),
                                what=what, kind=kind(node))
            return default if default is not REQUIRED else None
        return value

    def text(self, key: str, default: Any = REQUIRED, *, choices: tuple[str, ...] | None = None
             ) -> Any:
        value = self.value(key, (str,), N_("a string"), default)
        if isinstance(value, str) and choices is not None and value not in choices:
            self.error(key, N_("{value} is not one of: {choices}"), value=repr(value),
                       choices=", ".join(choices))
        if isinstance(value, str) and "\x00" in value:
            self.error(key, N_("contains a NUL character"))
            return None
        return value

    def number(self, key: str, default: Any, *, minimum: float, maximum: float,
               integer: bool = False) -> Any:
        types: tuple[type, ...] = (int,) if integer else (int, float)
        value = self.value(key, types, N_("a whole number") if integer else N_("a number"), default)
        if isinstance(value, int | float) and not (minimum <= value <= maximum):
            self.error(key, N_("{value} is out of range ({minimum} to {maximum})"), value=value,
                       minimum=f"{minimum:g}", maximum=f"{maximum:g}")
            return default
        return value

    def flag(self, key: str, default: bool) -> bool:
        return bool(self.value(key, (bool,), N_("true or false"), default))

    def path_value(self, key: str, default: Any = REQUIRED) -> Any:
        """An absolute file system path, without a character that could end a directive or a
        line in a web server's config (paths are written into generated nginx and Apache
        files)."""
        value = self.text(key, default)
        if isinstance(value, str) and value and not os.path.isabs(value):
            self.error(key, N_("{value} must be an absolute path"), value=repr(value))
        elif isinstance(value, str) and (bad := unsafe_characters(value)):
            self.error(key, N_("{value} contains {bad}, which mamoru does not write into a web "
                          "server's config; use a path without it"), value=repr(value), bad=bad)
            return default if default is not REQUIRED else None
        return value

    def argv(self, key: str) -> tuple[str, ...] | None:
        """A command as a list of program and arguments (never a shell string)."""
        node = self.node(key)
        path = self.child_path(key)
        if node is None or node.value is None:
            return None
        if not isinstance(node.value, list) or not node.value:
            self.problems.error(node.line, path,
                                N_("must be a list of program and arguments, e.g. [nginx, -t] "
                                   "(mamoru never runs a shell string)"))
            return None
        out = []
        for index, item in enumerate(node.value):
            if not isinstance(item.value, str | int) or isinstance(item.value, bool):
                self.problems.error(item.line, f"{path}[{index}]", N_("must be a string"))
                continue
            if "\x00" in str(item.value):
                self.problems.error(item.line, f"{path}[{index}]", N_("contains a NUL character"))
                continue
            out.append(str(item.value))
        return tuple(out)

    def items_of(self, key: str) -> list[Node] | None:
        """The nodes of a key that takes one value or a list of them; None when it is absent."""
        node = self.node(key)
        if node is None:
            return None
        return node.value if isinstance(node.value, list) else [node]

    def address(self, key: str, default_host: str | None = None) -> tuple[str, int] | None:
        """"HOST:PORT" (or a bare port when default_host is given); None when absent."""
        node = self.node(key)
        path = self.child_path(key)
        if node is None or node.value is None:
            return None
        raw = node.value
        if isinstance(raw, int) and not isinstance(raw, bool) and default_host is not None:
            raw = str(raw)
        if not isinstance(raw, str):
            self.problems.error(node.line, path, N_("must be \"HOST:PORT\", not {kind}"),
                                kind=kind(node))
            return None
        parsed = parse_address(raw, default_host)
        if parsed is None:
            self.problems.error(node.line, path,
                                N_("{value} is not HOST:PORT with a port from 1 to 65535"),
                                value=repr(raw))
        return parsed

    def listen(self, key: str, default: str) -> str:
        """A listen setting as written: a port or "ADDRESS:PORT" (kept as text for the web
        server's config)."""
        node = self.node(key)
        if node is None or node.value is None:
            return default
        raw = node.value
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str) or parse_address(raw, _ANY_HOST) is None:
            self.problems.error(node.line, self.child_path(key),
                                N_("{value} must be a port or \"ADDRESS:PORT\""), value=repr(raw))
            return default
        return raw

    def finish(self) -> None:
        """Report every key of the mapping that no getter asked for."""
        known = sorted(self.used)
        for key, (line, _node) in self.items.items():
            if key not in self.used:
                import difflib  # only for a mistyped key: every command reads a config

                close = difflib.get_close_matches(key, known, n=1)
                where = self.child_path(key)
                if close:
                    self.problems.error(line, where, N_("unknown key (did you mean {close}?)"),
                                        close=repr(close[0]))
                elif known:
                    self.problems.error(line, where, N_("unknown key; known keys: {known}"),
                                        known=", ".join(known))
                else:
                    self.problems.error(line, where, N_("unknown key"))
