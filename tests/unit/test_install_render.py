"""Generated web-server config, as text: what site and include mode write for nginx and Apache,
and the Apache `Listen` decision. (tests/integration runs these files through the real
`nginx -t` / `apache2 -t`.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mamoru.config.model import Challenge, Server, Site
from mamoru.install.apache import ApacheInstaller
from mamoru.install.commands import important_lines
from mamoru.install.files import (
    HEADER_MARK,
    InstallRefused,
    quote,
    redirect_file,
    site_file,
    tls_file,
)
from mamoru.install.listen import (
    UserListen,
    https_suffix,
    listen_address,
    listens_needed,
    parse_listens,
)
from mamoru.install.nginx import NginxInstaller

LIVE = "/etc/mamoru/live/clinic"  # the site's live directory (Storage.live_path)


def site(**server: object) -> Site:
    settings = Server(type="nginx", conf_dir="/etc/nginx/conf.d", listen_https="443",
                      listen_http="80", root="/var/www/clinic")
    return Site("clinic", ("clinic.example", "www.clinic.example"),
                challenge=Challenge(webroot="/var/www/acme"), server=replace(settings, **server))


def nginx(*, ipv6: bool = False) -> NginxInstaller:
    return NginxInstaller(("nginx", "-t"), ("true",), 5, ipv6=ipv6)


def apache() -> ApacheInstaller:
    """Without a test command Apache cannot list its files: every port but 80/443 gets a Listen."""
    return ApacheInstaller(None, ("true",), 5)


def body(text: str) -> str:
    """`text` without its comment lines (the header explains where to include the file)."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))


# --- nginx --------------------------------------------------------------------------------------


def test_nginx_site_mode_is_a_complete_https_server_with_redirect() -> None:
    text = nginx().site_config(site(hsts=31536000), LIVE)
    assert text.startswith(f"{HEADER_MARK} for site clinic:")
    assert "listen 443 ssl;" in text and "listen [::]" not in text
    assert "server_name clinic.example www.clinic.example;" in text
    assert 'ssl_certificate "/etc/mamoru/live/clinic/fullchain.pem";' in text
    assert 'ssl_certificate_key "/etc/mamoru/live/clinic/privkey.pem";' in text
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text
    ciphers = next(line for line in text.splitlines() if "ssl_ciphers" in line)
    assert "ECDHE-ECDSA-AES128-GCM-SHA256" in ciphers and "CBC" not in ciphers
    assert all(suite.startswith("ECDHE-") for suite in ciphers.split()[1].strip(";").split(":"))
    assert "stapling" not in text
    assert 'add_header Strict-Transport-Security "max-age=31536000" always;' in text
    assert 'root "/var/www/clinic";' in text
    # the plain-HTTP server: challenges from the webroot, everything else 301 to https
    assert "listen 80;" in text
    assert 'location ^~ /.well-known/acme-challenge/ {\n        root "/var/www/acme";' in text
    assert "return 301 https://$host$request_uri;" in text
    assert text.count("server {") == 2


def test_nginx_variants() -> None:
    text = nginx(ipv6=True).site_config(site(hsts=0, redirect=False), LIVE)
    assert "Strict-Transport-Security" not in text
    assert text.count("server {") == 1 and "return 301" not in text
    assert "listen 443 ssl;\n    listen [::]:443 ssl;" in text
    text = nginx(ipv6=True).site_config(
        site(listen_https="127.0.0.1:8443", listen_http="[::1]:8080"), LIVE)
    assert "listen 127.0.0.1:8443 ssl;" in text and "[::]:8443" not in text
    assert "listen [::1]:8080;" in text
    assert "return 301 https://$host:8443$request_uri;" in text  # the port is kept
    standalone = replace(site(), challenge=Challenge(standalone=("127.0.0.1", 8402)))
    text = nginx().site_config(standalone, LIVE)
    assert "acme-challenge" not in text and "return 301" in text


def test_nginx_include_mode_snippets() -> None:
    included = site(mode="include", hsts=600)
    files = nginx().files(included, LIVE)
    assert list(files) == [tls_file(included), redirect_file(included)]
    tls = body(files[tls_file(included)])
    assert "server {" not in tls and "listen" not in tls
    assert 'ssl_certificate "/etc/mamoru/live/clinic/fullchain.pem";' in tls
    assert "max-age=600" in tls
    redirect = files[redirect_file(included)]
    assert "location ^~ /.well-known/acme-challenge/" in redirect
    assert "return 301 https://$host$request_uri;" in redirect
    assert "Include this file inside your HTTPS server block." in files[tls_file(included)]
    assert "in place of its locations" in redirect
    assert list(nginx().files(replace(included, server=replace(included.server, redirect=False)),
                              LIVE)) == [tls_file(included)]
    assert tls_file(site()) == "/etc/nginx/conf.d/mamoru-clinic-tls.inc"
    assert site_file(site()) == "/etc/nginx/conf.d/mamoru-clinic.conf"


def test_paths_with_spaces_and_quotes_are_quoted() -> None:
    assert quote('/srv/my "clinic" site') == '"/srv/my \\"clinic\\" site"'
    text = nginx().site_config(site(root="/srv/clinic site"), LIVE)
    assert 'root "/srv/clinic site";' in text


# --- Apache -------------------------------------------------------------------------------------


def test_apache_site_mode() -> None:
    s = site(type="apache", conf_dir="/etc/apache2/sites-enabled", hsts=600)
    text = apache().site_config(s, LIVE)
    assert "Listen" not in text
    assert "<VirtualHost *:443>" in text and "<VirtualHost *:80>" in text
    assert "ServerName clinic.example\n    ServerAlias www.clinic.example" in text
    assert "SSLEngine on" in text
    assert 'SSLCertificateFile "/etc/mamoru/live/clinic/fullchain.pem"' in text
    assert 'SSLCertificateKeyFile "/etc/mamoru/live/clinic/privkey.pem"' in text
    assert "SSLProtocol -all +TLSv1.2 +TLSv1.3" in text
    assert "Stapling" not in text
    assert 'Header always set Strict-Transport-Security "max-age=600"' in text
    assert ('Alias /.well-known/acme-challenge/ "/var/www/acme/.well-known/acme-challenge/"'
            in text)
    assert r"RewriteCond %{REQUEST_URI} !^/\.well-known/acme-challenge/" in text
    assert "RewriteRule ^ https://%{SERVER_NAME}%{REQUEST_URI} [R=301,L]" in text


def test_apache_listen_blocks_are_guarded_once_per_address() -> None:
    s = site(type="apache", listen_https="127.0.0.1:8443", listen_http="8080")
    text = apache().site_config(s, LIVE)
    assert ("<IfDefine !MAMORU_LISTEN_127_0_0_1_8443>\n    Define MAMORU_LISTEN_127_0_0_1_8443\n"
            "    Listen 127.0.0.1:8443 https\n</IfDefine>") in text
    assert "Listen 8080 http" in text
    assert "<VirtualHost 127.0.0.1:8443>" in text and "<VirtualHost *:8080>" in text
    assert "https://%{SERVER_NAME}:8443%{REQUEST_URI}" in text


@pytest.mark.parametrize(("wanted", "existing", "needed"), [
    (["443", "80"], None, []),  # unknown: the standard ports are the distribution's
    (["8443", "127.0.0.1:8080"], None, ["8443", "127.0.0.1:8080"]),
    (["443", "80"], [], ["443", "80"]),  # known: nobody listens
    (["443"], [UserListen(None, 443, "ports.conf:5")], []),
    (["127.0.0.1:443"], [UserListen(None, 443, "ports.conf:5")], []),  # every address covers
    (["127.0.0.1:443"], [UserListen("127.0.0.1", 443, "x:1")], []),
    (["127.0.0.1:443"], [UserListen("192.0.2.1", 443, "x:1")], ["127.0.0.1:443"]),
    (["8443"], [UserListen(None, 443, "x:1")], ["8443"]),
])
def test_listens_needed(wanted: list[str], existing: list[UserListen] | None,
                        needed: list[str]) -> None:
    assert listens_needed(wanted, existing) == needed


def test_listen_that_apache_could_not_bind_is_refused() -> None:
    with pytest.raises(InstallRefused, match=r"already listens on 127\.0\.0\.1:443") as refused:
        listens_needed(["443"], [UserListen("127.0.0.1", 443, "/etc/apache2/ports.conf:3")])
    assert "/etc/apache2/ports.conf:3" in str(refused.value)
    assert refused.value.retryable is False


def test_parse_listens() -> None:
    text = ("# Listen 81\nListen 80\n<IfModule ssl_module>\n\tListen 443 https\n</IfModule>\n"
            "listen 127.0.0.1:8443\nListen [::1]:9443\nListen ${PORT}\n")
    assert parse_listens(text, "ports.conf") == [
        UserListen(None, 80, "ports.conf:2"), UserListen(None, 443, "ports.conf:4"),
        UserListen("127.0.0.1", 8443, "ports.conf:6"), UserListen("::1", 9443, "ports.conf:7")]


def test_apache_include_snippets() -> None:
    s = site(type="apache", mode="include", conf_dir="/etc/apache2/mamoru")
    files = apache().files(s, LIVE)
    tls = body(files[tls_file(s)])
    assert "<VirtualHost" not in tls and "Listen" not in tls and "SSLEngine on" in tls
    assert "Include this file inside your HTTPS <VirtualHost>." in files[tls_file(s)]
    assert "RewriteRule" in files[redirect_file(s)]
    assert redirect_file(s) == "/etc/apache2/mamoru/mamoru-clinic-redirect.inc"


def test_include_mode_deploy_names_the_lines_to_add(tmp_path: Path) -> None:
    """One include-mode implementation for both servers, in each server's own words."""
    s = site(mode="include", conf_dir=str(tmp_path), listen_https="8443", listen_http="8080")
    tls, redirect = nginx().deploy(s, LIVE).includes
    assert (tls.path, tls.purpose) == (tls_file(s), "tls")
    assert str(tls) == (f"`include {tls_file(s)};` inside `server {{ listen 8443 ssl; "
                        "server_name clinic.example www.clinic.example; }`")
    assert str(redirect) == (f"`include {redirect_file(s)};` inside `server {{ listen 8080; "
                             "server_name clinic.example www.clinic.example; }` as its only "
                             "content")
    s = replace(s, server=replace(s.server, type="apache"))
    tls, redirect = apache().deploy(s, LIVE).includes
    assert str(tls) == (f"`Include {tls_file(s)}` inside `<VirtualHost *:8443>` with "
                        "ServerName clinic.example")
    assert str(redirect) == (f"`Include {redirect_file(s)}` inside `<VirtualHost *:8080>` with "
                             "ServerName clinic.example")
    assert (tmp_path / "mamoru-clinic-tls.inc").read_text().startswith(HEADER_MARK)
    site_mode = replace(s, server=replace(s.server, mode="site"))
    assert apache().deploy(site_mode, LIVE).includes == []


# --- small helpers ------------------------------------------------------------------------------


def test_listen_address_and_https_suffix() -> None:
    assert listen_address("443") == (None, 443)
    assert listen_address("0.0.0.0:443") == (None, 443)
    assert listen_address("[::]:443") == (None, 443)
    assert listen_address("[::1]:8443") == ("::1", 8443)
    assert https_suffix(site()) == ""
    assert https_suffix(site(listen_https="127.0.0.1:8443")) == ":8443"


def test_important_lines_pick_the_errors() -> None:
    nginx_output = ("nginx: [warn] conflicting server name \"a\" on 0.0.0.0:80, ignored\n"
                    "nginx: [emerg] unknown directive \"x\" in /etc/nginx/conf.d/b.conf:3\n"
                    "nginx: configuration file /etc/nginx/nginx.conf test failed\n")
    assert important_lines(nginx_output) == (
        'nginx: [emerg] unknown directive "x" in /etc/nginx/conf.d/b.conf:3')
    apache_output = ("AH00526: Syntax error on line 2 of /etc/apache2/sites-enabled/b.conf:\n"
                     "Invalid command 'X', perhaps misspelled\n")
    assert important_lines(apache_output) == (
        "AH00526: Syntax error on line 2 of /etc/apache2/sites-enabled/b.conf: | "
        "Invalid command 'X', perhaps misspelled")
