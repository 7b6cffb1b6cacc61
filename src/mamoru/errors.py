"""Every error mamoru raises, typed by what the caller should do about it.

`retryable` tells the renewal scheduler whether trying again later can help (a network fault,
a CA outage, a rate limit) or whether a person must act first (a wrong config, a name the CA
refuses). `hint` is one sentence for that person: what to do next. Messages never carry secrets.
A class's hint is an English message id (marked with `N_`), translated where it is shown
(`_(error.hint)`; the event log keeps it in English).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


def N_(message: str) -> str:
    """Mark `message` for the catalog (errors import nothing of mamoru's, not even i18n: the
    hint is translated where it is shown, `_(error.hint)`)."""
    return message


class MamoruError(Exception):
    """Base class. `str(error)` is the message shown to the user."""

    retryable: bool = False
    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def kind(self) -> str:
        """A stable, machine-friendly name of the error class (used in events and metrics)."""
        return type(self).__name__

    def fields(self) -> dict[str, Any]:
        """Extra structured fields for events (no secrets)."""
        return {}


@dataclass(frozen=True)
class ConfigProblem:
    """One problem found in a config file, with its place."""

    file: str
    line: int | None
    path: str
    message: str
    severity: str = "error"  # "error" | "warning"
    # The English message id and its values, so the message can be said in the reader's
    # language (`config.yamlnodes.localized`); `message` is the English text, filled in.
    template: str = ""
    params: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        label = f"{self.path}: " if self.path else ""
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}: {prefix}{label}{self.message}"


class ConfigError(MamoruError):
    """The config is wrong; carries every problem found, not just the first."""

    hint = N_("Fix the config file and run `mamoru check-config`.")

    def __init__(self, problems: list[ConfigProblem] | str) -> None:
        if isinstance(problems, str):
            problems = [ConfigProblem("<config>", None, "", problems)]
        self.problems = problems
        count = len(problems)
        head = f"{count} problem{'s' if count != 1 else ''} in the config"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in problems))


class UsageError(MamoruError):
    """A command-line mistake (unknown site name, conflicting flags)."""


# --- issuance -----------------------------------------------------------------------------


class IssuanceError(MamoruError):
    """Obtaining a certificate from the CA failed."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        problem_type: str | None = None,
        detail: str | None = None,
        status: int | None = None,
        retry_after: datetime | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.problem_type = problem_type
        self.detail = detail
        self.status = status
        self.retry_after = retry_after

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.problem_type:
            out["problem_type"] = self.problem_type
        if self.detail:
            out["detail"] = self.detail
        if self.status:
            out["status"] = self.status
        if self.retry_after:
            out["retry_after"] = self.retry_after.isoformat()
        return out


class CAUnavailable(IssuanceError):
    """The CA could not be reached or answered with a server error. Transient."""

    retryable = True
    hint = N_("Check the network and the ACME directory URL; mamoru retries with backoff.")


class RateLimited(IssuanceError):
    """The CA said to slow down (rateLimited, 429 or 503 with Retry-After). Transient."""

    retryable = True
    hint = N_("Wait until the time the CA named; mamoru retries then by itself.")


class BadNonceExhausted(IssuanceError):
    """The CA kept rejecting our nonces after many fresh tries. Transient."""

    retryable = True


class ChallengeFailed(IssuanceError):
    """The CA could not validate control of a name (it could not fetch the challenge)."""

    retryable = True  # often a firewall or DNS fix away; retried slowly
    hint = N_(
        "Make sure http://NAME/.well-known/acme-challenge/ reaches this machine on port 80 "
        "(DNS A/AAAA records, firewall, webroot path)."
    )


class OrderFailed(IssuanceError):
    """The CA refused the order or it became invalid (rejectedIdentifier, caa, unauthorized)."""

    retryable = False


class AccountError(IssuanceError):
    """The ACME account could not be registered or loaded (EAB wrong, account revoked...)."""

    retryable = False


class Cancelled(MamoruError):
    """The work was stopped on request (SIGTERM, Ctrl-C) before it finished."""

    retryable = True


# --- storage and install --------------------------------------------------------------------


class StorageError(MamoruError):
    """Reading or writing mamoru's files failed (disk full, permissions, corrupt metadata)."""

    retryable = True


class LockBusy(StorageError):
    """Another mamoru process is working on this site right now."""

    hint = N_("Another mamoru run holds this site's lock; it will finish on its own.")


class InstallError(MamoruError):
    """Putting the certificate into service failed; the previous one was restored."""

    retryable = True

    def __init__(self, message: str, *, hint: str | None = None, output: str = "") -> None:
        super().__init__(message, hint=hint)
        self.output = output

    def fields(self) -> dict[str, Any]:
        return {"output": self.output[-4000:]} if self.output else {}


class ConfigTestFailed(InstallError):
    """The web server rejected its config; nothing was reloaded."""

    retryable = False
    hint = N_("Fix the web server config error shown above, then run `mamoru provision` again.")


class ReloadFailed(InstallError):
    """The web server's reload command failed or timed out."""


class ServerUnreachable(InstallError):
    """The web server does not answer at its TLS address (connection refused or no answer):
    it is down, or listens elsewhere. mamoru never reloads, and so never starts, a server that
    is down; the certificate files are in place for when it starts."""

    retryable = True
    hint = N_("Start the web server (e.g. `systemctl start nginx` or `systemctl start apache2`) "
              "or fix server.listen / server.verify; mamoru checks again by itself.")


class VerifyFailed(InstallError):
    """After the reload, some names still did not serve the new certificate."""

    def __init__(
        self, message: str, *, names: list[str], hint: str | None = None, output: str = ""
    ) -> None:
        super().__init__(message, hint=hint, output=output)
        self.names = names

    def fields(self) -> dict[str, Any]:
        return {**super().fields(), "names": self.names}
