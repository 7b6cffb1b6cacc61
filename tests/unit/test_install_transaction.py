"""The install transaction's bookkeeping, with real commands (small Python programs standing in
for `nginx -t` and the reload) and a real in-process TLS server for verification: the order of
steps, what each failure puts back, that a rejected config is never reloaded, timeouts, and the
default commands per server type."""

from __future__ import annotations

import datetime as dt
import grp
import os
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mamoru.config.model import Server, Site
from mamoru.errors import Cancelled, ConfigTestFailed, ReloadFailed, VerifyFailed
from mamoru.install.files import InstallRefused, write_owned
from mamoru.install.transaction import install, installer_for, served_matches
from mamoru.install.verify import leaf_der, verify_address, wait_until_served
from mamoru.observe.events import Events, MemorySink
from mamoru.storage import CertVersion, FileStorage

NAMES = ("clinic.example", "www.clinic.example")


def make_pair(names: tuple[str, ...] = NAMES) -> tuple[bytes, bytes]:
    """(key PEM, self-signed certificate PEM) for `names`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


class TlsServer:
    """A TLS server on 127.0.0.1 that completes handshakes with one certificate (swappable)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = ("127.0.0.1", self.listener.getsockname()[1])
        self.context: ssl.SSLContext | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def serve(self, version: CertVersion) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(version.file("fullchain.pem"), version.file("privkey.pem"))
        self.context = context

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                if self.context is None:
                    continue
                try:
                    with self.context.wrap_socket(connection, server_side=True):
                        pass
                except (OSError, ssl.SSLError):
                    pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    server = TlsServer(tmp_path)
    yield server
    server.close()


@pytest.fixture
def storage(tmp_path: Path) -> FileStorage:
    return FileStorage(str(tmp_path / "state"), str(tmp_path / "live"))


def store(storage: FileStorage) -> CertVersion:
    key, cert = make_pair()
    return storage.store("clinic", key, cert, {})


def program(code: str) -> tuple[str, ...]:
    """An argv running `code` in Python: a stand-in for a server's command."""
    return (sys.executable, "-c", code)


def counting(counter: Path, exit_code: int = 0, message: str = "") -> tuple[str, ...]:
    """A command that appends one line to `counter` each run, says `message`, exits."""
    return program(f"import sys; open({str(counter)!r}, 'a').write('run\\n'); "
                   f"sys.stderr.write({message!r}); sys.exit({exit_code})")


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def command_site(tmp_path: Path, **server: object) -> Site:
    settings = Server(type="command", test=counting(tmp_path / "tests"),
                      reload=counting(tmp_path / "reloads"), command_timeout=10,
                      verify_timeout=1)
    return Site("clinic", NAMES, server=replace(settings, **server))


def test_success_flips_live_tests_and_reloads_in_order(tmp_path: Path, storage: FileStorage
                                                       ) -> None:
    sink = MemorySink()
    first = store(storage)
    result = install(command_site(tmp_path), first, storage, Events([sink]))
    assert result.installed and not result.verified  # type command without verify: unproven
    assert sink.kinds() == ["installed", "config-test", "reloaded"]
    assert runs(tmp_path / "tests") == 1 and runs(tmp_path / "reloads") == 1
    live = storage.live("clinic")
    assert live is not None and live.number == first.number
    assert sink.of_kind("installed")[0].get("serial") == first.meta["serial"]


def test_config_test_failure_is_never_reloaded(tmp_path: Path, storage: FileStorage) -> None:
    first = store(storage)
    site = command_site(tmp_path)
    install(site, first, storage, Events())
    failing = counting(tmp_path / "tests", 1, "nginx: [emerg] unknown directive \"x\" in "
                       "/etc/nginx/conf.d/user.conf:3\n")
    sink = MemorySink()
    with pytest.raises(ConfigTestFailed) as failed:
        install(replace(site, server=replace(site.server, test=failing)), store(storage),
                storage, Events([sink]))
    assert runs(tmp_path / "reloads") == 1  # only the first install's
    assert 'unknown directive "x" in /etc/nginx/conf.d/user.conf:3' in str(failed.value)
    assert "broken even without mamoru's change" in str(failed.value)
    assert failed.value.retryable is False
    live = storage.live("clinic")
    assert live is not None and live.number == first.number
    assert sink.kinds() == ["installed", "rollback"]
    assert sink.of_kind("rollback")[0].get("reloaded") is False


def test_config_rejected_only_with_the_new_version_blames_mamoru(tmp_path: Path,
                                                                 storage: FileStorage) -> None:
    first = store(storage)
    second = store(storage)
    link = storage.live_path("clinic")
    # Fails while live/clinic points at the second version, passes once it is put back.
    picky = program(f"import os, sys; bad = os.readlink({link!r}).endswith('0002'); "
                    "sys.stderr.write('cannot load certificate\\n' if bad else ''); "
                    "sys.exit(1 if bad else 0)")
    site = command_site(tmp_path, test=picky)
    install(site, first, storage, Events())
    with pytest.raises(ConfigTestFailed, match="rejected the config mamoru generated"):
        install(site, second, storage, Events())
    assert os.readlink(link).endswith("0001")


def test_reload_failure_rolls_back_and_reloads_again(tmp_path: Path, storage: FileStorage
                                                     ) -> None:
    first = store(storage)
    site = command_site(tmp_path)
    install(site, first, storage, Events())
    failing = counting(tmp_path / "bad-reloads", 4, "reload: unit not found\n")
    with pytest.raises(ReloadFailed) as failed:
        install(replace(site, server=replace(site.server, reload=failing)), store(storage),
                storage, Events())
    message = str(failed.value)
    assert "exited with status 4" in message and "reload: unit not found" in message
    assert "reloading again after the rollback failed too" in message
    assert runs(tmp_path / "bad-reloads") == 2
    live = storage.live("clinic")
    assert live is not None and live.number == first.number


def test_first_install_rollback_removes_the_live_link(tmp_path: Path, storage: FileStorage
                                                      ) -> None:
    site = command_site(tmp_path, reload=program("import sys; sys.exit(1)"))
    with pytest.raises(ReloadFailed):
        install(site, store(storage), storage, Events())
    assert not os.path.lexists(storage.live_path("clinic"))


def test_a_hanging_reload_times_out(tmp_path: Path, storage: FileStorage) -> None:
    site = command_site(tmp_path, command_timeout=1,
                        reload=program("import time; time.sleep(30)"))
    with pytest.raises(ReloadFailed, match="did not finish within 1 s"):
        install(site, store(storage), storage, Events())


def test_a_missing_program_is_named(tmp_path: Path, storage: FileStorage) -> None:
    site = command_site(tmp_path, reload=("/nonexistent/reload-my-server",))
    with pytest.raises(ReloadFailed, match="/nonexistent/reload-my-server"):
        install(site, store(storage), storage, Events())


def test_verify_proves_the_served_certificate(tmp_path: Path, storage: FileStorage,
                                              tls_server: TlsServer) -> None:
    first = store(storage)
    tls_server.serve(first)
    sink = MemorySink()
    site = command_site(tmp_path, verify=tls_server.address)
    result = install(site, first, storage, Events([sink]))
    assert result.verified
    assert sink.kinds()[-1] == "verified"
    assert result.timings["verify"] >= 0.2  # it held for the settle time
    assert served_matches(site, first) is True

    # The server keeps serving the first certificate: verification fails, names named.
    second = store(storage)
    with pytest.raises(VerifyFailed) as failed:
        install(site, second, storage, Events([sink]))
    error = failed.value
    assert error.names == list(NAMES)
    assert "still serve the previous certificate" in str(error)
    assert sink.kinds()[-2:] == ["verify-failed", "rollback"]
    assert runs(tmp_path / "reloads") == 3  # first install, second, and after the rollback
    live = storage.live("clinic")
    assert live is not None and live.number == first.number
    assert served_matches(site, second) is False


def test_verify_waits_for_an_asynchronous_reload(tmp_path: Path, storage: FileStorage,
                                                 tls_server: TlsServer) -> None:
    first, second = store(storage), store(storage)
    tls_server.serve(first)
    threading.Timer(0.3, tls_server.serve, [second]).start()  # the "reload" lands later
    report = wait_until_served(tls_server.address, NAMES, leaf_der(second.read("cert.pem")),
                               timeout=5)
    assert report.stable and report.rounds > 2
    assert 0.5 <= report.duration < 2


def test_stop_during_verification_cancels_and_rolls_back(tmp_path: Path, storage: FileStorage,
                                                         tls_server: TlsServer) -> None:
    first = store(storage)
    tls_server.serve(first)
    site = command_site(tmp_path, verify=tls_server.address, verify_timeout=30)
    install(site, first, storage, Events())
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(Cancelled):
        install(site, store(storage), storage, Events(), stop=stop)
    live = storage.live("clinic")
    assert live is not None and live.number == first.number


def test_unreachable_server_is_reported(tmp_path: Path, storage: FileStorage) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    address = ("127.0.0.1", closed.getsockname()[1])
    closed.close()
    site = command_site(tmp_path, verify=address, verify_timeout=0.5)
    with pytest.raises(VerifyFailed, match="connection refused"):
        install(site, store(storage), storage, Events())


def test_site_without_server_only_flips(tmp_path: Path, storage: FileStorage) -> None:
    site = Site("clinic", NAMES)
    version = store(storage)
    result = install(site, version, storage, Events())
    assert result.installed and not result.verified
    assert served_matches(site, version) is None
    assert verify_address(site) is None


def test_verify_address_defaults() -> None:
    def with_server(**kw: object) -> Site:
        return Site("s", NAMES, server=replace(Server(type="nginx", conf_dir="/x"), **kw))

    assert verify_address(with_server()) == ("127.0.0.1", 443)
    assert verify_address(with_server(listen_https="8443")) == ("127.0.0.1", 8443)
    assert verify_address(with_server(listen_https="0.0.0.0:8443")) == ("127.0.0.1", 8443)
    assert verify_address(with_server(listen_https="[::]:443")) == ("::1", 443)
    assert verify_address(with_server(listen_https="192.0.2.7:443")) == ("192.0.2.7", 443)
    assert verify_address(with_server(verify=("10.0.0.1", 4443))) == ("10.0.0.1", 4443)
    command = Site("s", NAMES, server=Server(type="command", reload=("true",)))
    assert verify_address(command) is None  # a non-web server: only with verify set


def test_foreign_file_and_missing_directory_are_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "mamoru-clinic.conf"
    theirs.write_text("server { }\n")
    with pytest.raises(InstallRefused, match="was not written by mamoru"):
        write_owned({str(theirs): "# mamoru-generated\n"}, "clinic")
    assert theirs.read_text() == "server { }\n"
    with pytest.raises(InstallRefused, match="does not exist"):
        write_owned({str(tmp_path / "nope" / "x.conf"): "# mamoru-generated\n"}, "clinic")
    ours = tmp_path / "mamoru-lab.conf"
    deployment = write_owned({str(ours): "# mamoru-generated for site lab\n"}, "lab")
    assert deployment.snapshots[0].previous is None
    write_owned({str(ours): "# mamoru-generated for site lab: v2\n"}, "lab")  # ours: replaced
    assert ours.read_text().endswith("v2\n")


@pytest.mark.parametrize(("kind", "systemd", "active", "argv"), [
    ("nginx", False, set(), ("nginx", "-s", "reload")),
    ("nginx", True, {"nginx"}, ("systemctl", "reload", "nginx")),
    ("nginx", True, set(), ("nginx", "-s", "reload")),  # systemd, but nginx started by hand
    ("apache", True, {"httpd"}, ("systemctl", "reload", "httpd")),
    ("apache", True, {"apache2"}, ("systemctl", "reload", "apache2")),
    ("apache", False, {"apache2"}, ("apachectl", "-k", "graceful")),
])
def test_default_reload(kind: str, systemd: bool, active: set[str], argv: tuple[str, ...]
                        ) -> None:
    """The reload a site gets without server.reload: through systemd when systemd runs the
    server, else the server's own command (asked the way production asks, installer_for)."""
    site = Site("s", NAMES, server=Server(type=kind, conf_dir="/etc/x"))
    installer = installer_for(site, systemd=lambda: systemd, active=active.__contains__)
    assert getattr(installer, "reload_argv") == argv  # noqa: B009


def test_installer_defaults_and_explicit_commands() -> None:
    site = Site("s", NAMES, server=Server(type="apache", conf_dir="/etc/apache2/sites-enabled"))
    installer = installer_for(site, systemd=lambda: False)
    assert installer.kind == "apache"
    assert getattr(installer, "test_argv") == ("apachectl", "-t")  # noqa: B009
    explicit = replace(site, server=replace(site.server, reload=("my-reload",)))
    assert getattr(installer_for(explicit), "reload_argv") == ("my-reload",)  # noqa: B009


def test_nginx_under_systemd_is_tested_through_pid1() -> None:
    """Inside mamoru.service's sandbox a direct `nginx -t` cannot run (systemd/mamoru.service),
    so when systemd runs nginx the default test goes through systemd-run."""
    site = Site("s", NAMES, server=Server(type="nginx", conf_dir="/etc/nginx/conf.d"))
    under_systemd = installer_for(site, systemd=lambda: True, active={"nginx"}.__contains__)
    test_argv = getattr(under_systemd, "test_argv")  # noqa: B009
    assert test_argv[:2] == ("systemd-run", "--quiet") and test_argv[-1] == "-t"
    assert getattr(under_systemd, "reload_argv") == ("systemctl", "reload", "nginx")  # noqa: B009
    by_hand = installer_for(site, systemd=lambda: False)
    assert getattr(by_hand, "test_argv") == ("nginx", "-t")  # noqa: B009
    assert getattr(by_hand, "reload_argv") == ("nginx", "-s", "reload")  # noqa: B009


def test_a_live_key_readable_beyond_its_group_is_warned_about(tmp_path: Path) -> None:
    """The mode the storage gives keys (0600, 0640 with paths.key_group) is what install
    accepts; anything wider is a warning that names the key."""
    group = grp.getgrgid(os.getgid()).gr_name
    for key_group, mode, warned in ((None, 0o600, False), (None, 0o640, True),
                                    (group, 0o640, False), (group, 0o644, True)):
        storage = FileStorage(str(tmp_path / f"state-{mode:o}-{key_group}"),
                              str(tmp_path / f"live-{mode:o}-{key_group}"), key_group)
        version = store(storage)
        os.chmod(version.file("privkey.pem"), mode)
        sink = MemorySink()
        install(command_site(tmp_path), version, storage, Events([sink]))
        warnings = [event.message for event in sink.of_kind("warning")]
        assert bool(warnings) is warned, (key_group, oct(mode), warnings)
        if warned:
            assert f"has mode {mode:o}: others may read the private key" in warnings[0]
