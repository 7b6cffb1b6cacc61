"""Issue-12 defect 5: no config string reaches a generated server config if it could end a
directive or a line there. Each hostile value is refused by `check-config` with its line, and
`provision` writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mamoru.netaddr import parse_address
from tests.helpers import run_mamoru

TEMPLATE = """\
acme:
  directory: https://127.0.0.1:14000/dir
paths:
  state: {tmp}/state
  live: {tmp}/live
  event_log: {tmp}/log/events.jsonl
sites:
  clinic:
    domains:
      - {domain}
    challenge:
      webroot: {webroot}
    server:
      type: nginx
      conf_dir: {conf_dir}
      root: {root}
      listen:
        https: {https}
        http: {http}
"""
# key -> (the line it is on in TEMPLATE, the path check-config names)
WHERE = {"domain": (10, "sites.clinic.domains[0]"), "webroot": (12, "sites.clinic.challenge"),
         "conf_dir": (15, "sites.clinic.server.conf_dir"), "root": (16, "sites.clinic.server.root"),
         "https": (18, "sites.clinic.server.listen.https"),
         "http": (19, "sites.clinic.server.listen.http")}

HOSTILE = [
    ("https", "1.2.3.4 ssl; include /etc/shadow; #:443"),
    ("https", "evil.example ssl http2; include /etc/shadow; #:443"),
    ("http", "[::1 ; include /etc/shadow]:80"),
    ("http", "127.0.0.1:80\\ninclude /etc/shadow"),
    ("root", "/srv/www; include /etc/shadow"),
    ("root", "/srv/www\\n    include /etc/shadow;"),
    ("root", "/srv/$document_root"),
    ("conf_dir", "{conf}/x\\ninclude /etc/shadow"),
    ("conf_dir", "{conf}/a}} server {{ listen 80"),
    ("domain", "clinic.example; include /etc/shadow"),
    ("domain", "clinic.example\\ninclude"),
    ("webroot", "/var/www/acme; include /etc/shadow"),
    ("webroot", "/var/www/#acme"),
]


def write(tmp: Path, **override: str) -> Path:
    values = {"tmp": str(tmp), "domain": "clinic.example", "webroot": str(tmp / "webroot"),
              "conf_dir": str(tmp / "conf"), "root": str(tmp / "www"),
              "https": "127.0.0.1:8443", "http": "127.0.0.1:8080"}
    values.update({k: json.dumps(v.replace("{conf}", str(tmp / "conf")).replace("\\n", "\n"))
                   for k, v in override.items()})
    path = tmp / "config.yaml"
    path.write_text(TEMPLATE.format(**values))
    path.chmod(0o600)
    return path


def test_the_template_itself_is_accepted(tmp_path: Path) -> None:
    run_mamoru("check-config", "-c", str(write(tmp_path)), check=0)


@pytest.mark.parametrize(("key", "value"), HOSTILE, ids=[f"{k}-{i}" for i, (k, _) in
                                                          enumerate(HOSTILE)])
def test_a_hostile_value_is_refused_with_its_line_and_nothing_is_written(
        tmp_path: Path, key: str, value: str) -> None:
    (tmp_path / "conf").mkdir()
    config = write(tmp_path, **{key: value})
    result = run_mamoru("check-config", "-c", str(config), check=2)
    line, path = WHERE[key]
    assert f"{config}:{line}: {path}" in result.stderr, result.stderr
    provision = run_mamoru("provision", "-c", str(config), check=2)
    assert f"{config}:{line}:" in provision.stderr
    assert list((tmp_path / "conf").iterdir()) == []  # no generated file, hostile or not
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("raw", [
    "1.2.3.4 ssl; include x; #:443", "a b:443", "host;:443", "[::1]x:443", "[nothex]:443",
    "::1:443", "-bad.example:443", "bad-.example:443", "a..b:443", "127.0.0.1:\uff14\uff14\uff13"])
def test_parse_address_refuses_hosts_that_are_not_addresses_or_names(raw: str) -> None:
    assert parse_address(raw, "127.0.0.1") is None


@pytest.mark.parametrize(("raw", "parsed"), [
    ("*:443", ("*", 443)), ("[::]:443", ("::", 443)), ("[2001:db8::1]:8443", ("2001:db8::1", 8443)),
    ("clinic.example:443", ("clinic.example", 443)), ("10.0.0.1:80", ("10.0.0.1", 80)),
    ("443", ("127.0.0.1", 443))])
def test_parse_address_keeps_every_real_form(raw: str, parsed: tuple[str, int]) -> None:
    assert parse_address(raw, "127.0.0.1") == parsed
