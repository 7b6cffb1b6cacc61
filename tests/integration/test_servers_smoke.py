"""Smoke tests of the test-server launchers themselves (tests/servers/), not of mamoru.

Each proves a fixture does what later tests rely on: Pebble answers and issues, nginx/Apache
start, serve, reload and stop by PID, acme2certifier offers ARI + profiles and issues.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import NameOID
from tests.servers.acme_issue import ari_cert_id, issue_http01, new_client
from tests.servers.apache import Apache
from tests.servers.dns_stub import DnsStub
from tests.servers.nginx import Nginx
from tests.servers.pebble import Pebble
from tests.servers.ports import free_port, port_is_open
from tests.servers.process import ServerError, pid_alive
from tests.servers.webroot_http import WebrootServer

pytestmark = pytest.mark.e2e


def _certs(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


def _verify_chain(fullchain_pem: str, root_pem: str) -> x509.Certificate:
    """Verify leaf + intermediates against ``root_pem`` with cryptography's verifier."""
    from cryptography.x509.verification import PolicyBuilder, Store

    certs = _certs(fullchain_pem)
    store = Store(_certs(root_pem))
    leaf = certs[0]
    name = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns_name = name.get_values_for_type(x509.DNSName)[0]
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(dns_name))
    verifier.verify(leaf, certs[1:])
    return leaf


# ---- Pebble --------------------------------------------------------------------------------


def test_pebble_directory_and_roots(pebble: Pebble) -> None:
    resp = requests.get(pebble.directory_url, verify=pebble.ca_bundle, timeout=5)
    assert resp.status_code == 200
    directory = resp.json()
    assert {"newNonce", "newAccount", "newOrder", "revokeCert"} <= directory.keys()
    assert directory["newOrder"].startswith("https://127.0.0.1:")

    root = x509.load_pem_x509_certificate(pebble.root_pem().encode())
    inter = x509.load_pem_x509_certificate(pebble.intermediate_pem().encode())
    assert "Pebble Root CA" in root.subject.rfc4514_string()
    assert inter.issuer == root.subject
    assert pebble.order_count() == 0
    assert "Starting Pebble ACME server" in pebble.log_text()


def test_pebble_issues_via_http01_webroot(pebble: Pebble, tmp_path: Path) -> None:
    with WebrootServer(tmp_path / "www", pebble.http_port) as web:
        issued = issue_http01(
            pebble.directory_url,
            pebble.ca_bundle,
            ["clinic.test", "www.clinic.test"],
            web.challenge_dir,
        )
        fetched = web.requests_for("/.well-known/acme-challenge/")
    leaf = _verify_chain(issued.fullchain_pem, pebble.root_pem())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == ["clinic.test", "www.clinic.test"]
    # Pebble validates each token from several "perspectives"; all answered 200.
    assert len(fetched) >= 2 and all(r.status == 200 for r in fetched)
    assert {r.host.split(":")[0] for r in fetched if r.host} == {"clinic.test", "www.clinic.test"}
    assert pebble.order_count() == 1
    assert pebble.issued_count() == 1
    assert pebble.new_order_requests() == 1


def test_pebble_factory_options(pebble_factory) -> None:
    eab = {"kid-1": "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"}
    p = pebble_factory(validity_seconds=600, eab_keys=eab, nonce_reject=0)
    cfg = json.loads(p.config_path.read_text())["pebble"]
    assert cfg["certificateValidityPeriod"] == 600
    assert cfg["externalAccountBindingRequired"] is True
    assert cfg["externalAccountMACKeys"] == eab
    assert cfg["listenAddress"].startswith("127.0.0.1:")
    directory = requests.get(p.directory_url, verify=p.ca_bundle, timeout=5).json()
    assert directory["meta"]["externalAccountRequired"] is True
    assert "Using certificate validity period of 600 seconds" in p.log_text()
    # An account without EAB is refused when EAB is required.
    from acme import messages

    with pytest.raises(messages.Error) as excinfo:
        new_client(p.directory_url, p.ca_bundle)
    assert excinfo.value.typ == "urn:ietf:params:acme:error:externalAccountRequired"
    _, regr = new_client(p.directory_url, p.ca_bundle, eab=("kid-1", eab["kid-1"]))
    assert regr.body.status == "valid"


def test_pebble_stop_kills_both_processes(pebble_factory) -> None:
    p = pebble_factory()
    pid = p.pid
    assert pid is not None and pid_alive(pid)
    ctl = p._challtestsrv.pid
    p.stop()
    assert not pid_alive(pid) and not pid_alive(ctl)
    assert not port_is_open("127.0.0.1", p.listen_port)


# ---- nginx ---------------------------------------------------------------------------------


def test_nginx_serves_reloads_and_stops(nginx_factory, tmp_path: Path) -> None:
    nginx: Nginx = nginx_factory()
    port = free_port()
    www = tmp_path / "site"
    www.mkdir()
    (www / "hello.txt").write_text("hello from nginx\n")
    nginx.write_conf(
        "site",
        f"server {{\n    listen 127.0.0.1:{port};\n    server_name clinic.test;\n"
        f"    root {www};\n}}\n",
    )
    assert nginx.config_test().returncode == 0
    assert nginx.test_argv[:1] == ["/usr/sbin/nginx"] and "-t" in nginx.test_argv

    nginx.start(wait_ports=(port,))
    master = nginx.pid
    assert master is not None and int(nginx.pid_file.read_text()) == master
    r = requests.get(f"http://127.0.0.1:{port}/hello.txt", timeout=5)
    assert r.status_code == 200 and r.text == "hello from nginx\n"

    nginx.write_conf(
        "site",
        f"server {{\n    listen 127.0.0.1:{port};\n    server_name clinic.test;\n"
        f"    root {www};\n    location = /version {{ return 200 'v2'; }}\n}}\n",
    )
    before = nginx.worker_pids()
    nginx.reload()
    assert nginx.pid == master and not set(before) & set(nginx.worker_pids())
    assert requests.get(f"http://127.0.0.1:{port}/version", timeout=5).text == "v2"

    # A broken config is refused by `nginx -t` and by reload; the old config keeps serving.
    nginx.write_conf("broken", "server { this is not nginx }\n")
    bad = subprocess.run(nginx.test_argv, capture_output=True, text=True)
    assert bad.returncode != 0 and "broken.conf" in bad.stderr
    assert subprocess.run(nginx.reload_argv, capture_output=True).returncode != 0
    nginx.remove_conf("broken")
    assert requests.get(f"http://127.0.0.1:{port}/version", timeout=5).text == "v2"

    workers = nginx.worker_pids()
    nginx.stop()
    assert not pid_alive(master)
    assert not any(pid_alive(w) for w in workers)
    assert not port_is_open("127.0.0.1", port)


# ---- Apache --------------------------------------------------------------------------------


def test_apache_serves_reloads_and_stops(apache_factory) -> None:
    port = free_port()
    apache: Apache = apache_factory(listen=[port])
    (apache.docroot / "hello.txt").write_text("hello from apache\n")
    (apache.docroot / "hello.txt").chmod(0o644)
    apache.write_conf(
        "site",
        f"<VirtualHost *:{port}>\n    ServerName clinic.test\n"
        f"    DocumentRoot {apache.docroot}\n</VirtualHost>\n",
    )
    res = apache.config_test()
    assert res.returncode == 0, res.stderr

    apache.start()
    parent = apache.pid
    assert parent is not None and int(apache.pid_file.read_text()) == parent
    r = requests.get(f"http://127.0.0.1:{port}/hello.txt", timeout=5)
    assert r.status_code == 200 and r.text == "hello from apache\n"

    apache.write_conf(
        "site",
        f"<VirtualHost *:{port}>\n    ServerName clinic.test\n"
        f"    DocumentRoot {apache.docroot}\n"
        f"    Redirect 302 /version http://v2.test/\n</VirtualHost>\n",
    )
    gen = apache.generation()
    apache.reload()
    assert apache.generation() == gen + 1 and apache.pid == parent
    r = requests.get(f"http://127.0.0.1:{port}/version", allow_redirects=False, timeout=5)
    assert r.status_code == 302 and r.headers["Location"] == "http://v2.test/"

    apache.write_conf("broken", "<VirtualHost *:1>\n  NoSuchDirective on\n</VirtualHost>\n")
    bad = subprocess.run(apache.test_argv, capture_output=True, text=True)
    assert bad.returncode != 0 and "NoSuchDirective" in bad.stderr
    assert subprocess.run(apache.reload_argv, capture_output=True).returncode != 0
    apache.remove_conf("broken")

    children = apache.child_pids()
    apache.stop()
    assert not pid_alive(parent)
    assert not any(pid_alive(c) for c in children)
    assert not port_is_open("127.0.0.1", port)


# ---- acme2certifier ------------------------------------------------------------------------


def test_a2c_directory_has_ari_and_profiles(a2c) -> None:
    directory = a2c.directory()
    assert directory["renewalInfo"].startswith(a2c.base_url)
    assert set(directory["meta"]["profiles"]) == {"classic", "tlsserver", "shortlived"}
    assert directory["newOrder"] == f"{a2c.base_url}/acme/neworders"


def test_a2c_issues_via_http01_and_logs_orders(a2c, tmp_path: Path) -> None:
    with WebrootServer(tmp_path / "www", a2c.http_port) as web:
        acme = new_client(a2c.directory_url, True)
        first = issue_http01(
            a2c.directory_url,
            True,
            ["clinic.test"],
            web.challenge_dir,
            profile="shortlived",
            acme=acme,
        )
        old_id = ari_cert_id(first.fullchain_pem)
        second = issue_http01(
            a2c.directory_url, True, ["clinic.test"], web.challenge_dir, replaces=old_id, acme=acme
        )
        fetched = web.requests_for("/.well-known/acme-challenge/")
    leaf = _verify_chain(first.fullchain_pem, a2c.ca_cert_pem)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "clinic.test"
    _verify_chain(second.fullchain_pem, a2c.ca_cert_pem)
    # The token was fetched through the http-01 port patch with the bare name as Host.
    assert fetched and all(r.host == "clinic.test" and r.status == 200 for r in fetched)

    orders = a2c.orders()
    assert [o["status"] for o in orders] == [201, 201]
    assert orders[0]["payload"]["profile"] == "shortlived"
    assert "replaces" not in orders[0]["payload"]
    assert orders[1]["payload"]["replaces"] == old_id
    assert a2c.orders_with_replaces() == [orders[1]]

    # ARI answers for the issued certificate, with Retry-After.
    r = requests.get(f"{a2c.directory()['renewalInfo']}/{old_id}", timeout=5)
    assert r.status_code == 200 and "Retry-After" in r.headers
    window = r.json()["suggestedWindow"]
    assert _rfc3339(window["start"]) > dt.datetime.now(dt.UTC)


def test_a2c_ari_window_in_the_past(a2c_factory, tmp_path: Path) -> None:
    # dns_port=0: the DNS stub runs on a free port and the resolver port is patched.
    a2c = a2c_factory(
        ari_window=(-7200, -3600), ari_retry_after=60, cert_validity_days=7, dns_port=0
    )
    assert a2c.dns is not None and a2c.dns.port != 53
    with WebrootServer(tmp_path / "www", a2c.http_port) as web:
        issued = issue_http01(a2c.directory_url, True, ["clinic.test"], web.challenge_dir)
    leaf = _certs(issued.fullchain_pem)[0]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=7, hours=1)
    r = requests.get(
        f"{a2c.directory()['renewalInfo']}/{ari_cert_id(issued.fullchain_pem)}", timeout=5
    )
    assert r.status_code == 200 and r.headers["Retry-After"] == "60"
    window = r.json()["suggestedWindow"]
    assert _rfc3339(window["end"]) < dt.datetime.now(dt.UTC)
    assert ("clinic.test.", "A") in a2c.dns.queries


def test_dns_stub_port_busy_message() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        with pytest.raises(ServerError, match=rf"127\.0\.0\.1:{port} \(udp\) is already in use"):
            DnsStub(port).start()


def _rfc3339(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
