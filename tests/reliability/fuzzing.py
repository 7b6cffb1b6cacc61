"""Hypothesis strategies and the property for fuzzing the config loader, shared by the CI test
(tests/reliability/test_config_fuzz.py, a few hundred examples) and the dedicated run
(scripts/fuzz_config.py, 10,000 or more).

Three kinds of input, mixed:
* config-shaped documents: the real schema's keys with values of every type, hostile names,
  hostile paths and random extra keys, dumped as YAML in random styles;
* those documents mutated as text: YAML syntax (anchors, aliases, merge keys, tags, directives,
  flow and block scalars, tabs) spliced in, characters dropped or doubled;
* arbitrary text, including control characters and non-BMP code points.

The property: `load_config_text` returns a `Settings` whose names are safe to use in paths, or
raises `ConfigError` whose every problem names the file and a line within it, and reads
`FILE:LINE: path: message` as the user sees it. Anything else is a traceback, i.e. a bug.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from hypothesis import strategies as st

from mamoru.config.load import load_config_text
from mamoru.config.model import Settings
from mamoru.config.names import SITE_NAME
from mamoru.errors import ConfigError

FILENAME = "fuzz.yaml"
LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
SAFE_DOMAIN = re.compile(rf"(\*\.)?{LABEL}(\.{LABEL})+\Z")

HOSTILE_NAMES = [
    "../etc", "..", ".", "../../etc/passwd", "clinic/../../x", "clinic\x00.example",
    "a" * 300 + ".example", ("b" * 63 + ".") * 5 + "example", "*.*.example", "*.example",
    "a.*.example", "*", "\u0440\u0430ypal.com", "p\u0430ypal.com", "xn--80ak6aa92e.com",
    "xn--zz.example", "-clinic.example", "clinic-.example", "clinic..example", ".clinic.example",
    "clinic.example.", "\uff23\uff2c\uff29\uff2e\uff29\uff23.example", "cl\u200dinic.example",
    "clinic\u202e.example",
    "クリニック.example", "診療所.jp", "clinic.example\n", " clinic.example", "clinic example",
    "127.0.0.1", "[::1]", "::1", "1.2.3.4.5", "clinic.123", "localhost", "%2e%2e",
    "~root", "$(reboot)", "`id`", "clinic;rm -rf /", "C:\\Windows", "clinic.example:443",
    "user@clinic.example", "http://clinic.example/", "😀.example", "\ud800.example", "",
]
HOSTILE_PATHS = [
    "/dev/zero", "/dev/urandom", "/proc/self/mem", "/etc/shadow", "relative/path", "../up",
    "/tmp/\x00nul", "/" + "d" * 5000, "~/x", "", "/nonexistent/dir", "/",
]
SCHEMA: dict[str, list[str]] = {
    "acme": ["directory", "ca_bundle", "contact", "eab", "profile", "max_concurrent_orders",
             "timeout", "order_timeout"],
    "paths": ["state", "live", "event_log", "event_log_max_bytes", "event_log_keep",
              "key_group"],
    "renewal": ["check_interval_hours", "retry_first_seconds", "retry_max_seconds",
                "permanent_retry_seconds", "jitter_fraction"],
    "alerts": ["email", "webhook", "after_failures", "days_left", "remind_hours"],
    "metrics": ["listen", "textfile"],
    "check": ["after_install", "ca_bundle", "timeout"],
}
SITE_KEYS = ["domains", "key", "profile", "challenge", "server"]
CHALLENGE_KEYS = ["type", "webroot", "standalone", "standalone_public"]
SERVER_KEYS = ["type", "mode", "conf_dir", "listen", "root", "test", "reload", "verify",
               "redirect", "hsts", "command_timeout", "verify_timeout"]
YAML_SNIPPETS = [
    "&a ", "*a", "<<: *a", "<<: {x: 1}", "!!python/object/apply:os.system ['id']",
    "!!python/name:os.system", "!custom ", "!!binary aGk=", "!!set {a, b}", "!!omap [a: 1]",
    "%YAML 1.1\n---\n", "%TAG ! tag:x,2000:\n---\n", "---\n", "\n...\n", "? ", "{", "}", "[",
    "]", "|\n  ", ">-\n  ", "\t", "'", '"', "\\", "#", ": ", "- ", "\n  ", "\x00", "\ufeff",
    "1e400", "0x1F", "0o17", ".inf", "-.nan", "~", "null", "yes", "on", "2026-01-01",
    "12:30:00", "1_000", "&b [*b]", "*undefined", "9" * 5000, "1e99999", "[" * 40,
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(HOSTILE_NAMES), st.sampled_from(HOSTILE_PATHS),
    st.sampled_from(["https://ca.example/dir", "letsencrypt", "http://127.0.0.1:1/dir",
                     "127.0.0.1:8080", "0.0.0.0:80", "nginx", "apache", "command", "none",
                     "ec-p256", "rsa-4096", "http-01", "dns-01", "site", "include"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def _section(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    known = st.dictionaries(st.sampled_from(keys), values, max_size=len(keys))
    extra = st.dictionaries(st.text(max_size=10), values, max_size=2)
    return st.builds(lambda a, b: {**b, **a}, known, st.one_of(st.just({}), extra))


domains = st.lists(st.one_of(st.sampled_from(HOSTILE_NAMES),
                             st.from_regex(r"[a-z0-9-]{1,12}(\.[a-z0-9-]{1,12}){1,3}",
                                           fullmatch=True),
                             st.text(max_size=30)), max_size=5)
challenge = st.fixed_dictionaries({}, optional={
    "webroot": st.one_of(st.sampled_from(HOSTILE_PATHS), st.just("/var/www/clinic")),
    "standalone": st.one_of(st.sampled_from(["127.0.0.1:80", "0.0.0.0:80", "[::]:80", "80",
                                             "192.0.2.1:80", "localhost:99999", ":80"]),
                            scalars),
    "standalone_public": st.one_of(st.booleans(), scalars),
    "type": st.one_of(st.just("http-01"), scalars),
})
argv = st.one_of(st.lists(st.one_of(st.text(max_size=10), st.integers(), st.booleans()),
                          max_size=4),
                 st.sampled_from(["systemctl reload nginx", "nginx -s reload; rm -rf /",
                                  "$(touch /tmp/pwned)"]), scalars)
server = st.one_of(_section(SERVER_KEYS), st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["nginx", "apache", "command", "none", "iis"]),
    "conf_dir": st.sampled_from([*HOSTILE_PATHS, "/etc/nginx/conf.d"]),
    "root": st.sampled_from([*HOSTILE_PATHS, "/var/www/clinic"]),
    "reload": argv, "test": argv,
    "listen": st.one_of(st.dictionaries(st.sampled_from(["https", "http", "x"]), scalars),
                        scalars),
}))
site = st.one_of(
    st.fixed_dictionaries({"domains": domains}, optional={
        "challenge": challenge, "server": server,
        "key": st.one_of(st.sampled_from(["ec-p256", "ec-p384", "rsa-2048", "dsa"]), scalars),
        "profile": scalars}),
    _section(SITE_KEYS), values)
site_names = st.one_of(st.sampled_from(HOSTILE_NAMES), st.from_regex(r"[a-z0-9][a-z0-9-]{0,8}",
                                                                     fullmatch=True),
                       st.text(max_size=12))
configs = st.fixed_dictionaries({}, optional={
    "acme": st.one_of(_section(SCHEMA["acme"]), st.fixed_dictionaries(
        {"directory": st.sampled_from(["https://ca.example/dir", "letsencrypt", "ftp://x",
                                       "https://", "http://10.0.0.1/dir"])},
        optional={"eab": st.fixed_dictionaries({}, optional={
            "kid": scalars, "hmac_key": scalars,
            "hmac_key_file": st.sampled_from(HOSTILE_PATHS)})})),
    "paths": _section(SCHEMA["paths"]),
    "renewal": _section(SCHEMA["renewal"]),
    "alerts": _section(SCHEMA["alerts"]),
    "metrics": _section(SCHEMA["metrics"]),
    "check": _section(SCHEMA["check"]),
    "sites": st.one_of(st.dictionaries(site_names, site, max_size=4), values),
    "unknown": values,
})


def _dump(document: Any, flow: bool | None, width: int) -> str:
    try:
        return yaml.safe_dump(document, default_flow_style=flow, width=width,
                              allow_unicode=True, sort_keys=False)
    except (yaml.YAMLError, UnicodeEncodeError, ValueError):
        return repr(document)


documents = st.builds(_dump, configs, st.sampled_from([None, False, True]),
                      st.sampled_from([20, 80, 10000]))


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(documents)
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "double"]))
        if kind == "insert":
            text = text[:at] + draw(st.sampled_from(YAML_SNIPPETS)) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 5)):]
        else:
            text = text[:at] + text[at:at + 20] * 2 + text[at + 20:]
    return text


BASE: dict[str, Any] = {
    "acme": {"directory": "https://ca.example/dir"},
    "sites": {"clinic": {"domains": ["clinic.example"],
                         "challenge": {"webroot": "/var/www/clinic"}}},
}


@st.composite
def near_valid(draw: st.DrawFn) -> str:
    """A valid config with one to three parts replaced by fuzzed ones (explores the semantic
    checks, which fully random documents rarely reach)."""
    document: dict[str, Any] = {"acme": dict(BASE["acme"]),
                                "sites": {"clinic": dict(BASE["sites"]["clinic"])}}
    clinic = document["sites"]["clinic"]
    for _ in range(draw(st.integers(1, 3))):
        part = draw(st.sampled_from(["name", "domains", "challenge", "server", "key", "acme",
                                     "paths", "renewal", "alerts", "metrics", "check"]))
        if part == "name":
            document["sites"] = {draw(site_names): clinic}
        elif part == "domains":
            clinic["domains"] = draw(domains)
        elif part == "challenge":
            clinic["challenge"] = draw(challenge)
        elif part == "server":
            clinic["server"] = draw(server)
        elif part == "key":
            clinic["key"] = draw(st.one_of(st.sampled_from(["ec-p384", "rsa-2048", "dsa"]),
                                           scalars))
        elif part == "acme":
            document["acme"] = {**document["acme"], **draw(_section(SCHEMA["acme"]))}
        else:
            document[part] = draw(_section(SCHEMA[part]))
    return _dump(document, draw(st.sampled_from([None, False])), 80)


nested = st.builds(lambda depth, flow: "sites: " + ("[" * depth + "]" * depth if flow else
                                                 "".join("\n" + "  " * (i + 1) + f"k{i}:"
                                                         for i in range(depth))),
                   st.integers(1, 1200), st.booleans())

inputs = st.one_of(documents, mutated(), near_valid(), near_valid(), nested,
                   st.text(max_size=200),
                   st.text(alphabet=st.sampled_from(list(":-[]{}&*!|>'\"#%@` \n\t?,ab1")),
                           max_size=80))


# What YAML counts as a line break (YAML 1.1 §5.4), so a problem's line can be checked against
# the text's lines.
_YAML_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def check_config_text(text: str) -> Settings | None:
    """The property (see the module docstring). Returns the Settings when the text was valid."""
    try:
        settings = load_config_text(text, FILENAME)
    except ConfigError as error:
        assert error.problems, "a ConfigError without problems"
        # A syntax error at the very end of the input is reported on the line after the last.
        last_line = len(_YAML_LINE_BREAK.split(text)) + 1
        for problem in error.problems:
            assert problem.file == FILENAME, problem
            assert problem.line is not None and 1 <= problem.line <= last_line, problem
            assert problem.message, problem
            assert problem.severity == "error", problem
            # What the user reads: FILE:LINE: path: message, with nothing dropped.
            label = f"{problem.path}: " if problem.path else ""
            assert str(problem) == f"{FILENAME}:{problem.line}: {label}{problem.message}", problem
            assert str(problem) in str(error), problem
        return None
    for configured in settings.sites:
        assert SITE_NAME.match(configured.name), configured.name
        assert configured.domains, configured
        for domain in configured.domains:
            assert SAFE_DOMAIN.match(domain) and len(domain) <= 253, domain
        for command in (configured.server.test, configured.server.reload):
            assert command is None or isinstance(command, tuple), command
    return settings
