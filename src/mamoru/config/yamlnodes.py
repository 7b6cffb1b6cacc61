"""YAML text -> a tree of `Node`s that keep their line numbers, and the `Problems` of one file.

The YAML is composed with PyYAML's SafeLoader (the `yaml.safe_load` semantics), or libyaml's
CSafeLoader when PyYAML was built with it. Aliases, anchors, merge keys and non-standard tags are
refused: a config has no use for them, and they are how "billion laughs" documents blow up a
parser. Every problem is recorded with its line and the config path it belongs to, and composing
goes on where it can, so the user sees all of them at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.nodes import Node as YamlNode

from mamoru.errors import ConfigProblem
from mamoru.i18n import N_, _

_STANDARD_TAGS = {
    "tag:yaml.org,2002:" + t
    for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
}
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_MAX_DEPTH = 32
# The pure-Python composer stops at twice that, so a document that is merely too deep gets the
# same located message from _convert with either composer.
_MAX_COMPOSE_DEPTH = 2 * _MAX_DEPTH


@dataclass
class Node:
    """One YAML value and the line it starts on.

    `value` is a dict of key -> (line of the key, Node) for a mapping, a list of Nodes for a
    sequence, or the constructed scalar (str, int, float, bool, None, date/datetime).
    """

    line: int  # 1-based
    value: Any


class Problems:
    """The errors and warnings found in one config file, in the order they were found."""

    def __init__(self, filename: str) -> None:
        self.file = filename
        self.errors: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []
        # Files the loader looked at besides the config, as they were (config/cache.py).
        self.files: dict[str, list[int | str] | None] = {}

    def observe(self, path: str, *, content: bool = False) -> None:
        """Note a file the loader is about to look at: kept Settings of this config are used
        again only while it stays as it is now (config/cache.py; `content`: what is in it
        counts, not only its size and times)."""
        if path not in self.files:
            from mamoru.config.cache import file_signature

            self.files[path] = file_signature(path, content=content)

    def error(self, line: int | None, path: str, message: str, /, **params: Any) -> None:
        """Record an error. `message` is an English message id; with `params` it is a template
        (`{name}` placeholders) filled with them, so it can be translated when shown."""
        self.errors.append(_problem(self.file, line, path, message, "error", params))

    def warn(self, line: int | None, path: str, message: str, /, **params: Any) -> None:
        self.warnings.append(_problem(self.file, line, path, message, "warning", params))


def _problem(file: str, line: int | None, path: str, message: str, severity: str,
             params: dict[str, Any]) -> ConfigProblem:
    text = message.format(**params) if params else message
    return ConfigProblem(file, line, path, text, severity, template=message,
                         params=tuple(params.items()))


def _word(value: str) -> str:
    """One of mamoru's words in the reader's language: "a list", or "a number (42)" (the word
    translated, what follows it in parentheses kept)."""
    word, space, rest = value.partition(" (")
    if space and value.endswith(")") and _(word) != word:
        return f"{_(word)} ({rest}"
    return _(value)


def localized(problem: ConfigProblem) -> str:
    """`str(problem)` in the language mamoru.i18n chose: FILE:LINE, the key and its words
    (a message that is not in the catalog, e.g. from a library, stays as it is)."""
    where = f"{problem.file}:{problem.line}" if problem.line is not None else problem.file
    label = f"{problem.path}: " if problem.path else ""
    prefix = _("warning: ") if problem.severity == "warning" else ""
    message = problem.message
    if problem.template:
        # a value that is itself one of mamoru's words ("a string", "a list") is translated
        values = {key: _word(value) if isinstance(value, str) and value else value
                  for key, value in problem.params}
        try:
            message = _(problem.template).format(**values) if values else _(problem.template)
        except (KeyError, IndexError, ValueError):  # a broken translation: the English text
            message = problem.message
    return f"{where}: {prefix}{label}{message}"


def kind(node: Node) -> str:
    """What a node holds, in the words of an error message ("a list", "a number (3)")."""
    value = node.value
    if isinstance(value, dict):
        return N_("a mapping")
    if isinstance(value, list):
        return N_("a list")
    if value is None:
        return N_("empty")
    if isinstance(value, bool):
        return N_("true/false")
    if isinstance(value, int | float):
        return N_("a number") + f" ({value})"
    return f"a {type(value).__name__} ({value!r})"


def compose(text: str, problems: Problems) -> Node | None:
    """The document in `text` as a Node tree; None (with the problem recorded) when it is not
    YAML mamoru accepts or is empty."""
    loader: yaml.SafeLoader | yaml.CSafeLoader | None = None
    try:
        # PyYAML's own reader already checks the characters here (a ReaderError).
        loader = _StrictLoader(text) if _CLoader is None else _CLoader(text)
        # An anchor needs "&" and an alias "*": a config with neither skips the second pass.
        if _CLoader is not None and ("&" in text or "*" in text):
            for event in yaml.parse(text, Loader=yaml.CSafeLoader):
                _refuse_alias_or_anchor(event)
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        problems.error(line, "", "YAML: {problem}", problem=error.problem or error.context)
        return None
    except yaml.YAMLError as error:
        # A ReaderError (a control character, say) has no mark, only a character position.
        position = getattr(error, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else None
        problems.error(line, "", "YAML: {problem}", problem=str(error).splitlines()[0])
        return None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        problems.error(1, "", N_("the config is empty (it needs at least acme: and sites:)"))
        return None
    return _convert(node, loader, problems, "")


def _refuse_alias_or_anchor(event: Any) -> None:
    """Raise a located YAML error for an alias or an anchor event (libyaml's marks have the
    same .line as the Python ones)."""
    mark: Any = event.start_mark
    if isinstance(event, yaml.AliasEvent):
        raise yaml.MarkedYAMLError(
            None, None, "aliases (*name) are not allowed in a mamoru config", mark
        )
    if getattr(event, "anchor", None) is not None:
        raise yaml.MarkedYAMLError(
            None, None, "anchors (&name) are not allowed in a mamoru config", mark
        )


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and anchors while composing, and documents nested so
    deep that its recursive composer would exhaust Python's stack (libyaml's composer, in C,
    has no such limit: there `_convert` refuses them, with the path)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: YamlNode | None, index: Any) -> YamlNode | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        _refuse_alias_or_anchor(event)
        if self._depth > _MAX_COMPOSE_DEPTH:
            raise yaml.MarkedYAMLError(
                None, None, f"nested more than {_MAX_DEPTH} levels deep", event.start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# libyaml's parser, when PyYAML was built with it: 30 times faster on a vendor's config with a
# thousand sites, which `mamoru status` reads on every call. It composes in C, where
# _StrictLoader's hook cannot run, so compose() scans its events first.
_CLoader: type[yaml.CSafeLoader] | None = getattr(yaml, "CSafeLoader", None)


def _convert(node: YamlNode, loader: yaml.SafeLoader | yaml.CSafeLoader, problems: Problems,
             path: str, depth: int = 0) -> Node | None:
    line = node.start_mark.line + 1
    if depth > _MAX_DEPTH:  # a config is a few levels deep; refuse before Python's stack runs out
        problems.error(line, path, N_("nested more than {depth} levels deep"), depth=_MAX_DEPTH)
        return None
    if node.tag not in _STANDARD_TAGS:
        problems.error(line, path, N_("the YAML tag {tag} is not allowed"), tag=repr(node.tag))
        return None
    if isinstance(node, MappingNode):
        items: dict[str, tuple[int, Node]] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                problems.error(key_line, path, N_("merge keys (<<) are not allowed"))
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag not in _STANDARD_TAGS:
                problems.error(key_line, path, N_("keys must be plain strings"))
                continue
            key = str(key_node.value)
            if key == "<<":  # quoted, so not tagged as a merge key, but meant as one
                problems.error(key_line, path, N_("merge keys (<<) are not allowed"))
                continue
            child_path = f"{path}.{key}" if path else key
            if key in items:
                problems.error(key_line, child_path,
                               f"duplicate key (first at line {items[key][0]})")
                continue
            child = _convert(value_node, loader, problems, child_path, depth + 1)
            if child is not None:
                items[key] = (key_line, child)
        return Node(line, items)
    if isinstance(node, SequenceNode):
        values = []
        for index, item in enumerate(node.value):
            child = _convert(item, loader, problems, f"{path}[{index}]", depth + 1)
            if child is not None:
                values.append(child)
        return Node(line, values)
    if node.tag == _STR_TAG and isinstance(node.value, str):
        return Node(line, node.value)  # what SafeConstructor makes of it, without its machinery
    try:
        value = loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, OverflowError) as error:
        # ValueError: an integer of more than 4300 digits (Python's int() limit), for one.
        problems.error(line, path, N_("bad value: {problem}"),
                       problem=str(error).splitlines()[0][:200])
        return None
    return Node(line, value)
