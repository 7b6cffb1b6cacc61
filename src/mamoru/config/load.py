"""YAML config -> `Settings`, strictly: unknown keys are errors, and every problem is reported at
once with its place, as `FILE:LINE: path.to.key: message`.

The YAML is parsed with PyYAML's SafeLoader composer (the `yaml.safe_load` semantics) into nodes
that keep their line numbers; aliases, anchors, merge keys and non-standard tags are refused (a
config has no use for them, and they are how "billion laughs" documents blow up a parser).
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mamoru.config import defaults as D
from mamoru.config.model import (
    AcmeSettings,
    AlertSettings,
    Challenge,
    CheckSettings,
    Eab,
    EmailAlerts,
    MetricsSettings,
    Paths,
    RenewalSettings,
    Secret,
    Server,
    Settings,
    Site,
    WebhookAlerts,
)
from mamoru.config.names import NameError_, check_site_name, normalize_domain
from mamoru.errors import ConfigError, ConfigProblem
from mamoru.netaddr import is_loopback, parse_address

_STANDARD_TAGS = {
    "tag:yaml.org,2002:" + t
    for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
}
_MAX_BYTES = 1024 * 1024  # a clinic's config is a few kilobytes; refuse absurd input early
_MAX_SECRET_BYTES = 64 * 1024
_MAX_DEPTH = 32


def find_config_path(explicit: str | None) -> str:
    """The config file to use: `--config`, else $MAMORU_CONFIG, else /etc/mamoru/config.yaml."""
    return explicit or os.environ.get(D.CONFIG_ENV) or D.CONFIG_PATH


def load_config(path: str) -> Settings:
    """Read and validate the config at `path`. Raises ConfigError listing every problem."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_BYTES + 1)
            mode = os.fstat(handle.fileno()).st_mode
    except FileNotFoundError:
        raise ConfigError(
            [ConfigProblem(path, None, "", "no such file (give one with --config FILE)")]
        ) from None
    except OSError as error:
        raise ConfigError(
            [ConfigProblem(path, None, "", f"cannot read: {error.strerror}")]
        ) from None
    if len(data) > _MAX_BYTES:
        raise ConfigError([ConfigProblem(path, None, "", "file is larger than 1 MiB")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError([ConfigProblem(path, None, "", f"not UTF-8 text: {error}")]) from None
    return load_config_text(text, path, file_mode=mode)


def load_config_text(
    text: str, filename: str = "<config>", file_mode: int | None = None
) -> Settings:
    """Validate config `text` (named `filename` in messages). Raises ConfigError."""
    ctx = _Context(filename)
    root = _parse(text, ctx)
    settings = None
    if root is not None:
        settings = _build(root, ctx, file_mode)
    if ctx.problems:
        raise ConfigError(ctx.problems)
    assert settings is not None
    return settings


# --- YAML with line numbers -----------------------------------------------------------------


@dataclass
class _Node:
    line: int  # 1-based
    value: Any  # dict[str, tuple[int, _Node]] | list[_Node] | scalar


class _Context:
    def __init__(self, filename: str) -> None:
        self.file = filename
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def error(self, line: int | None, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(self.file, line, path, message))

    def warn(self, line: int | None, path: str, message: str) -> None:
        self.warnings.append(ConfigProblem(self.file, line, path, message, "warning"))


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and anchors while composing."""

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError(
                None, None, "aliases (*name) are not allowed in a mamoru config", event.start_mark
            )
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if getattr(event, "anchor", None) is not None:
            raise yaml.MarkedYAMLError(
                None, None, "anchors (&name) are not allowed in a mamoru config", event.start_mark
            )
        return super().compose_node(parent, index)


# libyaml's parser, when PyYAML was built with it: 30 times faster on a vendor's config with a
# thousand sites, which `mamoru status` reads on every call. It composes in C, where
# _StrictLoader's hook cannot run, so _refuse_aliases scans its events first.
_CLoader: type[yaml.CSafeLoader] | None = getattr(yaml, "CSafeLoader", None)


def _refuse_aliases(text: str) -> None:
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        mark: Any = event.start_mark  # libyaml's Mark: the same .line as the Python one
        if isinstance(event, yaml.AliasEvent):
            raise yaml.MarkedYAMLError(
                None, None, "aliases (*name) are not allowed in a mamoru config", mark
            )
        if getattr(event, "anchor", None) is not None:
            raise yaml.MarkedYAMLError(
                None, None, "anchors (&name) are not allowed in a mamoru config", mark
            )


def _parse(text: str, ctx: _Context) -> _Node | None:
    loader = _StrictLoader(text) if _CLoader is None else _CLoader(text)
    try:
        if _CLoader is not None:
            _refuse_aliases(text)
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        ctx.error(line, "", f"YAML: {error.problem or error.context}")
        return None
    except yaml.YAMLError as error:
        # A ReaderError (a control character, say) has no mark, only a character position.
        position = getattr(error, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else None
        ctx.error(line, "", f"YAML: {str(error).splitlines()[0]}")
        return None
    finally:
        loader.dispose()
    if node is None:
        ctx.error(1, "", "the config is empty (it needs at least acme: and sites:)")
        return None
    return _convert(node, loader, ctx, "")


def _convert(node: Node, loader: yaml.SafeLoader | yaml.CSafeLoader, ctx: _Context,
             path: str, depth: int = 0) -> _Node | None:
    line = node.start_mark.line + 1
    if depth > _MAX_DEPTH:  # a config is a few levels deep; refuse before Python's stack runs out
        ctx.error(line, path, f"nested more than {_MAX_DEPTH} levels deep")
        return None
    if node.tag not in _STANDARD_TAGS:
        ctx.error(line, path, f"the YAML tag {node.tag!r} is not allowed")
        return None
    if isinstance(node, MappingNode):
        items: dict[str, tuple[int, _Node]] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                ctx.error(key_line, path, "merge keys (<<) are not allowed")
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag not in _STANDARD_TAGS:
                ctx.error(key_line, path, "keys must be plain strings")
                continue
            key = str(key_node.value)
            if key == "<<":
                ctx.error(key_line, path, "merge keys (<<) are not allowed")
                continue
            child_path = f"{path}.{key}" if path else key
            if key in items:
                ctx.error(key_line, child_path, f"duplicate key (first at line {items[key][0]})")
                continue
            child = _convert(value_node, loader, ctx, child_path, depth + 1)
            if child is not None:
                items[key] = (key_line, child)
        return _Node(line, items)
    if isinstance(node, SequenceNode):
        values = []
        for index, item in enumerate(node.value):
            child = _convert(item, loader, ctx, f"{path}[{index}]", depth + 1)
            if child is not None:
                values.append(child)
        return _Node(line, values)
    try:
        value = loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, OverflowError) as error:
        # ValueError: an integer of more than 4300 digits (Python's int() limit), for one.
        ctx.error(line, path, f"bad value: {str(error).splitlines()[0][:200]}")
        return None
    return _Node(line, value)


# --- reading typed values ---------------------------------------------------------------------

_MISSING: Any = object()


class _Map:
    """Reads keys of one YAML mapping, records problems, and reports unknown keys at finish()."""

    def __init__(self, ctx: _Context, node: _Node | None, path: str, *, required: bool = False,
                 parent_line: int | None = None) -> None:
        self.ctx = ctx
        self.path = path
        self.line = node.line if node else parent_line
        self.items: dict[str, tuple[int, _Node]] = {}
        self.used: set[str] = set()
        self.present = node is not None
        if node is not None and not isinstance(node.value, dict):
            if not (node.value is None and not required):
                ctx.error(node.line, path, f"must be a mapping (key: value), not {_kind(node)}")
            self.present = node.value is not None and False
        elif node is not None:
            self.items = node.value
        elif required:
            ctx.error(parent_line, path, "is required")

    def _child_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def node(self, key: str) -> _Node | None:
        self.used.add(key)
        entry = self.items.get(key)
        return entry[1] if entry else None

    def key_line(self, key: str) -> int | None:
        entry = self.items.get(key)
        return entry[0] if entry else self.line

    def has(self, key: str) -> bool:
        return key in self.items

    def sub(self, key: str, *, required: bool = False) -> _Map:
        return _Map(self.ctx, self.node(key), self._child_path(key), required=required,
                    parent_line=self.line)

    def value(self, key: str, types: tuple[type, ...], what: str, default: Any = _MISSING) -> Any:
        node = self.node(key)
        path = self._child_path(key)
        if node is None or node.value is None:
            if default is _MISSING:
                self.ctx.error(self.line, path, "is required")
                return None
            return default
        value = node.value
        if isinstance(value, bool) and bool not in types:
            self.ctx.error(node.line, path, f"must be {what}, not a true/false value")
            return default if default is not _MISSING else None
        if not isinstance(value, types):
            self.ctx.error(node.line, path, f"must be {what}, not {_kind(node)}")
            return default if default is not _MISSING else None
        return value

    def text(self, key: str, default: Any = _MISSING, *, choices: tuple[str, ...] | None = None
            ) -> Any:
        value = self.value(key, (str,), "a string", default)
        if isinstance(value, str) and choices is not None and value not in choices:
            self.ctx.error(self.key_line(key), self._child_path(key),
                           f"{value!r} is not one of: {', '.join(choices)}")
        if isinstance(value, str) and "\x00" in value:
            self.ctx.error(self.key_line(key), self._child_path(key), "contains a NUL character")
            return None
        return value

    def number(self, key: str, default: Any, *, minimum: float, maximum: float,
               integer: bool = False) -> Any:
        types: tuple[type, ...] = (int,) if integer else (int, float)
        value = self.value(key, types, "a whole number" if integer else "a number", default)
        if isinstance(value, int | float) and not (minimum <= value <= maximum):
            self.ctx.error(self.key_line(key), self._child_path(key),
                           f"{value} is out of range ({minimum:g} to {maximum:g})")
            return default
        return value

    def flag(self, key: str, default: bool) -> bool:
        return bool(self.value(key, (bool,), "true or false", default))

    def path_value(self, key: str, default: Any = _MISSING) -> Any:
        value = self.text(key, default)
        if isinstance(value, str) and value and not os.path.isabs(value):
            self.ctx.error(self.key_line(key), self._child_path(key),
                           f"{value!r} must be an absolute path")
        return value

    def argv(self, key: str) -> tuple[str, ...] | None:
        node = self.node(key)
        path = self._child_path(key)
        if node is None or node.value is None:
            return None
        if not isinstance(node.value, list) or not node.value:
            self.ctx.error(node.line, path,
                           "must be a list of program and arguments, e.g. [nginx, -t] "
                           "(mamoru never runs a shell string)")
            return None
        out = []
        for index, item in enumerate(node.value):
            if not isinstance(item.value, str | int) or isinstance(item.value, bool):
                self.ctx.error(item.line, f"{path}[{index}]", "must be a string")
                continue
            if "\x00" in str(item.value):
                self.ctx.error(item.line, f"{path}[{index}]", "contains a NUL character")
                continue
            out.append(str(item.value))
        return tuple(out)

    def finish(self) -> None:
        known = sorted(self.used)
        for key, (line, _node) in self.items.items():
            if key not in self.used:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                allowed = f"; known keys: {', '.join(known)}" if known and not close else ""
                self.ctx.error(line, self._child_path(key), f"unknown key{hint}{allowed}")


def _kind(node: _Node) -> str:
    value = node.value
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return f"a number ({value})"
    return f"a {type(value).__name__} ({value!r})"


def _address(m: _Map, key: str, default_host: str | None = None) -> tuple[str, int] | None:
    """Read "HOST:PORT" (or a bare port when default_host is given)."""
    node = m.node(key)
    path = m._child_path(key)
    if node is None or node.value is None:
        return None
    raw = node.value
    if isinstance(raw, int) and not isinstance(raw, bool) and default_host is not None:
        raw = str(raw)
    if not isinstance(raw, str):
        m.ctx.error(node.line, path, f"must be \"HOST:PORT\", not {_kind(node)}")
        return None
    parsed = parse_address(raw, default_host)
    if parsed is None:
        m.ctx.error(node.line, path, f"{raw!r} is not HOST:PORT with a port from 1 to 65535")
    return parsed


def _secret(m: _Map, key: str, file_key: str, ctx: _Context, file_mode: int | None
            ) -> Secret | None:
    """A secret given inline (`key`) or in a file (`file_key`), never both."""
    inline = m.text(key, None)
    file_path = m.path_value(file_key, None)
    if inline and file_path:
        ctx.error(m.key_line(key), m._child_path(key), f"give {key} or {file_key}, not both")
        return None
    if inline:
        if file_mode is not None and file_mode & stat.S_IROTH:
            ctx.warn(m.key_line(key), m._child_path(key),
                     "this config holds a secret and is readable by every user; "
                     "run `chmod 600` on it or move the secret to " + file_key)
        return Secret(inline.strip())
    if file_path:
        where = (m.key_line(file_key), m._child_path(file_key))
        try:
            # O_NONBLOCK: a FIFO must not hang the loader; only a regular file is read, and
            # only so much of it (/dev/zero as a secret file must not eat the memory).
            fd = os.open(file_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                raw = handle.read(_MAX_SECRET_BYTES + 1) if stat.S_ISREG(mode) else b""
        except OSError as error:
            ctx.error(*where, f"cannot read {file_path}: {error.strerror}")
            return None
        if not stat.S_ISREG(mode):
            ctx.error(*where, f"{file_path} is not a regular file")
            return None
        if len(raw) > _MAX_SECRET_BYTES:
            ctx.error(*where, f"{file_path} is larger than 64 KiB (a secret file holds one line)")
            return None
        try:
            value = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            ctx.error(*where, f"{file_path} is not UTF-8 text")
            return None
        if not value:
            ctx.error(m.key_line(file_key), m._child_path(file_key), f"{file_path} is empty")
            return None
        if mode & stat.S_IROTH:
            ctx.warn(m.key_line(file_key), m._child_path(file_key),
                     f"{file_path} holds a secret and is readable by every user; chmod 600 it")
        return Secret(value)
    return None


# --- the schema -------------------------------------------------------------------------------


def _build(root: _Node, ctx: _Context, file_mode: int | None) -> Settings | None:
    top = _Map(ctx, root, "", required=True)
    if not isinstance(root.value, dict):
        return None
    acme = _acme(top.sub("acme"), ctx, file_mode)
    paths = _paths(top.sub("paths"))
    renewal = _renewal(top.sub("renewal"))
    alerts = _alerts(top.sub("alerts"), ctx, file_mode)
    metrics = _metrics(top.sub("metrics"))
    check = _check(top.sub("check"))
    sites = list(_sites(top, ctx))
    top.finish()
    if ctx.problems:
        return None
    return Settings(
        config_file=ctx.file,
        acme=acme,
        paths=paths,
        sites=tuple(sites),
        renewal=renewal,
        alerts=alerts,
        metrics=metrics,
        check=check,
        warnings=tuple(str(w) for w in ctx.warnings),
    )


def _acme(m: _Map, ctx: _Context, file_mode: int | None) -> AcmeSettings:
    directory = m.text("directory", D.DEFAULTS["acme.directory"])
    url = D.DIRECTORIES.get(directory, directory) if isinstance(directory, str) else ""
    if isinstance(directory, str) and directory not in D.DIRECTORIES:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(directory)
            _ = parts.port  # raises ValueError for a port out of range or not a number
        except ValueError as error:
            ctx.error(m.key_line("directory"), "acme.directory",
                      f"{directory!r} is not a valid URL ({error})")
            parts = None
        plain_local = parts is not None and parts.scheme == "http" and is_loopback(
            parts.hostname or "")
        if parts is None:
            pass
        elif parts.scheme != "https" and not plain_local:
            ctx.error(m.key_line("directory"), "acme.directory",
                      f"{directory!r} must be letsencrypt, letsencrypt-staging or an https:// URL")
        elif not parts.hostname:
            ctx.error(m.key_line("directory"), "acme.directory", f"{directory!r} has no host")
    ca_bundle = m.path_value("ca_bundle", None)
    if isinstance(ca_bundle, str) and ca_bundle and not os.path.isfile(ca_bundle):
        ctx.error(m.key_line("ca_bundle"), "acme.ca_bundle", f"{ca_bundle} does not exist")
    contact_node = m.node("contact")
    contacts: list[str] = []
    if contact_node is not None and contact_node.value is not None:
        raw = contact_node.value
        items = raw if isinstance(raw, list) else [contact_node]
        for item in items:
            value = item.value
            if not isinstance(value, str) or "@" not in value or any(c in value for c in " ,<>"):
                ctx.error(item.line, "acme.contact", f"{value!r} is not an email address")
                continue
            contacts.append(value if value.startswith("mailto:") else "mailto:" + value)
    eab = None
    eab_map = m.sub("eab")
    if eab_map.present:
        kid = eab_map.text("kid")
        hmac = _secret(eab_map, "hmac_key", "hmac_key_file", ctx, file_mode)
        if hmac is None and not (eab_map.has("hmac_key") or eab_map.has("hmac_key_file")):
            ctx.error(eab_map.line, "acme.eab", "needs hmac_key or hmac_key_file")
        if kid and hmac:
            eab = Eab(kid=kid, hmac_key=hmac)
        eab_map.finish()
    profile = m.text("profile", None)
    settings = AcmeSettings(
        directory=url,
        ca_bundle=ca_bundle,
        contact=tuple(contacts),
        eab=eab,
        profile=profile,
        max_concurrent_orders=m.number("max_concurrent_orders",
                                       D.DEFAULTS["acme.max_concurrent_orders"],
                                       minimum=1, maximum=64, integer=True),
        timeout=m.number("timeout", D.DEFAULTS["acme.timeout"], minimum=1, maximum=600),
        order_timeout=m.number("order_timeout", D.DEFAULTS["acme.order_timeout"], minimum=5,
                               maximum=86400),
    )
    m.finish()
    return settings


def _paths(m: _Map) -> Paths:
    paths = Paths(
        state=m.path_value("state", D.DEFAULTS["paths.state"]),
        live=m.path_value("live", D.DEFAULTS["paths.live"]),
        event_log=m.path_value("event_log", D.DEFAULTS["paths.event_log"]),
        event_log_max_bytes=m.number("event_log_max_bytes",
                                     D.DEFAULTS["paths.event_log_max_bytes"],
                                     minimum=4096, maximum=2**40, integer=True),
        event_log_keep=m.number("event_log_keep", D.DEFAULTS["paths.event_log_keep"], minimum=0,
                                maximum=1000, integer=True),
        key_group=m.text("key_group", None),
    )
    if paths.key_group:
        import grp

        try:
            grp.getgrnam(paths.key_group)
        except KeyError:
            m.ctx.error(m.key_line("key_group"), "paths.key_group",
                        f"there is no group {paths.key_group!r} on this machine")
    m.finish()
    return paths


def _renewal(m: _Map) -> RenewalSettings:
    out = RenewalSettings(
        check_interval_hours=m.number("check_interval_hours",
                                      D.DEFAULTS["renewal.check_interval_hours"],
                                      minimum=0.01, maximum=24 * 7),
        retry_first_seconds=m.number("retry_first_seconds",
                                     D.DEFAULTS["renewal.retry_first_seconds"],
                                     minimum=1, maximum=86400),
        retry_max_seconds=m.number("retry_max_seconds", D.DEFAULTS["renewal.retry_max_seconds"],
                                   minimum=1, maximum=7 * 86400),
        permanent_retry_seconds=m.number("permanent_retry_seconds",
                                         D.DEFAULTS["renewal.permanent_retry_seconds"],
                                         minimum=1, maximum=7 * 86400),
        jitter_fraction=m.number("jitter_fraction", D.DEFAULTS["renewal.jitter_fraction"],
                                 minimum=0, maximum=0.5),
    )
    m.finish()
    return out


def _alerts(m: _Map, ctx: _Context, file_mode: int | None) -> AlertSettings:
    email = None
    em = m.sub("email")
    if em.present:
        to_node = em.node("to")
        to: list[str] = []
        if to_node is None:
            ctx.error(em.line, "alerts.email.to", "is required")
        else:
            for item in to_node.value if isinstance(to_node.value, list) else [to_node]:
                if not isinstance(item.value, str) or "@" not in item.value:
                    ctx.error(item.line, "alerts.email.to", f"{item.value!r} is not an address")
                else:
                    to.append(item.value)
        email = EmailAlerts(
            host=em.text("host"),
            port=em.number("port", 587, minimum=1, maximum=65535, integer=True),
            sender=em.text("from"),
            to=tuple(to),
            starttls=em.flag("starttls", True),
            username=em.text("username", None),
            password=_secret(em, "password", "password_file", ctx, file_mode),
            timeout=em.number("timeout", 10, minimum=1, maximum=120),
            ca_bundle=em.path_value("ca_bundle", None),
        )
        em.finish()
    webhook = None
    wh = m.sub("webhook")
    if wh.present:
        url = wh.text("url")
        if isinstance(url, str) and not _http_url(url):
            ctx.error(wh.key_line("url"), "alerts.webhook.url", f"{url!r} is not an http(s) URL")
        webhook = WebhookAlerts(
            url=url,
            secret=_secret(wh, "secret", "secret_file", ctx, file_mode),
            timeout=wh.number("timeout", 10, minimum=1, maximum=120),
            ca_bundle=wh.path_value("ca_bundle", None),
        )
        wh.finish()
    out = AlertSettings(
        email=email,
        webhook=webhook,
        after_failures=m.number("after_failures", D.DEFAULTS["alerts.after_failures"], minimum=1,
                                maximum=1000, integer=True),
        days_left=m.number("days_left", D.DEFAULTS["alerts.days_left"], minimum=0, maximum=365),
        remind_hours=m.number("remind_hours", D.DEFAULTS["alerts.remind_hours"], minimum=1,
                              maximum=24 * 30),
    )
    m.finish()
    return out


def _check(m: _Map) -> CheckSettings:
    out = CheckSettings(
        after_install=m.flag("after_install", True),
        ca_bundle=m.path_value("ca_bundle", None),
        timeout=m.number("timeout", 5.0, minimum=0.5, maximum=120),
    )
    m.finish()
    return out


def _http_url(url: str) -> bool:
    """True for a well-formed http(s) URL with a host (and a valid port, if any)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _metrics(m: _Map) -> MetricsSettings:
    listen = _address(m, "listen", default_host="127.0.0.1")
    out = MetricsSettings(listen=listen, textfile=m.path_value("textfile", None))
    m.finish()
    return out


def _sites(top: _Map, ctx: _Context) -> Iterator[Site]:
    node = top.node("sites")
    if node is None or node.value is None:
        ctx.error(top.line, "sites", "is required (at least one site with its domains)")
        return
    if not isinstance(node.value, dict):
        ctx.error(node.line, "sites", f"must be a mapping of site name to site, not {_kind(node)}")
        return
    seen: dict[str, str] = {}
    for name, (line, site_node) in node.value.items():
        path = f"sites.{name}"
        try:
            check_site_name(name)
        except NameError_ as error:
            ctx.error(line, path, str(error))
            continue
        site = _site(name, _Map(ctx, site_node, path, required=True, parent_line=line), ctx, line)
        if site is None:
            continue
        for domain in site.domains:
            if domain in seen:
                ctx.warn(line, path, f"{domain} is also a name of site {seen[domain]!r}")
            seen.setdefault(domain, name)
        yield site


def _site(name: str, m: _Map, ctx: _Context, line: int) -> Site | None:
    before = len(ctx.problems)
    domains: list[str] = []
    node = m.node("domains")
    if node is None or not node.value:
        ctx.error(m.line, f"{m.path}.domains", "is required: a list of the site's names")
    elif not isinstance(node.value, list):
        ctx.error(node.line, f"{m.path}.domains", f"must be a list of names, not {_kind(node)}")
    else:
        if len(node.value) > 100:
            ctx.error(node.line, f"{m.path}.domains", "at most 100 names per certificate")
        for index, item in enumerate(node.value):
            item_path = f"{m.path}.domains[{index}]"
            try:
                domain = normalize_domain(item.value)
            except NameError_ as error:
                ctx.error(item.line, item_path, str(error))
                continue
            if domain in domains:
                ctx.error(item.line, item_path, f"{domain} is listed twice")
                continue
            domains.append(domain)
    key = m.text("key", D.DEFAULTS["site.key"], choices=D.KEY_TYPES)
    profile = m.text("profile", None)
    challenge = _challenge(m.sub("challenge"), ctx, domains)
    server = _server(m.sub("server"), ctx)
    m.finish()
    if len(ctx.problems) > before:
        return None
    return Site(name=name, domains=tuple(domains), key=key, profile=profile,
                challenge=challenge, server=server, line=line)


def _challenge(m: _Map, ctx: _Context, domains: list[str]) -> Challenge:
    ctype = m.text("type", D.DEFAULTS["challenge.type"], choices=D.CHALLENGE_TYPES)
    webroot = m.path_value("webroot", None)
    standalone = _address(m, "standalone", default_host="127.0.0.1")
    public = m.flag("standalone_public", False)
    if webroot and standalone:
        ctx.error(m.key_line("standalone"), m.path, "give webroot or standalone, not both")
    elif not webroot and not standalone:
        ctx.error(m.line, m.path,
                  "http-01 needs webroot: DIR (a directory your web server serves) or "
                  "standalone: \"HOST:PORT\" (mamoru answers on that address itself)")
    if standalone and not is_loopback(standalone[0]) and not public:
        ctx.error(m.key_line("standalone"), f"{m.path}.standalone",
                  f"{standalone[0]} is not a loopback address; mamoru answers challenges on "
                  "other addresses only with standalone_public: true")
    wildcards = [d for d in domains if d.startswith("*.")]
    if wildcards:
        ctx.error(m.line, m.path, f"{wildcards[0]} is a wildcard: http-01 cannot validate "
                  "wildcard names (they need dns-01)")
    m.finish()
    return Challenge(type=ctype or "http-01", webroot=webroot, standalone=standalone)


def _server(m: _Map, ctx: _Context) -> Server:
    if not m.present:
        m.finish()
        return Server()
    stype = m.text("type", D.DEFAULTS["server.type"], choices=D.SERVER_TYPES)
    mode = m.text("mode", D.DEFAULTS["server.mode"], choices=D.SERVER_MODES)
    listen = m.sub("listen")
    https = _listen(listen, "https", str(D.DEFAULTS["server.listen.https"]))
    http = _listen(listen, "http", str(D.DEFAULTS["server.listen.http"]))
    listen.finish()
    server = Server(
        type=stype,
        mode=mode,
        conf_dir=m.path_value("conf_dir", None),
        listen_https=https,
        listen_http=http,
        root=m.path_value("root", None),
        test=m.argv("test"),
        reload=m.argv("reload"),
        verify=_address(m, "verify", default_host="127.0.0.1"),
        redirect=m.flag("redirect", bool(D.DEFAULTS["server.redirect"])),
        hsts=m.number("hsts", D.DEFAULTS["server.hsts"], minimum=0, maximum=2 * 365 * 86400,
                      integer=True),
        command_timeout=m.number("command_timeout", D.DEFAULTS["server.command_timeout"],
                                 minimum=1, maximum=3600),
        verify_timeout=m.number("verify_timeout", D.DEFAULTS["server.verify_timeout"], minimum=0.5,
                                maximum=600),
    )
    if stype in ("nginx", "apache") and not server.conf_dir:
        ctx.error(m.line, f"{m.path}.conf_dir",
                  f"is required for {stype}: the directory mamoru writes <site>.conf into")
    if stype in ("nginx", "apache") and mode == "site" and not server.root:
        ctx.error(m.line, f"{m.path}.root", "is required in site mode: the document root")
    if stype == "command" and not server.reload:
        ctx.error(m.line, f"{m.path}.reload", "is required for type command: the reload argv")
    m.finish()
    return server


def _listen(m: _Map, key: str, default: str) -> str:
    node = m.node(key)
    if node is None or node.value is None:
        return default
    raw = str(node.value) if isinstance(node.value, int) and not isinstance(node.value, bool) \
        else node.value
    any_host = "0.0.0.0"  # noqa: S104 - only parsed, never bound
    if not isinstance(raw, str) or parse_address(raw, any_host) is None:
        m.ctx.error(node.line, f"{m.path}.{key}", f"{raw!r} must be a port or \"ADDRESS:PORT\"")
        return default
    return raw
