"""The config loader: strict, every problem at once with FILE:LINE: path: message."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from mamoru.config import load_config, load_config_text
from mamoru.config.load import find_config_path
from mamoru.errors import ConfigError
from mamoru.netaddr import parse_address

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
acme:
  directory: https://ca.example/dir
sites:
  clinic:
    domains: [clinic.example, WWW.Clinic.Example]
    challenge: {webroot: /var/www/clinic}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text), "c.yaml")
    return [str(p) for p in info.value.problems]


def test_minimal_config_gets_defaults_and_normalised_names() -> None:
    settings = load_config_text(MINIMAL, "c.yaml")
    site = settings.site("clinic")
    assert site.domains == ("clinic.example", "www.clinic.example")
    assert site.key == "ec-p256"
    assert settings.paths.state == "/var/lib/mamoru"
    assert settings.paths.live == "/etc/mamoru/live"
    assert settings.acme.max_concurrent_orders == 4
    assert site.server.type == "none"


def test_directory_aliases_resolve() -> None:
    text = MINIMAL.replace("https://ca.example/dir", "letsencrypt-staging")
    settings = load_config_text(text)
    assert settings.acme.directory == "https://acme-staging-v02.api.letsencrypt.org/directory"


def test_example_config_loads_and_documents_every_key() -> None:
    settings = load_config(str(ROOT / "config.example.yaml"))
    assert settings.sites[0].name == "clinic"
    text = (ROOT / "config.example.yaml").read_text()
    for key in ("directory", "ca_bundle", "contact", "eab", "hmac_key_file", "profile", "state",
                "live", "event_log", "key_group", "webroot", "standalone", "conf_dir", "listen",
                "hsts", "redirect", "verify", "reload", "test", "after_failures", "metrics"):
        assert f"{key}:" in text, f"config.example.yaml does not document {key}"


def test_all_problems_reported_at_once_with_lines() -> None:
    found = problems("""\
        acme:
          directory: ftp://nope
          profil: tlsserver
        sites:
          clinic:
            domains: [clinic.example, "bad..name", clinic.example]
            key: ec-p999
            challenge: {webroot: relative/dir}
          Bad_Name:
            domains: [x.example]
            challenge: {webroot: /w}
        """)
    assert "c.yaml:2: acme.directory: 'ftp://nope' must be letsencrypt" in found[0]
    joined = "\n".join(found)
    assert "c.yaml:3: acme.profil: unknown key (did you mean 'profile'?)" in joined
    assert "c.yaml:6: sites.clinic.domains[1]: 'bad..name' has an empty label" in joined
    assert "c.yaml:6: sites.clinic.domains[2]: clinic.example is listed twice" in joined
    assert "c.yaml:7: sites.clinic.key: 'ec-p999' is not one of" in joined
    assert "c.yaml:8: sites.clinic.challenge.webroot: 'relative/dir' must be an absolute" in joined
    assert "c.yaml:9: sites.Bad_Name: site name 'Bad_Name' must be" in joined
    assert len(found) == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the config is empty"),
        ("- a\n- b\n", "must be a mapping"),
        ("acme: {}\n", "sites: is required"),
        ("sites: {a: {domains: [a.example]}}\n", "http-01 needs webroot"),
        ("sites: {a: {domains: [a.example], challenge: {webroot: /w, standalone: '80'}}}\n",
         "give webroot or standalone, not both"),
        ("sites: {a: {domains: [a.example], challenge: {standalone: '0.0.0.0:80'}}}\n",
         "not a loopback address"),
        ("sites: {a: {domains: ['*.a.example'], challenge: {webroot: /w}}}\n",
         "http-01 cannot validate wildcard"),
        ("sites: {a: {domains: [a.example], challenge: {webroot: /w}, extra: 1}}\n",
         "sites.a.extra: unknown key"),
        ("acme: {max_concurrent_orders: 0}\nsites: {a: {domains: [a.example], "
         "challenge: {webroot: /w}}}\n", "out of range"),
        ("acme: {timeout: yes}\nsites: {a: {domains: [a.example], challenge: {webroot: /w}}}\n",
         "must be a number, not a true/false"),
        ("acme: {directory: http://10.0.0.1/dir}\nsites: {}\n", "must be letsencrypt"),
        ("acme: {directory: 'A://['}\nsites: {}\n", "is not a valid URL"),
        ("acme: {directory: 'https://ca.example:99999/dir'}\nsites: {}\n", "is not a valid URL"),
        ("alerts: {webhook: {url: 'http://['}}\nsites: {}\n", "is not an http(s) URL"),
        ("sites:\n  a: {domains: [a.example], challenge: {webroot: /w}}\n"
         "  a: {domains: [b.example]}\n",
         "duplicate key (first at line 2)"),
        ("sites: {a: {domains: [a.example], challenge: {webroot: /w}, "
         "server: {type: nginx}}}\n", "conf_dir: is required for nginx"),
        ("sites: {a: {domains: [a.example], challenge: {webroot: /w}, "
         "server: {type: command, test: 'nginx -t'}}}\n", "must be a list of program"),
    ],
)
def test_single_problem_messages(text: str, expected: str) -> None:
    assert any(expected in p for p in problems(text)), problems(text)


def test_aliases_anchors_merge_keys_and_tags_are_refused() -> None:
    assert any("anchors" in p for p in problems("a: &x [1]\nb: *x\n"))
    assert any("tag" in p for p in problems("sites: !!python/object:os.system {}\n"))
    assert any("tag" in p for p in problems("sites: !custom {}\n"))
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\n"
    assert any("not allowed" in p for p in problems(bomb))


def test_yaml_syntax_error_has_a_line() -> None:
    found = problems("acme:\n  directory: [unclosed\nsites: {}\n")
    assert found[0].startswith("c.yaml:")
    assert "YAML" in found[0]


def test_eab_secret_from_file_and_never_printed(tmp_path: Path) -> None:
    key = tmp_path / "eab.key"
    key.write_text("c2VjcmV0LWhtYWMta2V5\n")
    key.chmod(0o600)
    text = MINIMAL.replace("  directory: https://ca.example/dir\n",
                           f"  directory: https://ca.example/dir\n  eab: {{kid: k1, "
                           f"hmac_key_file: {key}}}\n")
    settings = load_config_text(text)
    assert settings.acme.eab is not None
    assert settings.acme.eab.hmac_key.reveal() == "c2VjcmV0LWhtYWMta2V5"
    assert "c2VjcmV0" not in repr(settings)
    assert settings.warnings == ()


def test_secret_readable_by_others_is_warned_about(tmp_path: Path) -> None:
    text = MINIMAL.replace("  directory: https://ca.example/dir\n",
                           "  directory: https://ca.example/dir\n  eab: {kid: k1, "
                           "hmac_key: c2VjcmV0}\n")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    path.chmod(0o644)
    settings = load_config(str(path))
    assert any("readable by every user" in w for w in settings.warnings)
    path.chmod(0o600)
    assert load_config(str(path)).warnings == ()


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "nope.yaml"))
    assert "no such file" in str(info.value)


def test_config_path_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAMORU_CONFIG", raising=False)
    assert find_config_path(None) == "/etc/mamoru/config.yaml"
    monkeypatch.setenv("MAMORU_CONFIG", "/x/env.yaml")
    assert find_config_path(None) == "/x/env.yaml"
    assert find_config_path("/x/flag.yaml") == "/x/flag.yaml"


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), ("8443", ("127.0.0.1", 8443)),
     ("[::1]:443", ("::1", 443)), ("host:0", None), ("host:99999", None), ("host:x", None),
     ("[::1]443", None)],
)
def test_parse_address(raw: str, parsed: tuple[str, int] | None) -> None:
    assert parse_address(raw, "127.0.0.1") == parsed


def test_check_config_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mamoru.cli import main

    good = tmp_path / "good.yaml"
    good.write_text(MINIMAL)
    assert main(["check-config", "-c", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.replace("clinic.example,", "clinic..example,") + "bogus: 1\n")
    # --config accepted after the verb and before it
    assert main(["-c", str(bad), "check-config"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:5: sites.clinic.domains[0]" in err
    assert f"{bad}:7: bogus: unknown key" in err
    assert os.path.exists(bad)


def test_a_config_that_leaves_everything_out_gets_the_dataclass_defaults() -> None:
    """The loader and the dataclasses take their defaults from the same table."""
    from mamoru.config import defaults as D
    from mamoru.config.model import (
        AcmeSettings,
        AlertSettings,
        Challenge,
        CheckSettings,
        MetricsSettings,
        Paths,
        RenewalSettings,
        Server,
    )

    settings = load_config_text(MINIMAL, "c.yaml")
    assert settings.acme == AcmeSettings(directory="https://ca.example/dir")
    assert settings.paths == Paths(state=D.PATHS_STATE, live=D.PATHS_LIVE,
                                   event_log=D.PATHS_EVENT_LOG)
    assert settings.renewal == RenewalSettings()
    assert settings.alerts == AlertSettings()
    assert settings.metrics == MetricsSettings()
    assert settings.check == CheckSettings()
    site = settings.site("clinic")
    assert site.server == Server()
    assert site.challenge == Challenge(webroot="/var/www/clinic")
    with_server = load_config_text(MINIMAL + "    server: {type: none}\n", "c.yaml")
    assert with_server.site("clinic").server == Server()
    assert load_config_text(MINIMAL.replace("https://ca.example/dir", D.ACME_DIRECTORY)
                            ).acme.directory == D.DIRECTORIES[D.ACME_DIRECTORY]


def _default_literals(path: Path) -> list[str]:
    """Defaults written as literals in `path`: dataclass field defaults, and the `default`
    argument of the field reader's getters (the second positional one, or `default=`)."""
    import ast

    getters = {"text", "number", "flag", "path_value", "value", "listen"}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []

    def check(node: ast.expr | None, where: str) -> None:
        if node is None or (isinstance(node, ast.Constant) and node.value is None):
            return  # None: "not set", not a default value
        if isinstance(node, ast.Name):
            return  # a default handed through (the reader's own `default` parameter)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "D":
            return  # a name from defaults.py
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "field" and all(k.arg == "default_factory"
                                                    for k in node.keywords):
            return  # another dataclass of the model, itself defaulted from defaults.py
        found.append(f"{path.name}:{node.lineno}: {where} = {ast.unparse(node)}")

    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign):
                    check(statement.value, f"{node.name}.{ast.unparse(statement.target)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in getters:
            key = ast.unparse(node.args[0]) if node.args else "?"
            positional = node.args[3] if node.func.attr == "value" else (
                node.args[1] if len(node.args) > 1 else None)
            check(positional, f"{node.func.attr}({key})")
            for keyword in node.keywords:
                if keyword.arg == "default":
                    check(keyword.value, f"{node.func.attr}({key})")
    return found


def test_defaults_live_only_in_defaults_py(tmp_path: Path) -> None:
    config = ROOT / "src" / "mamoru" / "config"
    found = [line for name in ("model.py", "schema.py", "secrets.py", "fields.py", "load.py")
             for line in _default_literals(config / name)]
    assert not found, "defaults outside config/defaults.py:\n" + "\n".join(found)
    # The check itself can fail: a literal default in a dataclass or in a getter call is caught.
    bad = tmp_path / "bad.py"
    bad.write_text("class X:\n    port: int = 587\n    ok: str | None = None\n"
                   "def f(m):\n    m.number('port', 587, minimum=1, maximum=2)\n"
                   "    m.flag('x', default=True)\n    m.text('y', D.Y)\n")
    assert [line.split(": ", 1)[1] for line in _default_literals(bad)] == [
        "X.port = 587", "number('port') = 587", "flag('x') = True"]


def test_the_python_yaml_composer_refuses_aliases_and_anchors_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without libyaml, PyYAML's own composer runs, with the same refusals and messages."""
    from mamoru.config import yamlnodes

    with_c = {text: problems(text) for text in ("acme: *nothing\n", "a: &x [1]\nb: *x\n",
                                                 "sites:\n  <<: {a: 1}\n")}
    monkeypatch.setattr(yamlnodes, "_CLoader", None)
    for text, found in with_c.items():
        assert problems(text) == found
    assert problems("acme: *nothing\n") == [
        "c.yaml:1: YAML: aliases (*name) are not allowed in a mamoru config"]
    assert problems("a: &x [1]\n") == [
        "c.yaml:1: YAML: anchors (&name) are not allowed in a mamoru config"]
    assert problems("acme:\n  directory: \x00\n") == [
        "c.yaml:2: YAML: unacceptable character #x0000: special characters are not allowed"]
    # PyYAML's composer recurses: a deep document is refused before Python's stack runs out.
    for depth in (40, 1200):
        deep = "sites: " + "[" * depth + "]" * depth + "\n"
        found = problems(deep)
        assert any(p.startswith("c.yaml:1: ") and "nested more than 32 levels deep" in p
                   for p in found), found
