"""Generated web-server config, as text: what site and include mode write for nginx and Apache,
and the Apache `Listen` decision. (tests/integration runs these files through the real
`nginx -t` / `apache2 -t`.)"""

from __future__ import annotations

from dataclasses import replace

import pytest

from mamoru.config.model import Challenge, Server, Site
from mamoru.install import apache, nginx
from mamoru.install.apache import UserListen, listens_needed, parse_listens
from mamoru.install.base import (
    HEADER_MARK,
    InstallRefused,
    https_suffix,
    important_lines,
    listen_address,
)

LIVE = "/etc/mamoru/live"


def site(**server: object) -> Site:
    settings = Server(type="nginx", conf_dir="/etc/nginx/conf.d", listen_https="443",
                      listen_http="80", root="/var/www/clinic")
    return Site("clinic", ("clinic.example", "www.clinic.example"),
                challenge=Challenge(webroot="/var/www/acme"), server=replace(settings, **server))


def body(text: str) -> str:
    """`text` without its comment lines (the header explains where to include the file)."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))


# --- nginx --------------------------------------------------------------------------------------


def test_nginx_site_mode_is_a_complete_https_server_with_redirect() -> None:
    text = nginx.render_site(site(hsts=31536000), LIVE, ipv6=False)
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
    text = nginx.render_site(site(hsts=0, redirect=False), LIVE, ipv6=True)
    assert "Strict-Transport-Security" not in text
    assert text.count("server {") == 1 and "return 301" not in text
    assert "listen 443 ssl;\n    listen [::]:443 ssl;" in text
    text = nginx.render_site(site(listen_https="127.0.0.1:8443", listen_http="[::1]:8080"),
                             LIVE, ipv6=True)
    assert "listen 127.0.0.1:8443 ssl;" in text and "[::]:8443" not in text
    assert "listen [::1]:8080;" in text
    assert "return 301 https://$host:8443$request_uri;" in text  # the port is kept
    standalone = replace(site(), challenge=Challenge(standalone=("127.0.0.1", 8402)))
    text = nginx.render_site(standalone, LIVE, ipv6=False)
    assert "acme-challenge" not in text and "return 301" in text


def test_nginx_include_mode_snippets() -> None:
    tls = body(nginx.render_tls(site(mode="include", hsts=600), LIVE))
    assert "server {" not in tls and "listen" not in tls
    assert 'ssl_certificate "/etc/mamoru/live/clinic/fullchain.pem";' in tls
    assert "max-age=600" in tls
    redirect = nginx.render_redirect(site(mode="include"))
    assert "location ^~ /.well-known/acme-challenge/" in redirect
    assert "return 301 https://$host$request_uri;" in redirect
    assert nginx.tls_file(site()) == "/etc/nginx/conf.d/mamoru-clinic-tls.inc"
    assert nginx.site_file(site()) == "/etc/nginx/conf.d/mamoru-clinic.conf"


def test_paths_with_spaces_and_quotes_are_quoted() -> None:
    assert nginx.quote('/srv/my "clinic" site') == '"/srv/my \\"clinic\\" site"'
    text = nginx.render_site(site(root="/srv/clinic site"), LIVE, ipv6=False)
    assert 'root "/srv/clinic site";' in text


# --- Apache -------------------------------------------------------------------------------------


def test_apache_site_mode() -> None:
    s = site(type="apache", conf_dir="/etc/apache2/sites-enabled", hsts=600)
    text = apache.render_site(s, LIVE, listens=[])
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
    text = apache.render_site(s, LIVE, listens=["127.0.0.1:8443", "8080"])
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
    tls = body(apache.render_tls(s, LIVE))
    assert "<VirtualHost" not in tls and "Listen" not in tls and "SSLEngine on" in tls
    assert "RewriteRule" in apache.render_redirect(s)
    assert apache.redirect_file(s) == "/etc/apache2/mamoru/mamoru-clinic-redirect.inc"


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
