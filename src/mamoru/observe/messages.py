"""The one place where an event becomes human text.

`MESSAGES` is a table keyed by event kind; each entry names the fields its words need and
renders the English text from the event's fields (and its site). `render(kind, fields, site)`
looks the kind up and never raises: an unknown kind, a missing field or a value of the wrong
shape still gives a line (the kind and the fields it has), because words must never stop a
renewal. Times are shown in UTC. Translating mamoru means translating this file.

Fields are read as the emitter passes them (datetimes, lists, numbers) or as they come back
from the JSON-lines log (ISO 8601 text, lists), so `mamoru log` could re-render old events.

Imports only clock: the words know nothing of the parts that emit them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mamoru.clock import parse_time

Fields = Mapping[str, Any]


class MissingField(KeyError):
    """A field a message needs was not passed (render() falls back; it never raises)."""


# --- helpers for the words ----------------------------------------------------------------------


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """'1 site', '3 sites', '0 sites' ('attempt' -> 'attempts'; pass `plural_noun` when adding
    an s is wrong)."""
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
        return (f"backing off after {plural(failures, 'failed attempt')}; next attempt "
                f"{second(f['next_due'])} UTC")
    return f"certificate still good; next renewal {minute(f['next_due'])} UTC ({f['why']})"


def _dry_run(site: str, f: _Need) -> str:
    what = ("certificate obtained and discarded" if f["finalized"] else
            "every name validated; the order was not finalized, so no certificate was issued")
    return f"dry run: {what}; nothing changed in live/"


def _failed(site: str, f: _Need) -> str:
    if f.get("error_class") == "Interrupted":
        since = f["since"]
        return (f"the attempt started at {since} was interrupted (the process stopped "
                "mid-way); counted as a failed attempt")
    hint = f.get("hint")
    return f"{f['error']}" + (f" — {hint}" if hint else "")


def _backoff(site: str, f: _Need) -> str:
    why = ("after an interrupted attempt" if f.get("error_class") == "Interrupted"
           else f["why"])
    return f"next attempt {second(f['next_due'])} UTC ({why})"


def _revoked(site: str, f: _Need) -> str:
    then = ("; ordering a replacement now" if f.get("replace") else
            f"; the site still serves it: run `mamoru provision {site}` for a new one")
    return f"certificate {f['serial']} revoked ({f['reason']}){then}"


def _check(site: str, f: _Need) -> str:
    findings = f.get("findings") or []
    summary = "; ".join(f"{one.get('name')} {one.get('check')}: {one.get('message')}"
                        for one in findings[:3])
    return f"browser check: {f['worst']}" + (
        f" — {summary}" if summary
        else " (every name: certificate, redirect, HSTS, mixed content)")


def _account(site: str, f: _Need) -> str:
    if not f.get("replaced"):
        return f"using ACME account {f['account']}"
    again = (f"a new account {f['account']} with a new key (the old key is kept aside)"
             if f.get("new_key") else f"the same key again as {f['account']}")
    return f"the CA no longer knew ACME account {f['previous']} ({f['why']}); registered {again}"


# --- installing -----------------------------------------------------------------------------------


def _installed(site: str, f: _Need) -> str:
    files = f.get("files")
    return (f"live/{site} now points at version {int(f['version']):04d}"
            + (f"; wrote {listing(files)}" if files else ""))


def _config_test(site: str, f: _Need) -> str:
    command = f.get("command")
    return f"{f['server']} accepted the config" + (
        f" (`{command}`)" if command else " (no test command)")


def _rollback(site: str, f: _Need) -> str:
    if f.get("kept_new"):
        parts = [f"live/{site} and the new files kept"]
    else:
        # `restored` (the previous serial) says there was a previous version to go back to
        had_previous = f.get("restored") is not None or f.get("restored_version") is not None
        parts = [f"live/{site} points at version {int(f['restored_version']):04d} again"
                 if had_previous else f"live/{site} removed (first install)"]
        if f.get("files_restored"):
            parts.append("the generated files are as before")
    if f.get("reloaded"):
        parts.append("server reloaded again")
    problems = f.get("problems")
    return (f"rolled back after {f['error_class']}: {'; '.join(parts)}"
            + (f"; problems: {'; '.join(problems)}" if problems else ""))


def _verify_failed(site: str, f: _Need) -> str:
    """What the web server served instead of the new certificate, name by name (also the
    text of the VerifyFailed error the install raises)."""
    parts = []
    if f.get("switching"):  # the latest round was right, but answers kept switching
        parts.append(f"{listing(f['names'])} kept switching between the new and another "
                     "certificate")
    if f.get("old"):
        parts.append(f"{listing(f['old'])} still serve the previous certificate")
    if f.get("other"):
        served = listing(f"{one['name']} (serial {one['serial']})" for one in f["other"])
        parts.append(f"{served} serve a certificate mamoru did not install")
    if f.get("unreachable"):
        missing = listing(f"{one['name']} ({one['error']})" for one in f["unreachable"])
        parts.append(f"no certificate for {missing}")
    if not parts:
        raise MissingField("old, other, unreachable or switching")
    text = (f"after the reload, {'; '.join(parts)} at {f['address']} "
            f"(checked for {float(f['duration']):.1f} s); the install was rolled back")
    explanation = f.get("explanation")
    return text + (f". {explanation}" if explanation else "")


def _port80_up(site: str, f: _Need) -> str:
    served = f.get("served")
    return (f"no certificate yet: {f['server']} now answers plain HTTP for the site's names with "
            f"mamoru's temporary server ({f['file']}) so the CA can validate"
            + ("" if served is None else
               f"; it serves the webroot at {f.get('address')}" if served else
               f"; but {f.get('address')} did not serve a test file from the webroot: the CA may "
               "not reach the challenge either (is another server on that port?)"))


def _port80_down(site: str, f: _Need) -> str:
    cause = f.get("error_class")
    problems = f.get("problems")
    return ("mamoru's temporary plain-HTTP server taken back"
            + (f" after {cause}" if cause else "")
            + (f"; {f['server']} reloaded again" if f.get("reloaded") else "")
            + (f"; problems: {'; '.join(problems)}" if problems else ""))


# --- warnings: one kind, several reasons (the `warning` field says which) ------------------------

WARNINGS: dict[str, Message] = {
    "key-mode": Message(("path", "mode", "expected"), lambda site, f: (
        f"{f['path']} has mode {_octal(f['mode'])}: others may read the private key (expected "
        f"{_octal(f['expected'])}); run `chmod {_octal(f['expected'])}` on it")),
    "no-profiles": Message(("profile",), lambda site, f: (
        f"the CA offers no profiles; ordering without profile {f['profile']!r}")),
    "ari-unavailable": Message(("error",), lambda site, f: (
        f"could not fetch the CA's renewal window ({f['error']}); using the lifetime rule")),
    "config": Message(("note",), lambda site, f: f"config: {f['note']}"),
    "restart-needed": Message(("settings",), lambda site, f: (
        f"config: changes to {listing(f['settings'])} take effect at the next restart "
        "(`systemctl restart mamoru`)")),
}


def _warning(site: str, f: _Need) -> str:
    return WARNINGS[f["warning"]].render(site, f)


# --- the daemon -----------------------------------------------------------------------------------


def _stopped(site: str, f: _Need) -> str:
    abandoned, grace = f.get("abandoned"), f.get("grace")
    if not abandoned:
        return "mamoru run stopped"
    return (f"mamoru run stopped; abandoned {listing(abandoned)}"
            + (f" after {float(grace):g} s" if grace is not None else ""))


# --- the table ------------------------------------------------------------------------------------

MESSAGES: dict[str, Message] = {
    # pipeline.py
    "skipped": Message(("next_due", "why"), _skipped),  # + attempt when why == "backoff"
    "due-check": Message(("due", "why"), lambda site, f: (
        f"{'due' if f['due'] else 'not due'}: {f['why']}")),
    "dry-run": Message(("finalized",), _dry_run),
    "issued": Message(("serial", "not_after"), lambda site, f: (
        f"certificate {f['serial']} issued, valid until {minute(f['not_after'])} UTC")),
    "renewed": Message(("duration", "next_due", "why"), lambda site, f: (
        f"done in {float(f['duration']):.2f} s; next renewal {minute(f['next_due'])} UTC "
        f"({f['why']})")),
    "reinstalled": Message(("serial", "why", "next_due"), lambda site, f: (
        f"certificate {f['serial']} put back in service ({f['why']}); next renewal "
        f"{minute(f['next_due'])} UTC")),
    "ari": Message(("ari_start", "ari_end"), lambda site, f: (
        f"CA renewal window {minute(f['ari_start'])} to {minute(f['ari_end'])} UTC")),
    "failed": Message(("error",), _failed),  # Interrupted (daemon): since instead of error
    "backoff": Message(("next_due", "why"), _backoff),
    "check": Message(("worst",), _check),
    "revoked": Message(("serial", "reason"), _revoked),
    # issuance.py
    "order": Message(("names",), lambda site, f: f"order created for {listing(f['names'])}"),
    "challenge": Message(("names",), lambda site, f: (
        f"answered {plural(len(f['names']), f.get('challenge_type', 'http-01') + ' challenge')}")),
    "dns-published": Message(("names", "seconds"), lambda site, f: (
        f"dns-01 records for {plural(len(f['names']), 'name')} seen on every authoritative "
        f"nameserver after {f['seconds']:.1f} s")),
    "validated": Message((), lambda site, f: "the CA validated every name"),
    # app.py
    "account": Message(("account",), _account),
    # install/transaction.py
    "installed": Message(("version",), _installed),
    "config-test": Message(("server",), _config_test),
    "reloaded": Message(("server", "command"), lambda site, f: (
        f"{f['server']} reloaded (`{f['command']}`)")),
    "server-unreachable": Message(("server", "address"), lambda site, f: (
        f"nothing answers at {f['address']}: the {f['server']} server looks down, so it was not "
        "reloaded; it serves the new certificate when it starts")),
    "verified": Message(("serial", "address", "duration"), lambda site, f: (
        f"every name serves certificate {f['serial']} at {f['address']} "
        f"({float(f['duration']):.2f} s after the reload)")),
    "rollback": Message(("error_class",), _rollback),
    # install/bootstrap.py
    "port80-up": Message(("server", "file"), _port80_up),
    "port80-down": Message((), _port80_down),
    "verify-failed": Message(("address", "duration"), _verify_failed),  # + names, old, ...
    # every part: the `warning` field names which warning (see WARNINGS)
    "warning": Message(("warning",), _warning),
    # service/daemon.py
    "started": Message(("status",), lambda site, f: f"mamoru run: {f['status']}"),
    "stopping": Message(("signal",), lambda site, f: (
        f"{f['signal']}: stopping (in-flight work is cancelled safely)")),
    "stopped": Message((), _stopped),
    "config-rejected": Message(("error",), lambda site, f: (
        f"config reload failed; still running the previous config: {f['error']}")),
    "config-reloaded": Message(("summary",), lambda site, f: f"config reloaded: {f['summary']}"),
    # observe/alerts
    "alert": Message(("alert", "channel", "summary"), lambda site, f: (
        f"{f['alert']} alert sent by {f['channel']}: {f['summary']}")),
    "alert-failed": Message(("alert", "channel", "error"), lambda site, f: (
        f"could not send the {f['alert']} alert by {f['channel']}: {f['error']}")),
}
MESSAGES["provisioned"] = MESSAGES["renewed"]


def render(kind: str, fields: Fields, site: str | None = None) -> str:
    """The English text of an event of `kind` with `fields` (about `site`). Never raises: an
    unknown kind or a missing field gives the kind and the fields there are."""
    message = MESSAGES.get(kind)
    if message is None:
        return fallback(kind, fields)
    try:
        return message.render(site or "-", _Need(fields))
    except Exception:  # a missing field or a value of the wrong shape: say what we have
        return fallback(kind, fields)


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
