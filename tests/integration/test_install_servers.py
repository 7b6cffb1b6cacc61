"""The install transaction against REAL nginx and Apache (own prefixes, loopback free ports),
with certificates from a throwaway CA (the end-to-end tests use Pebble's): generated configs
pass the servers' own config tests, the new certificate is proven served per name, and every
failure puts the previous state back — a rejected config is never reloaded."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from tests.servers.apache import Apache, make_traversable
from tests.servers.nginx import Nginx
from tests.servers.ports import free_port
from tests.servers.tls import CertAndKey, make_ca, make_leaf

from mamoru.config.model import Challenge, Server, Site
from mamoru.errors import ConfigTestFailed, ReloadFailed, VerifyFailed
from mamoru.install.transaction import InstallRefused, install, installer_for
from mamoru.install.verify import fetch_leaf
from mamoru.observe.events import Events, MemorySink
from mamoru.storage import CertVersion, FileStorage

pytestmark = pytest.mark.e2e  # starts real web servers

NAMES = ("clinic.example", "www.clinic.example")


@dataclass
class Web:
    """One real web server under test, with what mamoru's config needs to drive it."""

    kind: str
    server: Nginx | Apache
    https: int
    http: int
    docroot: Path
    webroot: Path

    @property
    def conf_dir(self) -> Path:
        return self.server.conf_dir

    def reload_marker(self) -> Any:
        """Something that changes when the server reloads (nginx: workers; Apache: generation)."""
        if isinstance(self.server, Nginx):
            return frozenset(self.server.worker_pids())
        return self.server.generation()

    def wait_reloaded(self, before: Any, count: int) -> None:
        """Wait until Apache has put `count` reloads since `before` in service: a graceful
        restart reads the config after the command returns, so editing the config right
        away would race it. (nginx keeps its old config if a reload finds a broken file.)"""
        if isinstance(self.server, Apache):
            self.server.wait_generation(before + count)

    def user_vhost(self, names: tuple[str, ...], include: str | None = None,
                   cert: tuple[str, str] | None = None) -> str:
        """The user's own HTTPS server block for `names` (with an include or a certificate)."""
        if isinstance(self.server, Nginx):
            body = f"include {include};" if include else (
                f"ssl_certificate {cert[0]}; ssl_certificate_key {cert[1]};" if cert else "")
            return (f"server {{\n    listen 127.0.0.1:{self.https} ssl;\n"
                    f"    server_name {' '.join(names)};\n    {body}\n"
                    f"    root {self.docroot};\n}}\n")
        # mamoru's include mode writes no Listen: the user's config has it.
        body = f"Include {include}" if include else (
            f"SSLEngine on\n    SSLCertificateFile {cert[0]}\n    SSLCertificateKeyFile {cert[1]}"
            if cert else "")
        return (f"Listen 127.0.0.1:{self.https}\n"
                f"<VirtualHost 127.0.0.1:{self.https}>\n    ServerName {names[0]}\n"
                + (f"    ServerAlias {' '.join(names[1:])}\n" if names[1:] else "")
                + f"    DocumentRoot {self.docroot}\n    {body}\n</VirtualHost>\n")

    def site(self, **server: Any) -> Site:
        settings = Server(type=self.kind, mode="site", conf_dir=str(self.conf_dir),
                          listen_https=f"127.0.0.1:{self.https}",
                          listen_http=f"127.0.0.1:{self.http}", root=str(self.docroot),
                          test=tuple(self.server.test_argv),
                          reload=tuple(self.server.reload_argv), verify_timeout=5.0)
        return Site("clinic", NAMES, challenge=Challenge(webroot=str(self.webroot)),
                    server=replace(settings, **server))


@pytest.fixture(params=["nginx", "apache"])
def web(request: pytest.FixtureRequest, tmp_path: Path, nginx_factory: Callable[..., Nginx],
        apache_factory: Callable[..., Apache]) -> Iterator[Web]:
    https, http = free_port(), free_port()
    webroot = tmp_path / "acme"
    (webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
    if request.param == "nginx":
        server: Nginx | Apache = nginx_factory()
        docroot = tmp_path / "www"
        docroot.mkdir()
        # The user's own default server on the plain-HTTP port (as a fresh install has).
        server.write_conf("000-default", f"server {{\n    listen 127.0.0.1:{http} "
                          f"default_server;\n    return 404;\n}}\n")
        web = Web("nginx", server, https, http, docroot, webroot)
        server.start(wait_ports=(http,))
    else:
        server = apache_factory(listen=[http])  # the user's ports.conf listens on http
        make_traversable(webroot, readable=True)
        server.write_conf("000-default", f"<VirtualHost 127.0.0.1:{http}>\n"
                          f"    DocumentRoot {server.docroot}\n</VirtualHost>\n")
        web = Web("apache", server, https, http, server.docroot, webroot)
        server.start()
    yield web


def new_version(storage: FileStorage, ca: CertAndKey, names: tuple[str, ...] = NAMES
                ) -> CertVersion:
    leaf = make_leaf(ca, names, ())
    return storage.store("clinic", leaf.key_pem, leaf.cert_pem + ca.cert_pem, {"key": "ec-p256"})


def der(version: CertVersion) -> bytes:
    from cryptography import x509

    return x509.load_pem_x509_certificate(version.read("cert.pem")).public_bytes(Encoding.DER)


def served(web: Web, name: str) -> bytes | None:
    return fetch_leaf(("127.0.0.1", web.https), name).der


def serves(web: Web, version: CertVersion, names: tuple[str, ...] = NAMES,
           settle: float = 2.0) -> bool:
    """Every name serves `version` — allowing `settle` seconds for the server's old workers
    (which may still take a connection right after a reload) to leave."""
    deadline = time.monotonic() + settle
    while True:
        if all(served(web, name) == der(version) for name in names):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


@pytest.fixture
def storage(tmp_path: Path) -> FileStorage:
    return FileStorage(str(tmp_path / "state"), str(tmp_path / "live"))


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


def test_site_mode_install_renew_and_rollbacks(web: Web, storage: FileStorage, sink: MemorySink,
                                               tmp_path: Path) -> None:
    ca = make_ca()
    events = Events([sink])
    site = web.site(hsts=600)
    generated = web.conf_dir / "mamoru-clinic.conf"

    # First install: file written, live/ flipped, tested, reloaded, proven for every name.
    first = new_version(storage, ca)
    result = install(site, first, storage, events)
    assert result.installed and result.verified
    assert [k for k in sink.kinds() if k != "warning"] == [
        "installed", "config-test", "reloaded", "verified"]
    assert serves(web, first)
    assert generated.read_text().startswith("# mamoru-generated for site clinic")
    assert stat.S_IMODE(generated.stat().st_mode) == 0o644
    assert "stapling" not in generated.read_text().lower()
    key = Path(storage.live_path("clinic")) / "privkey.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert set(result.timings) >= {"deploy", "config_test", "reload", "verify"}

    # A renewal swaps the certificate.
    second = new_version(storage, ca)
    assert install(site, second, storage, events).verified
    assert serves(web, second)
    good_file = generated.read_bytes()

    # A failing reload command: rollback restores live/ and the file, and reloads again.
    third = new_version(storage, ca)
    marker = tmp_path / "reloads"
    failing = (sys.executable, "-c",
               f"open({str(marker)!r}, 'a').write('x'); import sys; "
               "sys.stderr.write('reload: permission denied\\n'); sys.exit(3)")
    with pytest.raises(ReloadFailed) as failed:
        install(replace(site, server=replace(site.server, reload=failing)), third, storage,
                events)
    assert "reload: permission denied" in str(failed.value)
    assert "exited with status 3" in str(failed.value)
    live = storage.live("clinic")
    assert live is not None and live.number == second.number
    assert generated.read_bytes() == good_file
    assert marker.read_text() == "xx"  # the reload, then the reload after the rollback
    assert sink.of_kind("rollback")[-1].get("restored") == second.meta["serial"]
    assert serves(web, second)

    # A broken file of the user's: the config test fails, nothing is reloaded.
    web.server.write_conf("broken", "server { this is not valid }\n" if web.kind == "nginx"
                          else "<VirtualHost *:1>\n    NoSuchDirective on\n</VirtualHost>\n")
    before = web.reload_marker()
    fourth = new_version(storage, ca)
    with pytest.raises(ConfigTestFailed) as rejected:
        install(site, fourth, storage, events)
    message = str(rejected.value)
    assert "broken even without mamoru's change" in message
    assert ("broken.conf" in message) if web.kind == "nginx" else ("NoSuchDirective" in message)
    assert web.reload_marker() == before  # never reloaded
    live = storage.live("clinic")
    assert live is not None and live.number == second.number
    assert generated.read_bytes() == good_file
    assert serves(web, second)
    assert sink.kinds()[-1] == "rollback"


def test_first_install_rollback_removes_what_it_wrote(web: Web, storage: FileStorage) -> None:
    site = web.site(reload=(sys.executable, "-c", "import sys; sys.exit(1)"))
    with pytest.raises(ReloadFailed):
        install(site, new_version(storage, make_ca()), storage, Events())
    assert not os.path.lexists(storage.live_path("clinic"))
    assert list(web.conf_dir.glob("mamoru-*")) == []


def test_generated_config_rejected_by_the_server_names_it(web: Web, storage: FileStorage
                                                          ) -> None:
    """A config the server accepts alone but not with mamoru's file: mamoru says it was its
    own file that was rejected, and removes it again."""
    names = NAMES
    if web.kind == "nginx":
        # A small server-name hash and a long name: nginx cannot build its hash.
        web.server.write_conf("000-hash", "server_names_hash_bucket_size 32;\n")
        names = ("clinic.example",
                 "appointments-and-medical-records-of-the-family-clinic-downtown.example")
        site = replace(web.site(), domains=names)
    else:
        site = web.site(hsts=60)
        # Without mod_headers, mamoru's HSTS line is an unknown directive.
        conf = Path(web.server.conf_path)
        conf.write_text(conf.read_text().replace("LoadModule headers_module", "#LoadModule "
                                                 "headers_module"))
    with pytest.raises(ConfigTestFailed) as rejected:
        install(site, new_version(storage, make_ca(), names), storage, Events())
    assert "rejected the config mamoru generated" in str(rejected.value)
    if web.kind == "nginx":
        assert "server_names_hash_bucket_size" in str(rejected.value)
    else:
        assert "a2enmod headers" in (rejected.value.hint or "")
    assert list(web.conf_dir.glob("mamoru-*")) == []


def test_damaged_version_is_refused_before_anything_changes(web: Web, storage: FileStorage
                                                            ) -> None:
    ca = make_ca()
    version = new_version(storage, ca)
    other = make_leaf(ca, NAMES, ())
    Path(version.file("privkey.pem")).write_bytes(other.key_pem)
    with pytest.raises(InstallRefused, match="does not belong to the certificate"):
        install(web.site(), version, storage, Events())
    assert storage.live("clinic") is None
    assert list(web.conf_dir.glob("mamoru-*")) == []


def test_never_overwrites_a_file_it_did_not_write(web: Web, storage: FileStorage) -> None:
    theirs = web.conf_dir / "mamoru-clinic.conf"
    theirs.write_text("# my own file\n")
    version = new_version(storage, make_ca())
    with pytest.raises(InstallRefused, match="was not written by mamoru"):
        install(web.site(), version, storage, Events())
    assert theirs.read_text() == "# my own file\n"
    assert storage.live("clinic") is None


def test_another_block_for_the_names_is_reported(web: Web, storage: FileStorage, sink: MemorySink,
                                                 tmp_path: Path) -> None:
    # The user already has a server block with a certificate for these names, loaded first.
    ca = make_ca()
    old = make_leaf(ca, NAMES, ())
    old.write(tmp_path / "old.pem", tmp_path / "old.key")
    web.server.write_conf("000-clinic", web.user_vhost(
        NAMES, cert=(str(tmp_path / "old.pem"), str(tmp_path / "old.key"))))
    web.server.reload()
    version = new_version(storage, ca)
    with pytest.raises(VerifyFailed) as failed:
        install(web.site(verify_timeout=1.0), version, storage, Events([sink]))
    error = failed.value
    assert error.names == list(NAMES)
    assert "serve a certificate mamoru did not install" in str(error)
    assert "Another" in str(error) and "answers for these names" in str(error)
    assert storage.live("clinic") is None  # first install rolled back
    assert sink.kinds()[-2:] == ["verify-failed", "rollback"]
    assert served(web, NAMES[0]) == old.cert.public_bytes(Encoding.DER)


def test_include_mode_missing_include_then_added(web: Web, storage: FileStorage,
                                                 tmp_path: Path) -> None:
    include_dir = tmp_path / "mamoru-includes"
    include_dir.mkdir()
    ca = make_ca()
    first = make_leaf(ca, NAMES, ())
    first.write(tmp_path / "first.pem", tmp_path / "first.key")
    user_conf = web.server.write_conf("clinic", web.user_vhost(
        NAMES, cert=(str(tmp_path / "first.pem"), str(tmp_path / "first.key"))))
    web.server.reload()
    site = web.site(mode="include", conf_dir=str(include_dir), verify_timeout=1.0)

    before = web.reload_marker()
    with pytest.raises(VerifyFailed) as failed:
        install(site, new_version(storage, ca), storage, Events())
    web.wait_reloaded(before, 2)  # the reload and the one after the rollback
    message = str(failed.value)
    tls_inc = include_dir / "mamoru-clinic-tls.inc"
    assert f"does not include {tls_inc}" in message
    assert (f"include {tls_inc};" if web.kind == "nginx" else f"Include {tls_inc}") in message
    assert failed.value.names == list(NAMES)
    assert not tls_inc.exists()  # rolled back

    # The user adds the line mamoru printed; the next provision is proven served.
    user_conf.write_text(web.user_vhost(NAMES, include=str(tls_inc)))
    version = new_version(storage, ca)
    assert install(site, version, storage, Events()).verified
    assert serves(web, version)
    assert tls_inc.read_text().startswith("# mamoru-generated")


def test_rollback_never_leaves_a_config_the_server_refuses(web: Web, storage: FileStorage,
                                                           tmp_path: Path) -> None:
    """Include mode, first install, the user already added the include line, but another
    block answers for the names: verification fails. Removing mamoru's files would leave a
    config that includes a missing file (the server would not start again after a reboot),
    so mamoru keeps the new files and says so."""
    include_dir = tmp_path / "mamoru-includes"
    include_dir.mkdir()
    tls_inc = include_dir / "mamoru-clinic-tls.inc"
    ca = make_ca()
    old = make_leaf(ca, NAMES, ())
    old.write(tmp_path / "old.pem", tmp_path / "old.key")
    web.server.write_conf("000-clinic", web.user_vhost(
        NAMES, cert=(str(tmp_path / "old.pem"), str(tmp_path / "old.key"))))
    web.server.reload()
    # The block with the include comes second and listens on the same address: it loses.
    web.server.write_conf("zz-clinic", web.user_vhost(NAMES, include=str(tls_inc)).replace(
        f"Listen 127.0.0.1:{web.https}\n", ""))
    site = web.site(mode="include", conf_dir=str(include_dir), redirect=False,
                    verify_timeout=1.0)
    before = web.reload_marker()
    with pytest.raises(VerifyFailed) as failed:
        install(site, new_version(storage, ca), storage, Events())
    web.wait_reloaded(before, 2)
    assert "mamoru kept its new files" in str(failed.value)
    assert tls_inc.exists() and storage.live("clinic") is not None
    assert web.server.config_test().returncode == 0  # the server would start again


def test_two_sites_share_a_port(web: Web, storage: FileStorage) -> None:
    """Two mamoru sites on one HTTPS port: nginx shares the listen, Apache gets one Listen
    (the Define guard), and each name gets its own site's certificate by SNI."""
    ca = make_ca()
    clinic = web.site()
    lab = replace(clinic, name="lab", domains=("lab.example",))
    clinic_version = new_version(storage, ca)
    lab_leaf = make_leaf(ca, ("lab.example",), ())
    lab_version = storage.store("lab", lab_leaf.key_pem, lab_leaf.cert_pem + ca.cert_pem, {})
    assert install(clinic, clinic_version, storage, Events()).verified
    assert install(lab, lab_version, storage, Events()).verified
    assert serves(web, lab_version, ("lab.example",))
    assert serves(web, clinic_version)


def test_apache_listen_lines(apache_factory: Callable[..., Apache], storage: FileStorage,
                             tmp_path: Path) -> None:
    """mamoru writes a Listen only where nobody listens, and refuses an address Apache could
    not bind beside the user's own Listen (its config test would not notice)."""
    https, http = free_port(), free_port()
    apache = apache_factory(extra_main=f"Listen {http}\n")  # every address, like ports.conf
    apache.start(wait_ports=[http])
    site = Site("clinic", NAMES, challenge=Challenge(webroot=str(tmp_path)), server=Server(
        type="apache", conf_dir=str(apache.conf_dir), listen_https=f"127.0.0.1:{https}",
        listen_http=str(http), root=str(apache.docroot), test=tuple(apache.test_argv),
        reload=tuple(apache.reload_argv)))
    version = new_version(storage, make_ca())
    assert install(site, version, storage, Events()).verified
    text = (apache.conf_dir / "mamoru-clinic.conf").read_text()
    assert f"Listen 127.0.0.1:{https} https" in text
    assert f"Listen {http}" not in text  # the user's Listen covers it

    clash = replace(site, server=replace(site.server, listen_http=f"127.0.0.1:{http}",
                                         listen_https=str(https)))
    apache.write_conf("ports2", f"Listen 127.0.0.1:{https}\n")
    with pytest.raises(InstallRefused, match=f"Apache already listens on 127.0.0.1:{https}"):
        install(clash, new_version(storage, make_ca()), storage, Events())
    assert (apache.conf_dir / "mamoru-clinic.conf").read_text() == text


@pytest.mark.parametrize("kind", ["nginx", "apache"])
def test_generated_files_pass_the_config_test_in_every_mode(
        kind: str, nginx_factory: Callable[..., Nginx], apache_factory: Callable[..., Apache],
        tmp_path: Path) -> None:
    """site and include mode, redirect on and off, hsts on and off: `nginx -t` /
    `apache2 -t` accept every combination (with the include files really included)."""
    ca = make_ca()
    storage = FileStorage(str(tmp_path / "state"), str(tmp_path / "live"))
    storage.activate(new_version(storage, ca))
    server: Nginx | Apache = nginx_factory() if kind == "nginx" else apache_factory()
    include_dir = tmp_path / "inc"
    include_dir.mkdir()
    port = free_port()
    for mode in ("site", "include"):
        for redirect in (True, False):
            for hsts in (0, 3600):
                for leftover in list(server.conf_dir.iterdir()) + list(include_dir.iterdir()):
                    leftover.unlink()
                site = Site("clinic", NAMES, challenge=Challenge(webroot=str(tmp_path)),
                            server=Server(type=kind, mode=mode, conf_dir=str(
                                server.conf_dir if mode == "site" else include_dir),
                                listen_https=f"127.0.0.1:{port}", listen_http=str(port + 1),
                                root=str(tmp_path), redirect=redirect, hsts=hsts,
                                test=tuple(server.test_argv), reload=("true",)))
                installer = installer_for(site)
                installer.deploy(site, storage.live_path(site.name))
                if mode == "include":
                    tls = include_dir / "mamoru-clinic-tls.inc"
                    redirect_inc = include_dir / "mamoru-clinic-redirect.inc"
                    if kind == "nginx":
                        text = (f"server {{ listen 127.0.0.1:{port} ssl; server_name "
                                f"clinic.example; include {tls}; }}\n")
                        if redirect:
                            text += (f"server {{ listen 127.0.0.1:{port + 1}; server_name "
                                     f"clinic.example; include {redirect_inc}; }}\n")
                    else:
                        text = (f"Listen 127.0.0.1:{port}\n<VirtualHost 127.0.0.1:{port}>\n"
                                f"ServerName clinic.example\nInclude {tls}\n</VirtualHost>\n")
                        if redirect:
                            text += (f"Listen 127.0.0.1:{port + 1}\n<VirtualHost 127.0.0.1:"
                                     f"{port + 1}>\nServerName clinic.example\n"
                                     f"Include {redirect_inc}\n</VirtualHost>\n")
                    server.write_conf("user", text)
                result = subprocess.run(server.test_argv, capture_output=True, text=True,
                                        timeout=30)
                assert result.returncode == 0, (mode, redirect, hsts, result.stderr)
                assert "stapling" not in result.stderr
