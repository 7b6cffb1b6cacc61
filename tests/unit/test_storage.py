"""Lineage storage: whole versions, atomic live flips, 0600 keys from creation, locks."""

from __future__ import annotations

import datetime as dt
import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mamoru.errors import LockBusy, StorageError
from mamoru.storage import FileStorage
from mamoru.storage.atomic import write_file
from mamoru.storage.sitestate import SiteState


def make_chain(names: list[str], days: int = 90) -> tuple[bytes, bytes]:
    """(key PEM, leaf+issuer PEM chain) signed by a throwaway CA."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test root")])
    now = dt.datetime.now(dt.UTC)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=999))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, leaf.public_bytes(pem) + ca.public_bytes(pem)


@pytest.fixture
def storage(tmp_path: Path) -> FileStorage:
    return FileStorage(str(tmp_path / "state"), str(tmp_path / "live"))


def test_store_writes_a_complete_version_with_private_modes(storage: FileStorage) -> None:
    key, chain = make_chain(["clinic.example", "www.clinic.example"])
    version = storage.store("clinic", key, chain, {"key": "ec-p256"})
    assert version.number == 1
    assert sorted(os.listdir(version.path)) == ["cert.pem", "chain.pem", "fullchain.pem",
                                                "meta.json", "privkey.pem"]
    assert stat.S_IMODE(os.stat(version.file("privkey.pem")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(storage.site_dir("clinic")).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(storage.state_dir).st_mode) == 0o700
    assert version.read("fullchain.pem") == version.read("cert.pem") + version.read("chain.pem")
    assert version.names == ["clinic.example", "www.clinic.example"]
    assert version.meta["key"] == "ec-p256"
    assert storage.live("clinic") is None  # stored, not yet live


def test_activate_flips_one_symlink_and_returns_the_previous(storage: FileStorage) -> None:
    first = storage.store("clinic", *make_chain(["clinic.example"]), {})
    assert storage.activate(first) is None
    second = storage.store("clinic", *make_chain(["clinic.example"]), {})
    previous = storage.activate(second)
    assert previous is not None and previous.number == 1
    link = storage.live_path("clinic")
    assert os.path.islink(link)
    assert not os.path.isabs(os.readlink(link))  # relative: survives a moved prefix
    live = storage.live("clinic")
    assert live is not None and live.number == 2
    with open(os.path.join(link, "cert.pem"), "rb") as handle:
        assert handle.read() == second.read("cert.pem")


def test_live_path_that_is_not_ours_is_never_replaced(storage: FileStorage) -> None:
    os.makedirs(storage.live_path("clinic"))
    version = storage.store("clinic", *make_chain(["clinic.example"]), {})
    with pytest.raises(StorageError, match="not a symlink mamoru made"):
        storage.activate(version)


def test_prune_keeps_recent_and_live(storage: FileStorage) -> None:
    versions = [storage.store("clinic", *make_chain(["clinic.example"]), {}) for _ in range(8)]
    storage.activate(versions[0])
    storage.prune("clinic", keep=3)
    left = sorted(os.listdir(storage.versions_dir("clinic")))
    assert left == ["0001", "0006", "0007", "0008"]


def test_prune_removes_a_killed_store_s_temp_directory_below_keep(storage: FileStorage) -> None:
    """A store killed halfway leaves `.NNNN.<tag>.tmp`: the next prune removes it even when
    there are fewer versions than `keep` (nothing else to prune)."""
    version = storage.store("clinic", *make_chain(["clinic.example"]), {})
    storage.activate(version)
    stale = os.path.join(storage.versions_dir("clinic"), ".0002.0badc0de.tmp")
    os.mkdir(stale)
    Path(stale, "privkey.pem").write_text("half")
    storage.prune("clinic", keep=5)
    assert sorted(os.listdir(storage.versions_dir("clinic"))) == ["0001"]
    storage.prune("clinic", keep=5)  # nothing to do: still the live version
    assert storage.live("clinic") == version


def test_corrupt_meta_is_rebuilt_from_the_certificate(storage: FileStorage) -> None:
    version = storage.store("clinic", *make_chain(["clinic.example"]), {})
    storage.activate(version)
    Path(version.file("meta.json")).write_text("{not json")
    live = storage.live("clinic")
    assert live is not None
    assert live.meta["rebuilt"] is True
    assert live.names == ["clinic.example"]


def test_lock_excludes_a_second_holder(storage: FileStorage) -> None:
    with storage.lock("clinic"), pytest.raises(LockBusy):
        storage.lock("clinic", timeout=0.1)
    # Released. The waiter that gave up may still take and drop the lock for a moment once
    # its blocking flock(2) returns, so the next holder waits a little rather than not at all.
    storage.lock("clinic", timeout=5).close()


def test_lock_waits_for_the_holder(storage: FileStorage) -> None:
    held = storage.lock("clinic")
    threading.Timer(0.2, held.close).start()
    storage.lock("clinic", timeout=5).close()


def test_write_file_creates_with_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "secret.pem"
    old_umask = os.umask(0)
    try:
        write_file(str(path), b"data", mode=0o600)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["secret.pem"]


def test_write_failure_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old")
    os.chmod(tmp_path, 0o500)
    try:
        if os.geteuid() == 0:
            # root ignores directory modes; use an impossible target instead
            with pytest.raises(StorageError):
                write_file(str(tmp_path / "missing-dir" / "file"), b"new")
        else:
            with pytest.raises(StorageError, match="permission denied"):
                write_file(str(path), b"new")
    finally:
        os.chmod(tmp_path, 0o700)
    assert path.read_bytes() == b"old"


def test_state_roundtrip_and_unreadable_state(storage: FileStorage) -> None:
    assert storage.load_state("clinic") == SiteState()
    storage.save_state("clinic", SiteState(attempts=2))
    assert storage.load_state("clinic") == SiteState(attempts=2)
    Path(storage.site_dir("clinic"), "state.json").write_text("[broken")
    assert storage.load_state("clinic") == SiteState()


def _fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What os.fsync is called on from now (a path for each descriptor, '?' if unknown)."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        try:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            synced.append("?")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_a_version_is_durable_before_it_is_published(storage: FileStorage,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The five files and their still-private directory are made durable with one syncfs of
    their filesystem, then (after the rename) the versions directory is fsynced: nothing the
    rename publishes can come back empty after a power cut."""
    from mamoru.storage import atomic

    steps: list[str] = []
    real_syncfs, real_rename = atomic.sync_filesystem, os.rename

    def syncfs(path: str) -> bool:
        assert sorted(os.listdir(path)) == ["cert.pem", "chain.pem", "fullchain.pem",
                                            "meta.json", "privkey.pem"]  # all written first
        steps.append(f"syncfs {os.path.basename(path)}")
        return real_syncfs(path)

    def rename(source: str, target: str) -> None:
        steps.append(f"rename {os.path.basename(target)}")
        real_rename(source, target)

    monkeypatch.setattr("mamoru.storage.filesystem.sync_filesystem", syncfs)
    monkeypatch.setattr(os, "rename", rename)
    synced = _fsynced(monkeypatch)
    version = storage.store("clinic", *make_chain(["clinic.example"]), {})
    assert steps[0].startswith("syncfs .0001.") and steps[1:] == ["rename 0001"]
    assert synced == [os.path.dirname(version.path)]  # the rename into versions/


def test_without_syncfs_each_file_is_fsynced(storage: FileStorage,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Where syncfs is missing or refused (a seccomp filter), each of the five files, then
    their directory, then versions/ after the rename."""
    monkeypatch.setattr("mamoru.storage.filesystem.sync_filesystem", lambda path: False)
    synced = _fsynced(monkeypatch)
    version = storage.store("clinic", *make_chain(["clinic.example"]), {})
    names = [os.path.basename(path) for path in synced]
    assert sorted(names[:5]) == ["cert.pem", "chain.pem", "fullchain.pem", "meta.json",
                                 "privkey.pem"]
    assert synced[5].endswith(".tmp") and "/versions/." in synced[5]  # the new directory
    assert synced[6] == os.path.dirname(version.path)
    assert len(synced) == 7


def test_syncfs_refused_by_a_sandbox_falls_back(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from mamoru.storage import atomic

    def refused(fd: int) -> int:
        import ctypes

        ctypes.set_errno(errno.EPERM)
        return -1

    monkeypatch.setattr(atomic, "_SYNCFS", [refused])
    assert atomic.sync_filesystem(str(tmp_path)) is False
    assert atomic._SYNCFS == [None]  # not asked again
    monkeypatch.setattr(atomic, "_SYNCFS", [])
    assert atomic.sync_filesystem(str(tmp_path)) is True  # this machine has it


def test_the_in_flight_marker_is_saved_without_fsync(storage: FileStorage,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    synced = _fsynced(monkeypatch)
    now = dt.datetime.now(dt.UTC)
    storage.save_state("clinic", SiteState().started(now, 4242), durable=False)
    assert synced == []
    assert storage.load_state("clinic").in_flight is not None  # other processes see it
    storage.save_state("clinic", SiteState(attempts=1))
    assert len(synced) == 2  # a durable save: the new file before its rename, then its directory
    assert "/.state.json." in synced[0] and synced[0].endswith(".tmp")
    assert synced[1] == storage.site_dir("clinic")
    assert storage.load_state("clinic").attempts == 1
