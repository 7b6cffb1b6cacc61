"""`mamoru init` on machines laid out in a temporary directory: what it detects, and that what
it writes passes the config loader and is never written over an existing file."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from mamoru.cli import main
from mamoru.config import load_config
from mamoru.errors import UsageError
from mamoru.setup.init import Answers, detect, render, site_name, write_config


def nothing_runs(argv: Sequence[str]) -> int:
    return 3


def debian_nginx(root: Path, listen: str = "80") -> None:
    (root / "etc/nginx/conf.d").mkdir(parents=True)
    (root / "etc/nginx/sites-enabled").mkdir(parents=True)
    (root / "etc/nginx/sites-enabled/default").write_text(
        "# listen 9999 default_server;\nserver {\n"
        f"\tlisten {listen} default_server;\n\tlisten [::]:80 default_server;\n"
        "\troot /var/www/html;\n\tindex index.html;\n}\n")


def debian_apache(root: Path, vhost: str = "*:80", mods: Sequence[str] = ()) -> None:
    (root / "etc/apache2/sites-enabled").mkdir(parents=True)
    (root / "etc/apache2/mods-enabled").mkdir(parents=True)
    for mod in mods:
        (root / f"etc/apache2/mods-enabled/{mod}.load").write_text("")
    (root / "etc/apache2/sites-enabled/000-default.conf").write_text(
        f"<VirtualHost {vhost}>\n\tDocumentRoot /var/www/html\n</VirtualHost>\n")


def test_debian_nginx_default_site(tmp_path: Path) -> None:
    debian_nginx(tmp_path, "127.0.0.1:18080")
    machine = detect(root=tmp_path, run=nothing_runs)
    assert (machine.server, machine.conf_dir) == ("nginx", "/etc/nginx/conf.d")
    assert machine.webroot == "/var/www/html"
    assert machine.http_listen == "127.0.0.1:18080"
    assert machine.default_site == "/etc/nginx/sites-enabled/default"


def test_debian_apache_and_missing_modules(tmp_path: Path) -> None:
    debian_apache(tmp_path, "127.0.0.2:18080", mods=["ssl"])
    machine = detect(root=tmp_path, run=nothing_runs)
    assert (machine.server, machine.conf_dir) == ("apache", "/etc/apache2/sites-enabled")
    assert machine.http_listen == "127.0.0.2:18080"
    assert any("a2enmod rewrite headers" in note for note in machine.notes)


def test_both_installed_needs_a_choice_and_none_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--server"):
        detect(root=tmp_path, run=nothing_runs)
    debian_nginx(tmp_path)
    debian_apache(tmp_path)
    with pytest.raises(UsageError, match="both are installed"):
        detect(root=tmp_path, run=nothing_runs)
    assert detect("apache", root=tmp_path, run=nothing_runs).server == "apache"


def test_no_default_site_says_the_first_certificate_needs_a_port_80_server(
        tmp_path: Path) -> None:
    (tmp_path / "etc/nginx/conf.d").mkdir(parents=True)
    machine = detect(root=tmp_path, run=nothing_runs)
    assert machine.default_site is None and machine.http_listen == "80"
    assert any("port-80" in note for note in machine.notes)


@pytest.mark.parametrize("server", ["nginx", "apache"])
def test_what_it_writes_loads_and_is_private(tmp_path: Path, server: str) -> None:
    (debian_nginx if server == "nginx" else debian_apache)(tmp_path)
    machine = detect(server, root=tmp_path, run=nothing_runs)
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    text = render(Answers(domains=["www.clinic.example", "clinic.example"],
                          contact="it@clinic.example", directory="https://127.0.0.1:14000/dir",
                          ca_bundle=str(bundle), https_listen="127.0.0.2:18443"),
                  machine)
    path = tmp_path / "etc/mamoru/config.yaml"
    write_config(str(path), text)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    settings = load_config(str(path))
    (site,) = settings.sites
    assert site.name == "clinic-example"
    assert site.domains == ("www.clinic.example", "clinic.example")
    assert site.server.type == server and site.server.mode == "site"
    assert site.server.verify == ("127.0.0.2", 18443)
    assert site.challenge.webroot == "/var/www/html"
    assert settings.acme.ca_bundle == str(bundle)
    with pytest.raises(UsageError, match="never replaces"):
        write_config(str(path), text)


def test_cli_refuses_an_existing_config_and_leaves_it_alone(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("mine\n")
    assert main(["init", "-d", "clinic.example", "-c", str(config)]) == 2
    assert config.read_text() == "mine\n"
    assert "never replaces" in capsys.readouterr().err


def test_cli_without_names_and_no_terminal_says_how(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "-c", str(tmp_path / "c.yaml")]) == 2
    assert "mamoru init -d clinic.example" in capsys.readouterr().err
    assert not (tmp_path / "c.yaml").exists()


def test_site_names() -> None:
    assert site_name("www.Clinic.example") == "clinic-example"
    assert site_name("xn--bcher-kva.example") == "xn--bcher-kva-example"


def test_cli_asks_for_the_names_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import mamoru.setup.init as init

    debian_nginx(tmp_path)
    real_detect = init.detect
    monkeypatch.setattr(init, "detect", lambda server=None: real_detect(
        server, root=tmp_path, run=nothing_runs))
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    answers = iter(["clinic.example www.clinic.example", "it@clinic.example"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    config = tmp_path / "config.yaml"
    assert main(["init", "-c", str(config)]) == 0
    (site,) = load_config(str(config)).sites
    assert site.domains == ("clinic.example", "www.clinic.example")
    assert "it@clinic.example" in config.read_text()
    assert "written for nginx" in capsys.readouterr().out
