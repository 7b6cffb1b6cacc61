"""The webroot solver: the directories it creates are exactly 0755 and the answer exactly 0644,
whatever the umask; existing directories keep their mode; cleanup removes only its answers."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mamoru.challenges.base import ChallengeTask
from mamoru.challenges.webroot import WebrootSolver, make_directories
from mamoru.errors import ChallengeFailed

TOKEN = "tok_" + "A" * 40
OTHER = "tok_" + "B" * 40


def task(token: str = TOKEN) -> ChallengeTask:
    return ChallengeTask("clinic.example", "http-01", token, f"{token}.thumbprint")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(params=[0o077, 0o022, 0o027, 0o000], ids=lambda m: f"umask-{m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The test process runs under this umask (as mamoru.service runs under UMask=0077)."""
    old = os.umask(request.param)
    try:
        yield int(request.param)
    finally:
        os.umask(old)


def test_created_directories_are_0755_and_the_answer_0644(tmp_path: Path, umask: int) -> None:
    webroot = tmp_path / "srv" / "www"  # the webroot itself is missing too
    solver = WebrootSolver(str(webroot))
    solver.present(task())
    solver.present(task(OTHER))
    challenge = webroot / ".well-known" / "acme-challenge"
    for directory in (tmp_path / "srv", webroot, webroot / ".well-known", challenge):
        assert mode(directory) == 0o755, (directory, oct(mode(directory)), oct(umask))
    for token in (TOKEN, OTHER):
        answer = challenge / token
        assert mode(answer) == 0o644
        assert answer.read_text() == f"{token}.thumbprint"
    assert mode(tmp_path) == 0o700  # the existing parent was left alone


def test_existing_directories_keep_their_mode(tmp_path: Path, umask: int,
                                              caplog: pytest.LogCaptureFixture) -> None:
    webroot = tmp_path / "www"
    well_known = webroot / ".well-known"
    well_known.mkdir(parents=True)
    webroot.chmod(0o750)
    well_known.chmod(0o711)
    solver = WebrootSolver(str(webroot))
    with caplog.at_level(logging.WARNING, logger="mamoru.challenges.webroot"):
        solver.present(task())
    assert mode(webroot) == 0o750 and mode(well_known) == 0o711  # not made worse, not changed
    assert mode(well_known / "acme-challenge") == 0o755  # the one mamoru made
    assert mode(well_known / "acme-challenge" / TOKEN) == 0o644
    # The closed webroot is named, once per solver, as the reason a web server may get 403.
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and f"{webroot} is not searchable by other users" in warnings[0]
    assert str(well_known) not in warnings[0] and "403" in warnings[0]
    solver.present(task(OTHER))
    assert len(caplog.records) == 1


def test_open_existing_directories_are_not_warned_about(
        tmp_path: Path, umask: int, caplog: pytest.LogCaptureFixture) -> None:
    webroot = tmp_path / "www"
    (webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
    for directory in (webroot, webroot / ".well-known", webroot / ".well-known/acme-challenge"):
        directory.chmod(0o775)
    with caplog.at_level(logging.WARNING, logger="mamoru.challenges.webroot"):
        WebrootSolver(str(webroot)).present(task())
    assert caplog.records == []
    assert mode(webroot / ".well-known" / "acme-challenge") == 0o775


def test_cleanup_removes_only_what_present_wrote(tmp_path: Path, umask: int) -> None:
    webroot = tmp_path / "www"
    challenge = webroot / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True)
    (challenge / "keep.txt").write_text("the clinic's own file")
    (challenge / OTHER).write_text("another order's answer")  # not this solver's
    solver = WebrootSolver(str(webroot))
    solver.present(task())
    solver.cleanup(task())
    solver.cleanup(task(OTHER))  # never presented by this solver: left alone
    solver.cleanup(task())  # twice: harmless
    assert sorted(os.listdir(challenge)) == sorted(["keep.txt", OTHER])


def test_cleanup_keeps_the_directories_it_made_for_other_orders(tmp_path: Path,
                                                                umask: int) -> None:
    webroot = tmp_path / "www"
    webroot.mkdir()
    solver = WebrootSolver(str(webroot))
    solver.present(task())
    solver.cleanup(task())
    challenge = webroot / ".well-known" / "acme-challenge"
    assert os.listdir(challenge) == [] and mode(challenge) == 0o755
    # The next order (another site answering from the same webroot) finds them ready.
    WebrootSolver(str(webroot)).present(task(OTHER))
    assert os.listdir(challenge) == [OTHER]


def test_cleanup_after_a_failed_present_is_safe(tmp_path: Path) -> None:
    webroot = tmp_path / "www"
    webroot.write_text("a file where the webroot should be")
    solver = WebrootSolver(str(webroot))
    with pytest.raises(ChallengeFailed, match="cannot write the challenge file"):
        solver.present(task())
    solver.cleanup(task())
    assert webroot.read_text() == "a file where the webroot should be"


def test_make_directories_returns_what_it_created_and_follows_existing_links(
        tmp_path: Path, umask: int) -> None:
    shared = tmp_path / "shared-acme"
    shared.mkdir()
    shared.chmod(0o700)
    webroot = tmp_path / "www"
    webroot.mkdir()
    (webroot / ".well-known").symlink_to(shared)  # an admin's own layout: used, not changed
    created = make_directories(str(webroot / ".well-known" / "acme-challenge"), 0o755)
    assert created == [str(webroot / ".well-known" / "acme-challenge")]
    assert mode(shared / "acme-challenge") == 0o755 and mode(shared) == 0o700
    assert make_directories(str(webroot / ".well-known" / "acme-challenge"), 0o755) == []
