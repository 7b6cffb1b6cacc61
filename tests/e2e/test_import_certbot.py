"""Taking over a real certbot state (Debian's certbot 2.1 and its nginx plugin, run against
Pebble): import, renew with mamoru through certbot's account, nginx keeps serving through the
unchanged live/ paths, `certbot renew` leaves the imported lineages alone, undo gives back
byte-identical files. Plus hostile states, each refused with nothing half imported, and the
time an import of 50 lineages takes."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import configobj  # type: ignore[import-untyped]
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mamoru.install.verify import fetch_leaf
from mamoru.migrate.adopt import adopt_all, load_manifest, undo
from mamoru.migrate.certbot_state import CertbotState, read_state
from mamoru.migrate.config_writer import render_config, write_config
from mamoru.migrate.plan import SitePlan, plan_state
from mamoru.protocol.account import account_dir
from mamoru.storage import FileStorage
from tests.helpers import run_mamoru
from tests.servers.certbot import Certbot, clone_lineage, snapshot
from tests.servers.nginx import Nginx
from tests.servers.pebble import Pebble
from tests.servers.ports import free_port

pytestmark = pytest.mark.e2e

# 20 days: inside certbot's default renew_before_expiry (30 days), so `certbot renew` would
# renew every lineage it still owned.
VALIDITY = 20 * 86400


def serial_of(pem: bytes) -> str:
    return format(x509.load_pem_x509_certificate(pem).serial_number, "x")


def mamoru_paths(tmp_path: Path) -> dict[str, str]:
    return {"state": str(tmp_path / "state"), "live": str(tmp_path / "live"),
            "event_log": str(tmp_path / "log" / "events.jsonl")}


def plans_for(certbot: Certbot, **kwargs: Any) -> tuple[list[SitePlan], CertbotState]:
    state = read_state(str(certbot.config_dir))
    plans, refused = plan_state(state, **kwargs)
    assert refused == []
    return plans, state


def test_a_real_certbot_state_moves_to_mamoru_and_back(
        tmp_path: Path, pebble_factory: Callable[..., Pebble],
        nginx_factory: Callable[..., Nginx]) -> None:
    pebble = pebble_factory(validity_seconds=VALIDITY)
    certbot = Certbot(tmp_path / "letsencrypt", pebble)
    live = certbot.config_dir / "live"
    webroot, acme = tmp_path / "www", tmp_path / "acme"
    webroot.mkdir()
    acme.mkdir()

    # standalone (ECDSA P-384): certbot answers http-01 itself, before nginx takes the port
    certbot.certonly("standalone", ["s.example"], "--http-01-port", str(pebble.http_port),
                     "--http-01-address", "127.0.0.1", "--key-type", "ecdsa",
                     "--elliptic-curve", "secp384r1")

    https = free_port()
    nginx = nginx_factory()
    nginx.write_conf("port80", f"""
server {{
    listen 127.0.0.1:{pebble.http_port};
    server_name w1.example w2.example w3.example;
    root {webroot};
}}
server {{
    listen 127.0.0.1:{pebble.http_port};
    server_name n.example;
    root {webroot};
}}
""")
    nginx.start(wait_ports=(pebble.http_port,))
    # webroot with a [[webroot_map]] of three names (RSA 2048), served by nginx
    certbot.certonly("webroot", ["w1.example", "w2.example", "w3.example"], "-w", str(webroot),
                     "--key-type", "rsa", "--rsa-key-size", "2048")
    # the nginx plugin (ECDSA P-256) with a deploy hook that reloads this nginx
    hook = " ".join(nginx.reload_argv)
    certbot.certonly("nginx", ["n.example"], "--nginx-server-root", str(nginx.workdir),
                     "--nginx-ctl", "/usr/sbin/nginx", "--http-01-port", str(pebble.http_port),
                     "--key-type", "ecdsa", "--deploy-hook", hook)
    conf = configobj.ConfigObj(str(certbot.config_dir / "renewal" / "w1.example.conf"))
    assert dict(conf["renewalparams"]["webroot_map"]) == {
        n: str(webroot) for n in ("w1.example", "w2.example", "w3.example")}

    # The clinic's own config, as a certbot user has it: TLS from /…/live/NAME/; and the line
    # the import asks for (the ACME location on the port-80 server of the nginx lineage).
    nginx.write_conf("port80", f"""
server {{
    listen 127.0.0.1:{pebble.http_port};
    server_name w1.example w2.example w3.example;
    root {webroot};
}}
server {{
    listen 127.0.0.1:{pebble.http_port};
    server_name n.example;
    root {webroot};
    location ^~ /.well-known/acme-challenge/ {{ root {acme}; }}
}}
""")
    nginx.write_conf("tls", "".join(f"""
server {{
    listen 127.0.0.1:{https} ssl;
    server_name {name};
    ssl_certificate {live}/{lineage}/fullchain.pem;
    ssl_certificate_key {live}/{lineage}/privkey.pem;
}}
""" for name, lineage in (("n.example", "n.example"),
                          ("w1.example w2.example w3.example", "w1.example"))))
    nginx.reload()
    certbot_serial = serial_of((live / "n.example" / "cert.pem").read_bytes())
    assert fetch_leaf(("127.0.0.1", https), "n.example").serial() == certbot_serial

    before = snapshot(certbot.config_dir)
    orders = pebble.order_count()
    plans, state = plans_for(certbot, acme_webroot=str(acme), verify=f"127.0.0.1:{https}")
    by_site = {p.site: p for p in plans}
    assert set(by_site) == {"n-example", "s-example", "w1-example"}
    assert by_site["w1-example"].challenge == {"webroot": str(webroot)}
    assert by_site["w1-example"].key == "rsa-2048"
    assert by_site["s-example"].challenge == {"standalone": f"127.0.0.1:{pebble.http_port}"}
    assert by_site["s-example"].key == "ec-p384"
    assert by_site["n-example"].key == "ec-p256"
    assert by_site["n-example"].server == {"type": "command", "reload": nginx.reload_argv,
                                           "verify": f"127.0.0.1:{https}"}
    assert any("location ^~ /.well-known/acme-challenge/" in n for n in by_site["n-example"].notes)
    # the webroot lineage is served by the same nginx: the user's reload goes in too
    by_site["w1-example"] = plans[[p.site for p in plans].index("w1-example")] = SitePlan(
        **{**by_site["w1-example"].__dict__,
           "server": {"type": "command", "reload": nginx.reload_argv,
                      "verify": f"127.0.0.1:{https}"}})

    paths = mamoru_paths(tmp_path)
    storage = FileStorage(paths["state"], paths["live"])
    started = time.monotonic()
    imported, failed = adopt_all(plans, storage, paths["state"])
    took = time.monotonic() - started
    assert failed == [] and len(imported) == 3, failed
    print(f"import of 3 real lineages: {took:.3f} s")
    account_url = state.lineages[0].account.uri
    assert {i.account_url for i in imported} == {account_url}

    config = tmp_path / "config.yaml"
    acme_settings = {"directory": pebble.directory_url, "contact": "admin@clinic.example",
                     "ca_bundle": pebble.ca_bundle}
    write_config(str(config), render_config(plans, acme_settings, paths))
    text = config.read_text()
    assert "# certbot lineage n.example" in text and "# TODO:" in text
    with pytest.raises(Exception, match="already exists"):
        write_config(str(config), "x")
    assert config.read_text() == text
    checked = run_mamoru("check-config", "-c", str(config), check=0)
    assert "3 sites" in checked.stdout

    # The old paths now read mamoru's files; nginx still serves certbot's certificate.
    assert (live / "n.example" / "fullchain.pem").read_bytes() == (
        tmp_path / "live" / "n-example" / "fullchain.pem").read_bytes()
    assert fetch_leaf(("127.0.0.1", https), "n.example").serial() == certbot_serial
    listed = certbot.run("certificates").stdout
    assert all(f"Certificate Name: {n}" in listed for n in ("n.example", "s.example",
                                                             "w1.example"))

    # A renewal by mamoru: certbot's account, and nginx serves the new certificate through
    # /…/live/n.example/ after mamoru's reload (verified by mamoru, and here by TLS).
    result = run_mamoru("renew", "--json", "--force", "-c", str(config), "n-example",
                        "w1-example", check=0)
    renewed = {s["site"]: s for s in json.loads(result.stdout)["sites"]}
    assert {s["status"] for s in renewed.values()} == {"renewed"}, renewed
    assert pebble.order_count() == orders + 2
    info = json.loads(Path(account_dir(paths["state"], pebble.directory_url),
                           "account.json").read_text())
    assert info["url"] == account_url  # what Pebble answered for certbot's key
    new_serial = renewed["n-example"]["serial"]
    assert new_serial != certbot_serial
    assert fetch_leaf(("127.0.0.1", https), "n.example").serial() == new_serial
    assert serial_of((live / "n.example" / "cert.pem").read_bytes()) == new_serial
    assert fetch_leaf(("127.0.0.1", https), "w1.example").serial() == renewed["w1-example"][
        "serial"]

    nginx.stop()  # the standalone site answers on the port itself, as certbot did
    result = run_mamoru("renew", "--json", "--force", "-c", str(config), "s-example", check=0)
    assert json.loads(result.stdout)["sites"][0]["status"] == "renewed"

    # certbot renews none of them, although all three are due by its own rule.
    orders = pebble.order_count()
    out = certbot.renew()
    assert pebble.order_count() == orders, out.stdout
    assert "No renewals were attempted" in out.stdout

    # undo: certbot's files exactly as before, mamoru's sites gone.
    undone = undo(storage, paths["state"])
    assert sorted(u.lineage for u in undone) == ["n.example", "s.example", "w1.example"]
    assert all(u.warning and "--force-renewal" in u.warning for u in undone)  # all renewed
    assert snapshot(certbot.config_dir) == before
    assert not (tmp_path / "live" / "n-example").exists()
    assert not os.listdir(tmp_path / "state" / "sites")
    assert load_manifest(paths["state"])["imports"] == []


@pytest.fixture
def one_lineage(tmp_path: Path, pebble_factory: Callable[..., Pebble]) -> Certbot:
    """One standalone lineage, already due by certbot's rule (20 days left)."""
    pebble = pebble_factory(validity_seconds=VALIDITY)
    certbot = Certbot(tmp_path / "letsencrypt", pebble)
    certbot.certonly("standalone", ["clinic.example"], "--http-01-port", str(pebble.http_port),
                     "--http-01-address", "127.0.0.1", "--key-type", "ecdsa")
    return certbot


def test_hostile_lineages_are_refused_with_the_reason_and_left_alone(
        tmp_path: Path, one_lineage: Certbot) -> None:
    config_dir = one_lineage.config_dir
    unknown = clone_lineage(config_dir, "clinic.example", "unknown")
    conf = configobj.ConfigObj(str(unknown))
    conf["renewalparams"]["authenticator"] = "dns-acme-magic"
    conf.write()
    clone_lineage(config_dir, "clinic.example", "missing")
    os.unlink(config_dir / "archive" / "missing" / "chain1.pem")
    clone_lineage(config_dir, "clinic.example", "wrongkey")
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    (config_dir / "archive" / "wrongkey" / "privkey1.pem").write_bytes(other)
    clone_lineage(config_dir, "clinic.example", "outside")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(config_dir / "archive" / "outside" / "cert1.pem", elsewhere / "cert1.pem")
    os.unlink(config_dir / "live" / "outside" / "cert.pem")
    os.symlink(elsewhere / "cert1.pem", config_dir / "live" / "outside" / "cert.pem")

    before = snapshot(config_dir)
    plans, refused = plan_state(read_state(str(config_dir)))
    assert [p.lineage.name for p in plans] == ["clinic.example"]
    why = {r.name: r.reason for r in refused}
    assert set(why) == {"unknown", "missing", "wrongkey", "outside"}
    assert "unknown authenticator 'dns-acme-magic'" in why["unknown"] or "dns" in why["unknown"]
    assert "points outside the certbot directory" in why["outside"]
    assert "missing" in why["missing"] and "chain1.pem" in why["missing"]
    assert "is not the key of" in why["wrongkey"]
    assert snapshot(config_dir) == before

    # A failure in the middle of a takeover: mamoru already has another account for this CA.
    # The lineage is stored, made live... then refused, and everything is put back.
    paths = mamoru_paths(tmp_path)
    storage = FileStorage(paths["state"], paths["live"])
    theirs = Path(account_dir(paths["state"], one_lineage.pebble.directory_url))
    theirs.mkdir(parents=True)
    (theirs / "key.pem").write_bytes(other)
    plan = plans[0]
    imported, failed = adopt_all([plan], storage, paths["state"])
    assert imported == [] and "already has another account" in failed[0].reason
    assert snapshot(config_dir) == before
    assert not (tmp_path / "live" / plan.site).exists()
    assert not (tmp_path / "state" / "sites" / plan.site).exists()
    assert load_manifest(paths["state"])["imports"] == []

    shutil.rmtree(theirs)
    imported, failed = adopt_all([plan], storage, paths["state"])
    assert failed == [] and [i.lineage for i in imported] == ["clinic.example"]
    after = snapshot(config_dir)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert all("/clinic.example" in p for p in changed), changed  # nothing of the others
    # Given back (this also leaves no mamoru key that lives on in certbot's files, which the
    # suite's secret scan would count as a copy outside mamoru's key files).
    assert [u.lineage for u in undo(storage, paths["state"])] == ["clinic.example"]
    assert snapshot(config_dir) == before


def test_an_import_of_fifty_lineages(tmp_path: Path, one_lineage: Certbot) -> None:
    config_dir = one_lineage.config_dir
    for n in range(49):
        clone_lineage(config_dir, "clinic.example", f"clinic{n:02d}.example")
    before = snapshot(config_dir)
    paths = mamoru_paths(tmp_path)
    storage = FileStorage(paths["state"], paths["live"])
    started = time.monotonic()
    plans, _state = plans_for(one_lineage)
    imported, failed = adopt_all(plans, storage, paths["state"])
    took = time.monotonic() - started
    assert failed == [] and len(imported) == 50
    started = time.monotonic()
    undo(storage, paths["state"])
    undo_took = time.monotonic() - started
    assert snapshot(config_dir) == before
    print(f"import of 50 lineages: {took:.2f} s; undo: {undo_took:.2f} s")
    assert took < 60


def test_the_command_dry_run_changes_nothing_and_a_config_is_never_overwritten(
        tmp_path: Path, one_lineage: Certbot) -> None:
    from mamoru.config.load import load_config
    from mamoru.errors import ConfigError
    from mamoru.migrate.command import import_certbot, undo_import
    from tests.helpers import write_config as write_mamoru_config

    pebble = one_lineage.pebble
    config = write_mamoru_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {})
    settings = load_config(str(config))
    config_dir = str(one_lineage.config_dir)
    before = snapshot(one_lineage.config_dir)

    dry = import_certbot(config_dir, settings=settings, dry_run=True)
    assert [p.site for p in dry.plans] == ["clinic-example"] and dry.exit_code == 0
    assert "clinic.example: would become site clinic-example (clinic.example)" in dry.lines()
    assert "# certbot lineage clinic.example" in dry.config_text
    assert snapshot(one_lineage.config_dir) == before
    assert not (tmp_path / "state").exists()

    existing = tmp_path / "mine.yaml"
    existing.write_text("# the clinic's own\n")
    with pytest.raises(ConfigError, match="already exists"):
        import_certbot(config_dir, settings=settings, write_config_to=str(existing))
    assert existing.read_text() == "# the clinic's own\n"
    assert snapshot(one_lineage.config_dir) == before
    assert not (tmp_path / "state" / "sites").exists()

    other = write_mamoru_config(tmp_path, "https://127.0.0.1:1/other", None, {},
                                name="other.yaml")
    wrong_ca = import_certbot(config_dir, settings=load_config(str(other)))
    assert wrong_ca.plans == [] and "one CA per config" in wrong_ca.refused[0].reason

    written = tmp_path / "imported.yaml"
    report = import_certbot(config_dir, settings=settings, write_config_to=str(written))
    assert report.exit_code == 0 and [i.site for i in report.imported] == ["clinic-example"]
    assert oct(written.stat().st_mode & 0o777) == "0o600"
    run_mamoru("check-config", "-c", str(written), check=0)
    assert load_config(str(written)).site("clinic-example").domains == ("clinic.example",)
    again = import_certbot(config_dir, settings=settings)
    assert again.imported == [] and again.plans == []
    assert again.refused[0].reason.startswith("already imported")
    orders = one_lineage.pebble.order_count()
    one_lineage.renew()  # due, but no longer certbot's
    assert one_lineage.pebble.order_count() == orders

    undone = undo_import(settings)
    assert [(u.lineage, u.warning) for u in undone] == [("clinic.example", None)]
    assert snapshot(one_lineage.config_dir) == before
    one_lineage.renew()  # certbot's again: it renews the due lineage
    assert one_lineage.pebble.order_count() == orders + 1


def test_the_import_certbot_verb(tmp_path: Path, one_lineage: Certbot) -> None:
    """The contract: `mamoru import-certbot [--from DIR] [--write-config FILE] [--dry-run]
    [-c CONFIG]` and `mamoru import-certbot --undo`, as whole processes."""
    from tests.helpers import write_config as write_mamoru_config

    pebble = one_lineage.pebble
    config = write_mamoru_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {})
    from_dir = str(one_lineage.config_dir)
    before = snapshot(one_lineage.config_dir)
    written = tmp_path / "imported.yaml"

    dry = run_mamoru("import-certbot", "--from", from_dir, "--dry-run", "-c", str(config),
                     check=0)
    assert "clinic.example: would become site clinic-example" in dry.stdout
    assert "# certbot lineage clinic.example" in dry.stdout
    assert snapshot(one_lineage.config_dir) == before and not written.exists()

    done = run_mamoru("import-certbot", "--from", from_dir, "--write-config", str(written),
                      "-c", str(config), check=0)
    assert "clinic.example: imported as site clinic-example" in done.stdout
    run_mamoru("check-config", "-c", str(written), check=0)
    again = run_mamoru("import-certbot", "--from", from_dir, "--write-config", str(written),
                       "-c", str(config), check=2)
    assert "already exists" in again.stderr

    renewed = run_mamoru("renew", "--json", "--force", "-c", str(written), check=0)
    assert json.loads(renewed.stdout)["sites"][0]["status"] == "renewed"

    undone = run_mamoru("import-certbot", "--undo", "-c", str(config), check=0)
    assert "clinic.example: given back to certbot" in undone.stdout
    assert "--force-renewal" in undone.stderr  # mamoru had renewed it
    assert snapshot(one_lineage.config_dir) == before
    missing = run_mamoru("import-certbot", "--from", str(tmp_path / "nope"), "-c", str(config),
                         check=1)
    assert "has no renewal/ directory" in missing.stderr
