"""Hostile input: names that try to escape a directory or imitate another name, YAML bombs and
tags, secret files that never end, and commands given as shell strings. Each is refused with a
plain message before it touches a path, a parser's memory or a shell.
"""

from __future__ import annotations

import ast
import os
import threading
import time
from pathlib import Path

import pytest
import yaml

from mamoru.config import load_config, load_config_text
from mamoru.errors import ConfigError
from tests.helpers import run_mamoru

SRC = Path(__file__).resolve().parents[2] / "src" / "mamoru"

BASE = """\
acme:
  directory: https://ca.example/dir
sites:
  {site}:
    domains: [{domain}]
    challenge: {{webroot: /var/www/clinic}}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "c.yaml")
    return [str(p) for p in info.value.problems]


HOSTILE_DOMAINS = {
    "dot-dot-slash": ("../../etc/passwd", "looks like a URL or path"),
    "dot-dot": ("..", "empty label"),
    "nul": ('"clinic\\0.example"', "control characters"),
    "300-character label": ("a" * 300 + ".example", "at most 63"),
    "too long in all": (("b" * 63 + ".") * 4 + "example", "at most 253"),
    "wildcard twice": ("'*.*.example'", "wildcard may only be the whole leftmost label"),
    "wildcard inside": ("'a.*.example'", "wildcard may only be the whole leftmost label"),
    "mixed scripts": ("p\u0430ypal.com", "mixes scripts"),
    "Latin and Greek": ("\u03bfpenai.com", "mixes scripts"),
    "zero-width joiner": ("cl\u200dinic.example", "invisible or formatting character (U+200D)"),
    "right-to-left override": ("clinic\u202e.example", "formatting character (U+202E)"),
    "no-break space": ("clinic\u00a0.example", "invisible or formatting character (U+00A0)"),
    "bad punycode": ("xn--zz.example", "invalid punycode"),
    "space": ("'clinic example'", "spaces or control characters"),
    "shell": ("'$(reboot).example'", "labels hold only letters"),
    "URL": ("'http://clinic.example/'", "looks like a URL or path"),
    "IP address": ("127.0.0.1", "IP address"),
    "one label": ("localhost", "at least two labels"),
    "leading hyphen": ("-clinic.example", "do not start or end with a hyphen"),
    "numeric TLD": ("clinic.123", "cannot be all digits"),
}


@pytest.mark.parametrize("case", list(HOSTILE_DOMAINS))
def test_hostile_domain_is_refused_with_its_place(case: str) -> None:
    domain, words = HOSTILE_DOMAINS[case]
    found = problems_of(BASE.format(site="clinic", domain=domain))
    assert any(p.startswith("c.yaml:5: sites.clinic.domains[0]: ") and words in p
               for p in found), found


@pytest.mark.parametrize("site", ["'../escape'", "'a/b'", "'.hidden'", "'-x'", "'Clinic'",
                                  "'x\\0'", "'" + "a" * 64 + "'", "'クリニック'", "''"])
def test_hostile_site_name_is_refused(site: str) -> None:
    found = problems_of(BASE.format(site=site, domain="clinic.example"))
    assert any(":4: sites." in p and "site name" in p and "a-z, 0-9" in p for p in found), found


def test_hostile_names_never_touch_a_path(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"""\
acme: {{directory: "https://127.0.0.1:1/dir"}}
paths: {{state: {tmp_path / 'state'}, live: {tmp_path / 'live'},
        event_log: {tmp_path / 'log' / 'events.jsonl'}}}
sites:
  ../../escape:
    domains: [clinic.example]
    challenge: {{webroot: {tmp_path / 'www'}}}
  clinic:
    domains: ["../../../etc/x", "a\\0b.example", "*.*.example"]
    challenge: {{webroot: {tmp_path / 'www'}}}
""")
    for verb in ("provision", "check-config"):
        result = run_mamoru(verb, "-c", str(config), check=2)
        assert "sites.../../escape" in result.stderr and "domains[0]" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]  # nothing was created
    assert not (tmp_path.parent / "escape").exists()


BILLION_LAUGHS = "\n".join(
    ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 12)]) + "\n"

YAML_ATTACKS = {
    "billion laughs": (BILLION_LAUGHS, ":1: YAML: anchors (&name) are not allowed"),
    "alias": ("acme: *nothing\n", ":1: YAML: aliases (*name) are not allowed"),
    "merge key": ("acme:\n  directory: https://ca.example/dir\nsites:\n  <<: {a: 1}\n",
                  ":4: sites: merge keys (<<) are not allowed"),
    "python object": ("acme: !!python/object/apply:os.system ['touch {marker}']\n",
                      ":1: acme: the YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'"
                      " is not allowed"),
    "python name": ("acme: !!python/name:os.system\n", "is not allowed"),
    "custom tag": ("acme: !vault |\n  $ANSIBLE_VAULT;1.1\n", ":1: acme: the YAML tag '!vault'"),
    "binary": ("acme: !!binary aGk=\n", "the YAML tag 'tag:yaml.org,2002:binary'"),
    "set": ("sites: !!set {a, b}\n", "the YAML tag 'tag:yaml.org,2002:set'"),
    "nested 10,000 deep": ("sites: " + "[" * 10000 + "]" * 10000 + "\n",
                           ":1: YAML: exceeded maximum nesting depth"),
    "nested 999 deep": ("sites: " + "[" * 999 + "]" * 999 + "\n", "nested more than 32"),
    "block nesting": ("".join("  " * i + f"k{i}:\n" for i in range(900)),
                      "nested more than 32 levels deep"),
    "5000-digit number": ("acme:\n  timeout: " + "9" * 5000 + "\n",
                          ":2: acme.timeout: bad value: Exceeds the limit"),
    "control character": ("acme:\n  directory: x\n\x07\n",
                          ":3: YAML: unacceptable character #x0007"),
}


@pytest.mark.parametrize("attack", list(YAML_ATTACKS))
def test_yaml_bombs_and_tags_are_refused_at_once(attack: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text, expected = YAML_ATTACKS[attack]
    started = time.monotonic()
    found = problems_of(text.replace("{marker}", str(marker)))
    assert time.monotonic() - started < 2.0, "the loader took too long"
    assert any(expected in p for p in found), found
    assert not marker.exists()


def test_a_config_over_one_mebibyte_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config(str(big))


def secret_config(tmp_path: Path, secret_file: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(BASE.format(site="clinic", domain="clinic.example").replace(
        "  directory: https://ca.example/dir\n",
        f"  directory: https://ca.example/dir\n  eab: {{kid: k1, hmac_key_file: {secret_file}}}\n"))
    return config


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "fifo", "directory", "big",
                                     "binary"])
def test_a_secret_file_that_never_ends_or_is_no_file_is_refused(special: str, tmp_path: Path
                                                                ) -> None:
    path = Path(special)
    if special == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)  # nobody ever writes: a blocking read would hang forever
    elif special == "directory":
        path = tmp_path
    elif special == "big":
        path = tmp_path / "big"
        path.write_text("k" * 100_000)
    elif special == "binary":
        path = tmp_path / "binary"
        path.write_bytes(b"\xff\xfe\x00\x01")
    config = secret_config(tmp_path, path)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            load_config(str(config))
            outcome.append(None)
        except BaseException as error:  # reported below, in the test thread
            outcome.append(error)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), f"loading a config naming {special} hung"
    assert isinstance(outcome[0], ConfigError), outcome
    message = str(outcome[0])
    assert ":3: acme.eab.hmac_key_file: " in message
    assert ("is not a regular file" in message or "larger than 64 KiB" in message
            or "not UTF-8" in message or "Is a directory" in message), message


def test_commands_are_argv_lists_never_shell_strings() -> None:
    for command in ("systemctl reload nginx", "nginx -s reload; rm -rf /"):
        text = BASE.format(site="clinic", domain="clinic.example") + (
            f"    server: {{type: command, reload: {command!r}}}\n")
        found = problems_of(text)
        assert any("sites.clinic.server.reload: must be a list of program and arguments" in p
                   and "never runs a shell string" in p for p in found), found


SHELL_CALLS = {"os.system", "os.popen", "os.execl", "os.execlp", "os.spawnl", "os.spawnlp",
               "subprocess.getoutput", "subprocess.getstatusoutput", "pty.spawn",
               "asyncio.create_subprocess_shell", "commands.getoutput"}
PROCESS_CALLS = {"subprocess.run", "subprocess.Popen", "subprocess.call",
                 "subprocess.check_call", "subprocess.check_output", "os.execv", "os.execvp",
                 "os.execve", "os.posix_spawn", "os.posix_spawnp",
                 "asyncio.create_subprocess_exec"}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return ""


def test_no_code_path_runs_a_shell() -> None:
    """Every process mamoru starts gets an argv list: no shell=True, no os.system/popen, no
    command built as a string (a literal, an f-string, a concatenation or a .format())."""
    checked, offences = 0, []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            where = f"{path.relative_to(SRC)}:{node.lineno} {name}"
            if name in SHELL_CALLS:
                offences.append(f"{where}: runs a shell")
            if name not in PROCESS_CALLS:
                continue
            checked += 1
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant)
                                                   and keyword.value.value is False):
                    offences.append(f"{where}: shell={ast.unparse(keyword.value)}")
            if node.args:
                first = node.args[0]
                if isinstance(first, ast.JoinedStr | ast.BinOp) or (
                        isinstance(first, ast.Constant) and isinstance(first.value, str)) or (
                        isinstance(first, ast.Call) and _dotted(first.func).endswith(".format")):
                    offences.append(f"{where}: command is a string: {ast.unparse(first)}")
    assert offences == []
    assert checked >= 1, "no process call found: has the scan gone blind?"


def test_yaml_is_never_loaded_unsafely() -> None:
    """Only the strict loader reads YAML in mamoru: no yaml.load/unsafe_load/full_load."""
    offences = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _dotted(node.func) in (
                    "yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all",
                    "yaml.unsafe_load_all", "yaml.full_load_all"):
                offences.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offences == []
    assert yaml.__version__  # the safe loader family is what load.py builds on
