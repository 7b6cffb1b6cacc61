"""The dns-01 part of a site's challenge config: the rfc2136/provider/hook forms, names mixed
with http-01, and every mistake reported with its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mamoru.config import load_config_text
from mamoru.errors import ConfigError


def config(challenge: str, domains: str = '["clinic.test", "*.clinic.test"]') -> str:
    return textwrap.dedent("""\
        acme:
          directory: https://ca.test/dir
        sites:
          clinic:
            domains: {domains}
            challenge:
        {challenge}""").format(domains=domains,
                               challenge=textwrap.indent(textwrap.dedent(challenge), "      "))


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "config.yaml")
    return [str(p) for p in caught.value.problems]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "tsig.secret"
    path.write_text('key "mamoru-clinic" { algorithm hmac-sha256; secret "c2VjcmV0"; };\n')
    path.chmod(0o600)
    return path


def test_rfc2136_with_the_issue_s_key_names(key_file: Path) -> None:
    settings = load_config_text(config(f"""\
        type: dns-01
        rfc2136:
          server: "127.0.0.1:53"
          key_name: mamoru-clinic
          key_algorithm: hmac-sha256
          key_secret_file: {key_file}
          zone: clinic.test
        propagation_timeout: 90
        """))
    challenge = settings.sites[0].challenge
    assert challenge.type == "dns-01" and challenge.dns01 is not None
    rfc = challenge.dns01.rfc2136
    assert rfc is not None and rfc.server == "127.0.0.1:53" and rfc.zone == "clinic.test"
    assert "c2VjcmV0" in rfc.key.reveal() and "c2VjcmV0" not in repr(rfc)
    assert challenge.dns01.propagation_timeout == 90
    assert challenge.type_for("*.clinic.test") == challenge.type_for("clinic.test") == "dns-01"


def test_the_default_propagation_timeout_and_the_hook_form() -> None:
    settings = load_config_text(config("""\
        type: dns-01
        hook:
          present: [/usr/local/bin/dns-hook, add]
          cleanup: [/usr/local/bin/dns-hook, delete]
        """))
    dns01 = settings.sites[0].challenge.dns01
    assert dns01 is not None and dns01.propagation_timeout == 120
    assert dns01.hook is not None and dns01.hook.present == ("/usr/local/bin/dns-hook", "add")
    assert dns01.hook.timeout == 60


def test_mixed_http01_and_dns01_names(tmp_path: Path) -> None:
    creds = tmp_path / "cf.yaml"
    creds.write_text("auth_token: x\n")
    settings = load_config_text(config(f"""\
        webroot: /var/www/html
        dns01_names: ["*.clinic.test"]
        provider:
          name: cloudflare
          credentials_file: {creds}
        """))
    challenge = settings.sites[0].challenge
    assert challenge.type == "http-01"
    assert challenge.type_for("clinic.test") == "http-01"
    assert challenge.type_for("*.clinic.test") == "dns-01"


def test_a_wildcard_without_dns01_is_refused_with_its_line() -> None:
    found = problems(config("webroot: /var/www/html\n"))
    assert any(p.startswith("config.yaml:7: sites.clinic.challenge: *.clinic.test is a "
                            "wildcard") and "dns01_names" in p for p in found), found


@pytest.mark.parametrize(("challenge", "expected"), [
    ("type: dns-01\n", "config.yaml:7: sites.clinic.challenge: dns-01 needs exactly one of "
     "rfc2136"),
    ("type: dns-01\nhook: {present: [a]}\nprovider: {name: x, credentials_file: /x}\n",
     "this has provider and hook"),
    ("type: dns-01\nrfc2136: {server: '127.0.0.1', key_name: k}\n",
     "sites.clinic.challenge.rfc2136: needs key_secret_file"),
    ("type: dns-01\nrfc2136: {server: '127.0.0.1', key_name: k, key_secret_file: /nope}\n",
     "config.yaml:8: sites.clinic.challenge.rfc2136.key_secret_file: cannot read /nope"),
    ("type: dns-01\nrfc2136: {server: '127.0.0.1', key_name: k, key_secret: x, "
     "key_algorithm: hmac-md5}\n", "'hmac-md5' is not one of: hmac-sha256"),
    ("type: dns-01\nhook: {present: 'nsupdate -k key'}\n", "must be a list of program"),
    ("type: dns-01\nhook: {cleanup: [x]}\n", "sites.clinic.challenge.hook.present: is required"),
    ("type: dns-01\nwebroot: /var/www\nhook: {present: [a]}\n",
     "sites.clinic.challenge.webroot: is for http-01"),
    ("webroot: /var/www\ndns01_names: [other.test]\nhook: {present: [a]}\n",
     "other.test is not in this site's domains"),
    ("type: dns-01\nhook: {present: [a]}\npropagation_timeout: 0\n", "out of range"),
    ("type: dns-01\nrfc2136: {server: a, key_name: k, key_secret: x, keyname: y}\n",
     "unknown key"),
])
def test_every_dns01_mistake_is_reported_with_its_place(challenge: str, expected: str) -> None:
    found = problems(config(challenge))
    assert any(expected in p for p in found), found
