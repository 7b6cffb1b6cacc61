"""mamoru's words in Japanese: the catalog is complete and sound, the language is chosen as
gettext does (LANGUAGE, LC_ALL, LC_MESSAGES, LANG; `--lang`), a missing or broken catalog is
English, and golden outputs of `mamoru check` under LANG=ja_JP.UTF-8 and under a locale this
machine does not have (nor mamoru a catalog for)."""

from __future__ import annotations

import gettext
import os
import re
import ssl
import string
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from tests.unit.check_sites import (
    NOT_FOUND,
    PKI,
    URL,
    AppServer,
    Issued,
    good_https,
    make_pki,
    redirect_http,
)

from mamoru import i18n

ROOT = Path(__file__).resolve().parents[2]
PO = ROOT / "src" / "mamoru" / "locale" / "ja" / "LC_MESSAGES" / "mamoru.po"
MO = PO.with_suffix(".mo")
GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture(scope="module", autouse=True)
def compiled() -> None:
    """The .mo next to the .po, as scripts/setup.sh compiles it for the editable tree."""
    if not MO.exists() or MO.stat().st_mtime < PO.stat().st_mtime:
        with PO.open("rb") as source:
            catalog = read_po(source)
        with MO.open("wb") as out:
            write_mo(out, catalog, use_fuzzy=False)


def catalog() -> list[tuple[str | tuple[str, ...], str | tuple[str, ...], list[str]]]:
    with PO.open("rb") as source:
        cat = read_po(source)
    assert not cat.fuzzy, "the catalog header is marked fuzzy"
    return [(m.id, m.string, sorted(m.flags)) for m in cat if m.id]


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_every_message_is_translated_none_fuzzy_same_placeholders() -> None:
    entries = catalog()
    assert entries
    for msgid, msgstr, flags in entries:
        assert "fuzzy" not in flags, msgid
        ids = msgid if isinstance(msgid, tuple) else (msgid,)
        strs = msgstr if isinstance(msgstr, tuple) else (msgstr,)
        assert all(strs), f"untranslated: {msgid!r}"
        for text in strs:
            assert fields(text) == fields(ids[-1]), (msgid, text)


def test_the_catalog_holds_every_message_of_the_source() -> None:
    """A new `_()` in the code without a Japanese entry fails here (run pybabel update)."""
    found: set[str] = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
            str(ROOT / "src" / "mamoru"), method_map=[("**.py", "python")]):
        found.add(message[0] if isinstance(message, tuple) else message)
    known = {m[0] if isinstance(m, tuple) else m for m, _, _ in catalog()}
    assert found - known == set(), "messages without a translation"
    assert known - found == set(), "stale entries in the catalog"


def test_language_comes_from_the_environment_in_gettext_order(monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    assert i18n.setup() == "ja"
    assert i18n._("all good") == "問題なし"
    monkeypatch.setenv("LC_ALL", "C")
    assert i18n.setup() == "en" and i18n._("all good") == "all good"
    monkeypatch.setenv("LANGUAGE", "ja")
    assert i18n.setup() == "ja"
    assert i18n.setup("en") == "en"
    assert i18n.setup("fr") == "en"  # no catalog: English
    i18n.setup("en")


def test_a_broken_catalog_is_english(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "ja" / "LC_MESSAGES"
    broken.mkdir(parents=True)
    (broken / "mamoru.mo").write_bytes(b"\xde\x12\x04\x95 not a catalog")
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    assert i18n.setup("ja") == "en"
    assert i18n._("all good") == "all good"
    i18n.setup("en")


def test_gettext_finds_the_installed_catalog() -> None:
    assert gettext.find("mamoru", str(i18n.LOCALE_DIR), languages=["ja"]) == str(MO)


# ---- golden outputs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[str]]]:
    """Three sites on 127.0.0.1 (good, wrong name, expired), as `mamoru check` arguments."""
    tmp = tmp_path_factory.mktemp("golden")
    pki: PKI = make_pki(tmp)
    servers: list[AppServer] = []

    def start(app: object, chain: list[Issued] | None = None) -> int:
        context = None
        if chain is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            cert, key = tmp / f"c{len(servers)}.pem", tmp / f"k{len(servers)}.pem"
            cert.write_bytes(b"".join(c.pem for c in chain))
            key.write_bytes(chain[0].key_pem)
            context.load_cert_chain(cert, key)
        server = AppServer(app, context)  # type: ignore[arg-type]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(server)
        return int(server.server_address[1])

    http = start(redirect_http(301, challenge=NOT_FOUND))
    out = {}
    for label, leaf in (("good", pki.good), ("wrongname", pki.other_name),
                        ("expired", pki.expired)):
        https = start(good_https, [leaf, pki.intermediate])
        out[label] = [URL, "--connect", f"127.0.0.1:{https}", "--http-connect",
                      f"127.0.0.1:{http}", "--ca-bundle", pki.bundle, "--timeout", "3"]
    yield out
    for server in servers:
        server.shutdown()
        server.server_close()


def normalized(text: str) -> str:
    text = re.sub(r"\d{4}-\d{2}-\d{2}", "YYYY-MM-DD", text)
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)
    text = re.sub(r"acme-challenge/[\w-]+", "acme-challenge/TOKEN", text)
    text = re.sub(r"(\d+)( days?| 日)", r"N\2", text)
    return re.sub(r"/tmp/\S+\.pem", "ROOT.pem", text)


@pytest.mark.parametrize("lang,golden", [("ja_JP.UTF-8", "check.ja.txt"),
                                         ("xx_YY.UTF-8", "check.en.txt"),
                                         ("fr_FR.UTF-8", "check.en.txt")])
def test_check_golden(sites: dict[str, list[str]], lang: str, golden: str) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES")}
    env["LANG"] = lang
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    shown = []
    for label in ("good", "wrongname", "expired"):
        result = subprocess.run([sys.executable, "-m", "mamoru.cli", "check", *sites[label]],
                                capture_output=True, text=True, env=env, timeout=60)
        assert result.stderr == "", result.stderr
        shown.append(f"$ mamoru check  # {label}, exit {result.returncode}\n"
                     + normalized(result.stdout))
    text = "\n".join(shown)
    path = GOLDEN / golden
    if os.environ.get("MAMORU_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"differs from {path} (MAMORU_UPDATE_GOLDEN=1 rewrites)"


def _run(lang: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES")}
    env["LANG"] = lang
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "mamoru.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


@pytest.mark.parametrize("lang,golden", [("ja_JP.UTF-8", "status.ja.txt"),
                                         ("xx_YY.UTF-8", "status.en.txt")])
def test_status_and_check_config_golden(tmp_path: Path, lang: str, golden: str) -> None:
    good = tmp_path / "config.yaml"
    good.write_text(f"""
acme: {{directory: "https://ca.invalid/dir", contact: admin@clinic.example}}
paths: {{state: {tmp_path}/state, live: {tmp_path}/live, event_log: {tmp_path}/events.jsonl}}
sites:
  clinic: {{domains: [clinic.example, www.clinic.example], challenge: {{webroot: {tmp_path}}}}}
""")
    bad = tmp_path / "bad.yaml"
    bad.write_text("acme: {directory: 42}\nsites: {}\nsurprise: 1\n")
    for path in (good, bad):
        path.chmod(0o600)
    shown = []
    for args in (("status", "-c", str(good)), ("check-config", "-c", str(good)),
                 ("check-config", "-c", str(bad))):
        result = _run(lang, *args)
        shown.append(f"$ mamoru {args[0]}  # exit {result.returncode}\n"
                     + result.stdout + result.stderr)
    text = re.sub(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", "YYYY-MM-DD HH:MM", "\n".join(shown))
    text = text.replace(str(tmp_path), "TMP")
    path = GOLDEN / golden
    if os.environ.get("MAMORU_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"differs from {path} (MAMORU_UPDATE_GOLDEN=1 rewrites)"


def test_alert_summaries_are_in_alerts_language_whatever_the_locale(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """alerts.language picks the words of the summary (email subject, webhook summary); the
    daemon's own locale does not; the alert's kind and details stay English."""
    from mamoru.config.model import AlertSettings
    from mamoru.observe.alerts.rules import judge
    from mamoru.observe.events import Event

    event = Event("failed", "clinic", "validating clinic.example: connection refused",
                  {"error_class": "ChallengeFailed", "attempt": 2})
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    english = judge(event, AlertSettings(), None, lambda: 2).problems["failing"]
    assert english.summary == "clinic: certificate renewal failing (ChallengeFailed, attempt 2)"
    monkeypatch.setenv("LANG", "C")
    japanese = judge(event, AlertSettings(language="ja"), None, lambda: 2).problems["failing"]
    assert japanese.summary == "clinic: 証明書の更新に失敗しています（ChallengeFailed、2 回目）"  # noqa: RUF001
    assert japanese.kind == "failing" and japanese.details["event"] == "failed"


def test_alerts_language_is_checked_by_the_config(tmp_path: Path) -> None:
    from mamoru.config.load import load_config_text
    from mamoru.errors import ConfigError

    base = ("acme: {directory: \"https://ca.invalid/dir\"}\n"
            f"paths: {{state: {tmp_path}/s, live: {tmp_path}/l, event_log: {tmp_path}/e}}\n"
            "sites: {}\n")
    assert load_config_text(base + "alerts: {language: ja}\n").alerts.language == "ja"
    assert load_config_text(base).alerts.language == "en"
    with pytest.raises(ConfigError, match="language"):
        load_config_text(base + "alerts: {language: klingon}\n")
