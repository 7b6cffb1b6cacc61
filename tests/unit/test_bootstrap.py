"""mamoru's temporary port-80 server for a site's first certificate (install/bootstrap.py): when
it is put up, what it says to nginx and Apache, and that a failure takes it back. The real
servers run it in tests/e2e/test_port80_bootstrap.py and the systemd suite."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mamoru.config.model import Challenge, Server, Site
from mamoru.errors import ConfigTestFailed, ReloadFailed
from mamoru.install.apache import ApacheInstaller
from mamoru.install.base import BOOTSTRAP_TEXT
from mamoru.install.bootstrap import Bootstrap, kept_until_replaced, needed
from mamoru.install.commands import CommandResult
from mamoru.install.nginx import NginxInstaller
from mamoru.observe.events import Events
from mamoru.observe.messages import render
from mamoru.observe.sinks import MemorySink


def site(conf_dir: str = "/etc/nginx/conf.d", **server: object) -> Site:
    settings = Server(type="nginx", conf_dir=conf_dir, listen_https="443", listen_http="80",
                      root="/var/www/clinic")
    return Site("clinic", ("clinic.example", "www.clinic.example"),
                challenge=Challenge(webroot="/var/www/acme"), server=replace(settings, **server))


def body(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))


@pytest.mark.parametrize(("change", "has_certificate", "expected"), [
    ({}, False, True),  # site mode, redirect, webroot, no certificate: the case
    ({}, True, False),  # a renewal: the site's own plain-HTTP server answers
    ({"mode": "include"}, False, False),  # the user's blocks answer port 80
    ({"redirect": False}, False, False),  # the user answers port 80 themselves
    ({"type": "apache"}, False, True),
    ({"type": "command"}, False, False),
    ({"type": "none"}, False, False),
])
def test_when_the_first_certificate_needs_mamorus_port80_server(
        change: dict[str, object], has_certificate: bool, expected: bool) -> None:
    assert needed(site(**change), has_certificate) is expected


def test_not_for_standalone_or_dns01() -> None:
    standalone = replace(site(), challenge=Challenge(standalone=("127.0.0.1", 80)))
    dns = replace(site(), challenge=Challenge(type="dns-01"))
    assert not needed(standalone, False) and not needed(dns, False)


def test_nginx_bootstrap_is_the_plain_http_server_without_the_redirect() -> None:
    text = NginxInstaller(("nginx", "-t"), ("true",), 5, ipv6=False).bootstrap_config(site())
    assert text.startswith("# mamoru-generated for site clinic")
    assert body(text) == (
        "\nserver {\n"
        "    listen 80;\n"
        "    server_name clinic.example www.clinic.example;\n"
        "\n"
        "    location ^~ /.well-known/acme-challenge/ {\n"
        '        root "/var/www/acme";\n'
        "        default_type text/plain;\n"
        "    }\n"
        "    location / {\n"
        "        default_type text/plain;\n"
        f'        return 503 "{BOOTSTRAP_TEXT}\\n";\n'
        "    }\n"
        "}\n")
    assert "ssl" not in text and "301" not in text


def test_apache_bootstrap_serves_the_challenge_and_503_for_the_rest() -> None:
    text = ApacheInstaller(None, ("true",), 5).bootstrap_config(
        site(type="apache", listen_http="127.0.0.1:8080"))
    lines = [line.strip() for line in body(text).splitlines() if line.strip()]
    assert "Listen 127.0.0.1:8080 http" in lines  # nobody else listens there (unknown: yes)
    assert "<VirtualHost 127.0.0.1:8080>" in lines
    assert 'Alias /.well-known/acme-challenge/ "/var/www/acme/.well-known/acme-challenge/"' in lines
    assert "RewriteCond %{REQUEST_URI} !^/\\.well-known/acme-challenge/" in lines
    assert "RewriteRule ^ - [R=503,L]" in lines
    assert f'ErrorDocument 503 "{BOOTSTRAP_TEXT}"' in lines
    assert "SSLEngine on" not in lines


class Recording(NginxInstaller):
    """nginx's files and words, with config test and reload answered by the test."""

    def __init__(self, *, test_fails: bool = False, reload_fails: bool = False) -> None:
        super().__init__(("nginx", "-t"), ("nginx", "-s", "reload"), 5, ipv6=False)
        self.test_fails, self.reload_fails = test_fails, reload_fails
        self.calls: list[str] = []

    def config_test(self) -> CommandResult:
        self.calls.append("test")
        if self.test_fails:
            raise ConfigTestFailed("nginx rejected its config: [emerg] unknown directive",
                                   output="[emerg] unknown directive")
        return CommandResult(("nginx", "-t"), 0, "", 0.0)

    def reload(self) -> CommandResult:
        self.calls.append("reload")
        if self.reload_fails:
            raise ReloadFailed("reloading nginx failed: exit 1")
        return CommandResult(("nginx", "-s", "reload"), 0, "", 0.0)


def make(tmp_path: Path, installer: Recording) -> tuple[Bootstrap, MemorySink, Path]:
    sink = MemorySink()
    the_site = site(conf_dir=str(tmp_path), listen_http="127.0.0.1:1")  # nothing answers
    return Bootstrap(the_site, installer, Events([sink])), sink, tmp_path / "mamoru-clinic.conf"


def test_put_up_writes_tests_and_reloads_and_take_down_puts_it_all_back(tmp_path: Path) -> None:
    installer = Recording()
    server, sink, path = make(tmp_path, installer)
    server.put_up()
    assert path.read_text() == installer.bootstrap_config(server.site)
    assert installer.calls == ["test", "reload"]
    assert server.take_down(RuntimeError("order failed")) == []
    assert not path.exists() and installer.calls == ["test", "reload", "reload"]
    assert sink.kinds() == ["port80-up", "port80-down"]
    assert server.take_down() == [] and sink.kinds() == ["port80-up", "port80-down"]  # once


def test_a_rejected_bootstrap_is_removed_without_a_reload(tmp_path: Path) -> None:
    installer = Recording(test_fails=True)
    server, sink, path = make(tmp_path, installer)
    with pytest.raises(ConfigTestFailed) as raised:
        server.put_up()
    assert "temporary plain-HTTP server" in str(raised.value)
    assert "nothing was ordered" in str(raised.value)
    assert not path.exists() and installer.calls == ["test"]
    assert sink.kinds() == ["port80-down"]


def test_a_failed_reload_is_taken_back_and_reloaded_again(tmp_path: Path) -> None:
    installer = Recording(reload_fails=True)
    server, sink, path = make(tmp_path, installer)
    with pytest.raises(ReloadFailed):
        server.put_up()
    assert not path.exists()
    assert installer.calls == ["test", "reload", "reload"]
    down = sink.of_kind("port80-down")[0]
    assert down.fields["problems"], down.fields  # the second reload failed too, and it says so


def test_a_file_of_an_earlier_attempt_is_put_back_as_it_was(tmp_path: Path) -> None:
    installer = Recording()
    server, _, path = make(tmp_path, installer)
    path.write_text("# mamoru-generated for site clinic: an earlier file.\n")
    server.put_up()
    server.take_down()
    assert path.read_text() == "# mamoru-generated for site clinic: an earlier file.\n"


def test_a_probe_that_is_never_served_is_a_warning(tmp_path: Path) -> None:
    installer = Recording()
    server, sink, _ = make(tmp_path, installer)
    cleaned: list[bool] = []
    server.wait_for = lambda path, content, timeout=0.0: False  # type: ignore[method-assign]
    server.put_up(lambda: ("/.well-known/acme-challenge/x", b"y"), lambda: cleaned.append(True))
    up = sink.of_kind("port80-up")[0]
    assert up.fields["served"] is False and up.priority == 4, up
    assert cleaned == [True]
    assert "did not serve a test file" in render("port80-up", up.fields, "clinic")


def test_kept_until_replaced_takes_it_down_only_on_failure(tmp_path: Path) -> None:
    installer = Recording()
    server, sink, path = make(tmp_path, installer)
    server.put_up()
    with kept_until_replaced(server):
        pass
    assert path.exists() and sink.kinds() == ["port80-up"]
    with pytest.raises(RuntimeError), kept_until_replaced(server):
        raise RuntimeError("validation failed")
    assert not path.exists() and sink.kinds() == ["port80-up", "port80-down"]


def test_waiting_for_nothing_answering_gives_up(tmp_path: Path) -> None:
    server, _, _ = make(tmp_path, Recording())
    assert server.wait_for("/.well-known/acme-challenge/x", b"y", timeout=0.2) is False
