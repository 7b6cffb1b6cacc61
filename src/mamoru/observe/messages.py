"""The one place where an event becomes human text.

`MESSAGES` is a table keyed by event kind; each entry names the fields its words need and
renders the text from the event's fields (and its site), in English or in the language
asked. `render(kind, fields, site)` looks the kind up and never raises: an unknown kind, a
missing field or a value of the wrong shape still gives a line (the kind and the fields it
has), because words must never stop a renewal. Times are shown in UTC. Every template is an
`_()` message id (the Japanese catalog translates it); the JSON-lines log's `message` is
always the English text, a terminal line or an alert is rendered again in its reader's
language.

Fields are read as the emitter passes them (datetimes, lists, numbers) or as they come back
from the JSON-lines log (ISO 8601 text, lists), so `mamoru log` could re-render old events.

Imports only clock and i18n: the words know nothing of the parts that emit them.
"""

from __future__ import annotations

import gettext
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mamoru.clock import parse_time
from mamoru.i18n import translations

Fields = Mapping[str, Any]


class MissingField(KeyError):
    """A field a message needs was not passed (render() falls back; it never raises)."""


# --- the language of the words ------------------------------------------------------------------

# The catalog render() speaks through: English unless a caller asks for a language (the JSONL
# log's `message` is always English; a terminal line or an alert is in its reader's language).
_ENGLISH = gettext.NullTranslations()
_speaking: ContextVar[gettext.NullTranslations] = ContextVar(
    "mamoru_messages_language", default=_ENGLISH)
_catalogs: dict[str, gettext.NullTranslations] = {}


def _catalog(lang: str) -> gettext.NullTranslations:
    found = _catalogs.get(lang)
    if found is None:
        found = _catalogs[lang] = translations(lang)
    return found


def _(message: str) -> str:
    return _speaking.get().gettext(message)


def ngettext(singular: str, plural_text: str, count: int) -> str:
    return _speaking.get().ngettext(singular, plural_text, count)


# --- helpers for the words ----------------------------------------------------------------------


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """'1 site', '3 sites', '0 sites' ('attempt' -> 'attempts'; pass `plural_noun` when adding
    an s is wrong). English only: translated words use `_n` with a `{n}` placeholder."""
    many = plural_noun if plural_noun is not None else noun + "s"
    return f"{count} {noun if count == 1 else many}"


def listing(values: Iterable[Any]) -> str:
    """'a.example, b.example'."""
    return ", ".join(str(value) for value in values)


def minute(value: Any) -> str:
    """A time to the minute, in UTC: '2030-01-02 03:04'."""
    return f"{_utc(value):%Y-%m-%d %H:%M}"


def second(value: Any) -> str:
    """A time to the second, in UTC: '2030-01-02 03:04:05'."""
    return f"{_utc(value):%Y-%m-%d %H:%M:%S}"


def _utc(value: Any) -> datetime:
    when = parse_time(value)
    if when is None:
        raise ValueError(f"not a time: {value!r}")
    return when.astimezone(UTC)


def _octal(value: Any) -> str:
    return format(value, "o") if isinstance(value, int) else str(value)


class _Need:
    """The fields of one event, read by name; a missing one raises MissingField."""

    def __init__(self, fields: Fields) -> None:
        self.fields = fields

    def __getitem__(self, name: str) -> Any:
        value = self.fields.get(name)
        if value is None:
            raise MissingField(name)
        return value

    def get(self, name: str, default: Any = None) -> Any:
        value = self.fields.get(name)
        return default if value is None else value


Render = Callable[[str, _Need], str]  # (site, fields) -> text


@dataclass(frozen=True)
class Message:
    """How one kind of event is put into words. `needs`: the fields every emitter of the kind
    passes (what the text is built from); `render(site, fields)`: the text."""

    needs: tuple[str, ...]
    render: Render


# --- the pipeline's story -------------------------------------------------------------------------


def _skipped(site: str, f: _Need) -> str:
    if f.get("why") == "backoff":  # the site is failing and its next attempt is later
        failures = int(f["attempt"]) - 1
        return ngettext("backing off after {n} failed attempt; next attempt {when} UTC",
                  "backing off after {n} failed attempts; next attempt {when} UTC",
                  failures).format(n=failures, when=second(f["next_due"]))
    return _("certificate still good; next renewal {when} UTC ({why})").format(
        when=minute(f["next_due"]), why=f["why"])


def _dry_run(site: str, f: _Need) -> str:
    what = (_("certificate obtained and discarded") if f["finalized"] else
            _("every name validated; the order was not finalized, so no certificate was "
              "issued"))
    return _("dry run: {what}; nothing changed in live/").format(what=what)


def _failed(site: str, f: _Need) -> str:
    if f.get("error_class") == "Interrupted":
        return _("the attempt started at {since} was interrupted (the process stopped "
                 "mid-way); counted as a failed attempt").format(since=f["since"])
    hint = f.get("hint")
    error = f"{f['error']}"
    if hint and _speaking.get() is not _ENGLISH:
        hint = _(str(hint))  # a class's hint is in the catalog; any other stays as it is
    return error + (f" — {hint}" if hint else "")


def _backoff(site: str, f: _Need) -> str:
    why = (_("after an interrupted attempt") if f.get("error_class") == "Interrupted"
           else f["why"])
    return _("next attempt {when} UTC ({why})").format(when=second(f["next_due"]), why=why)


def _revoked(site: str, f: _Need) -> str:
    if f.get("replace"):
        return _("certificate {serial} revoked ({reason}); ordering a replacement "
                 "now").format(serial=f["serial"], reason=f["reason"])
    return _("certificate {serial} revoked ({reason}); the site still serves it: run "
             "`mamoru provision {site}` for a new one").format(
        serial=f["serial"], reason=f["reason"], site=site)


def _check(site: str, f: _Need) -> str:
    findings = f.get("findings") or []
    summary = "; ".join(f"{one.get('name')} {one.get('check')}: {one.get('message')}"
                        for one in findings[:3])
    if summary:
        return _("browser check: {worst} — {summary}").format(worst=f["worst"], summary=summary)
    return _("browser check: {worst} (every name: certificate, redirect, HSTS, mixed "
             "content)").format(worst=f["worst"])


def _account(site: str, f: _Need) -> str:
    if not f.get("replaced"):
        return _("using ACME account {account}").format(account=f["account"])
    if f.get("new_key"):
        return _("the CA no longer knew ACME account {previous} ({why}); registered a new "
                 "account {account} with a new key (the old key is kept aside)").format(
            previous=f["previous"], why=f["why"], account=f["account"])
    return _("the CA no longer knew ACME account {previous} ({why}); registered the same key "
             "again as {account}").format(previous=f["previous"], why=f["why"],
                                          account=f["account"])


# --- installing -----------------------------------------------------------------------------------


def _installed(site: str, f: _Need) -> str:
    files = f.get("files")
    version = f"{int(f['version']):04d}"
    if files:
        return _("live/{site} now points at version {version}; wrote {files}").format(
            site=site, version=version, files=listing(files))
    return _("live/{site} now points at version {version}").format(site=site, version=version)


def _config_test(site: str, f: _Need) -> str:
    command = f.get("command")
    if command:
        return _("{server} accepted the config (`{command}`)").format(server=f["server"],
                                                                      command=command)
    return _("{server} accepted the config (no test command)").format(server=f["server"])


def _rollback(site: str, f: _Need) -> str:
    if f.get("kept_new"):
        parts = [_("live/{site} and the new files kept").format(site=site)]
    else:
        # `restored` (the previous serial) says there was a previous version to go back to
        had_previous = f.get("restored") is not None or f.get("restored_version") is not None
        parts = [_("live/{site} points at version {version} again").format(
                     site=site, version=f"{int(f['restored_version']):04d}")
                 if had_previous else _("live/{site} removed (first install)").format(site=site)]
        if f.get("files_restored"):
            parts.append(_("the generated files are as before"))
    if f.get("reloaded"):
        parts.append(_("server reloaded again"))
    problems = f.get("problems")
    text = _("rolled back after {error_class}: {what}").format(
        error_class=f["error_class"], what="; ".join(parts))
    if problems:
        text += _("; problems: {problems}").format(problems="; ".join(problems))
    return text


def _verify_failed(site: str, f: _Need) -> str:
    """What the web server served instead of the new certificate, name by name (also the
    text of the VerifyFailed error the install raises)."""
    parts = []
    if f.get("switching"):  # the latest round was right, but answers kept switching
        parts.append(_("{names} kept switching between the new and another "
                       "certificate").format(names=listing(f["names"])))
    if f.get("old"):
        parts.append(_("{names} still serve the previous certificate").format(
            names=listing(f["old"])))
    if f.get("other"):
        served = listing(_("{name} (serial {serial})").format(name=one["name"],
                                                              serial=one["serial"])
                         for one in f["other"])
        parts.append(_("{served} serve a certificate mamoru did not install").format(
            served=served))
    if f.get("unreachable"):
        missing = listing(f"{one['name']} ({one['error']})" for one in f["unreachable"])
        parts.append(_("no certificate for {names}").format(names=missing))
    if not parts:
        raise MissingField("old, other, unreachable or switching")
    text = _("after the reload, {what} at {address} (checked for {seconds} s); the install "
             "was rolled back").format(what="; ".join(parts), address=f["address"],
                                       seconds=f"{float(f['duration']):.1f}")
    explanation = f.get("explanation")
    return text + (f". {explanation}" if explanation else "")


def _port80_up(site: str, f: _Need) -> str:
    served = f.get("served")
    text = _("no certificate yet: {server} now answers plain HTTP for the site's names with "
             "mamoru's temporary server ({file}) so the CA can validate").format(
        server=f["server"], file=f["file"])
    if served is None:
        return text
    if served:
        return text + _("; it serves the webroot at {address}").format(address=f.get("address"))
    return text + _("; but {address} did not serve a test file from the webroot: the CA may "
                    "not reach the challenge either (is another server on that port?)").format(
        address=f.get("address"))


def _port80_down(site: str, f: _Need) -> str:
    cause = f.get("error_class")
    problems = f.get("problems")
    text = (_("mamoru's temporary plain-HTTP server taken back after {error_class}").format(
                error_class=cause) if cause else
            _("mamoru's temporary plain-HTTP server taken back"))
    if f.get("reloaded"):
        text += _("; {server} reloaded again").format(server=f["server"])
    if problems:
        text += _("; problems: {problems}").format(problems="; ".join(problems))
    return text


# --- warnings: one kind, several reasons (the `warning` field says which) ------------------------

WARNINGS: dict[str, Message] = {
    "key-mode": Message(("path", "mode", "expected"), lambda site, f: _(
        "{path} has mode {mode}: others may read the private key (expected {expected}); run "
        "`chmod {expected}` on it").format(path=f["path"], mode=_octal(f["mode"]),
                                           expected=_octal(f["expected"]))),
    "no-profiles": Message(("profile",), lambda site, f: _(
        "the CA offers no profiles; ordering without profile {profile}").format(
        profile=repr(f["profile"]))),
    "ari-unavailable": Message(("error",), lambda site, f: _(
        "could not fetch the CA's renewal window ({error}); using the lifetime rule").format(
        error=f["error"])),
    "config": Message(("note",), lambda site, f: _("config: {note}").format(note=f["note"])),
    "restart-needed": Message(("settings",), lambda site, f: _(
        "config: changes to {settings} take effect at the next restart "
        "(`systemctl restart mamoru`)").format(settings=listing(f["settings"]))),
}


def _warning(site: str, f: _Need) -> str:
    return WARNINGS[f["warning"]].render(site, f)


# --- the daemon -----------------------------------------------------------------------------------


def _stopped(site: str, f: _Need) -> str:
    abandoned, grace = f.get("abandoned"), f.get("grace")
    if not abandoned:
        return _("mamoru run stopped")
    if grace is None:
        return _("mamoru run stopped; abandoned {sites}").format(sites=listing(abandoned))
    return _("mamoru run stopped; abandoned {sites} after {seconds} s").format(
        sites=listing(abandoned), seconds=f"{float(grace):g}")


def _challenge(site: str, f: _Need) -> str:
    count = len(f["names"])
    return ngettext("answered {n} {type} challenge", "answered {n} {type} challenges",
                    count).format(n=count, type=f.get("challenge_type", "http-01"))


def _due_check(site: str, f: _Need) -> str:
    return (_("due: {why}") if f["due"] else _("not due: {why}")).format(why=f["why"])


# --- the table ------------------------------------------------------------------------------------

MESSAGES: dict[str, Message] = {
    # pipeline.py
    "skipped": Message(("next_due", "why"), _skipped),  # + attempt when why == "backoff"
    "due-check": Message(("due", "why"), _due_check),
    "dry-run": Message(("finalized",), _dry_run),
    "issued": Message(("serial", "not_after"), lambda site, f: _(
        "certificate {serial} issued, valid until {when} UTC").format(
        serial=f["serial"], when=minute(f["not_after"]))),
    "renewed": Message(("duration", "next_due", "why"), lambda site, f: _(
        "done in {seconds} s; next renewal {when} UTC ({why})").format(
        seconds=f"{float(f['duration']):.2f}", when=minute(f["next_due"]), why=f["why"])),
    "reinstalled": Message(("serial", "why", "next_due"), lambda site, f: _(
        "certificate {serial} put back in service ({why}); next renewal {when} UTC").format(
        serial=f["serial"], why=f["why"], when=minute(f["next_due"]))),
    "ari": Message(("ari_start", "ari_end"), lambda site, f: _(
        "CA renewal window {start} to {end} UTC").format(start=minute(f["ari_start"]),
                                                         end=minute(f["ari_end"]))),
    "failed": Message(("error",), _failed),  # Interrupted (daemon): since instead of error
    "backoff": Message(("next_due", "why"), _backoff),
    "check": Message(("worst",), _check),
    "revoked": Message(("serial", "reason"), _revoked),
    # issuance.py
    "order": Message(("names",), lambda site, f: _("order created for {names}").format(
        names=listing(f["names"]))),
    "challenge": Message(("names",), _challenge),
    "dns-published": Message(("names", "seconds"), lambda site, f: ngettext(
        "dns-01 records for {n} name seen on every authoritative nameserver after {seconds} s",
        "dns-01 records for {n} names seen on every authoritative nameserver after {seconds} s",
        len(f["names"])).format(n=len(f["names"]), seconds=f"{f['seconds']:.1f}")),
    "validated": Message((), lambda site, f: _("the CA validated every name")),
    # app.py
    "account": Message(("account",), _account),
    # install/transaction.py
    "installed": Message(("version",), _installed),
    "config-test": Message(("server",), _config_test),
    "reloaded": Message(("server", "command"), lambda site, f: _(
        "{server} reloaded (`{command}`)").format(server=f["server"], command=f["command"])),
    "server-unreachable": Message(("server", "address"), lambda site, f: _(
        "nothing answers at {address}: the {server} server looks down, so it was not "
        "reloaded; it serves the new certificate when it starts").format(
        address=f["address"], server=f["server"])),
    "verified": Message(("serial", "address", "duration"), lambda site, f: _(
        "every name serves certificate {serial} at {address} ({seconds} s after the "
        "reload)").format(serial=f["serial"], address=f["address"],
                          seconds=f"{float(f['duration']):.2f}")),
    "rollback": Message(("error_class",), _rollback),
    # install/bootstrap.py
    "port80-up": Message(("server", "file"), _port80_up),
    "port80-down": Message((), _port80_down),
    "verify-failed": Message(("address", "duration"), _verify_failed),  # + names, old, ...
    # every part: the `warning` field names which warning (see WARNINGS)
    "warning": Message(("warning",), _warning),
    # service/daemon.py
    "started": Message(("status",), lambda site, f: _("mamoru run: {status}").format(
        status=f["status"])),
    "stopping": Message(("signal",), lambda site, f: _(
        "{signal}: stopping (in-flight work is cancelled safely)").format(signal=f["signal"])),
    "stopped": Message((), _stopped),
    "config-rejected": Message(("error",), lambda site, f: _(
        "config reload failed; still running the previous config: {error}").format(
        error=f["error"])),
    "config-reloaded": Message(("summary",), lambda site, f: _(
        "config reloaded: {summary}").format(summary=f["summary"])),
    # observe/alerts
    "alert": Message(("alert", "channel", "summary"), lambda site, f: _(
        "{alert} alert sent by {channel}: {summary}").format(
        alert=f["alert"], channel=f["channel"], summary=f["summary"])),
    "alert-failed": Message(("alert", "channel", "error"), lambda site, f: _(
        "could not send the {alert} alert by {channel}: {error}").format(
        alert=f["alert"], channel=f["channel"], error=f["error"])),
}
MESSAGES["provisioned"] = MESSAGES["renewed"]


def render(kind: str, fields: Fields, site: str | None = None, lang: str | None = None) -> str:
    """The text of an event of `kind` with `fields` (about `site`): English, or in `lang`
    (`"ja"`; English when there is no catalog for it). Never raises: an unknown kind or a
    missing field gives the kind and the fields there are."""
    message = MESSAGES.get(kind)
    if message is None:
        return fallback(kind, fields)
    token = _speaking.set(_catalog(lang) if lang and lang != "en" else _ENGLISH)
    try:
        return message.render(site or "-", _Need(fields))
    except Exception:  # a missing field or a value of the wrong shape: say what we have
        return fallback(kind, fields)
    finally:
        _speaking.reset(token)


def fallback(kind: str, fields: Fields) -> str:
    """'kind: key=value, ...' for an event the table cannot put into words."""
    try:
        shown = [f"{key}={_short(value)}" for key, value in fields.items() if value is not None]
    except Exception:
        shown = []
    return f"{kind}: {', '.join(shown)}" if shown else str(kind)


def _short(value: Any) -> str:
    if isinstance(value, datetime):
        text = value.isoformat()
    elif isinstance(value, list | tuple):
        text = listing(value)
    else:
        text = str(value)
    return text if len(text) <= 200 else text[:199] + "…"
