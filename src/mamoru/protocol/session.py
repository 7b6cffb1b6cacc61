"""One ACME session with one CA: directory, nonces, account, orders, polling, ARI, revocation.

Signs with `jws.AccountSigner` and talks over `transport.ConnectionPool` (keep-alive
connections shared by threads), both on the standard library and `cryptography` alone, so a
process starts fast and small (docs/PERFORMANCE.md). It closes the gaps that ACME-NOTES lists
for certbot's `acme` library:
- a thread-safe nonce pool, so many orders can share one account and one connection pool;
- badNonce retried with a fresh nonce up to `BAD_NONCE_TRIES` times (that library tries twice);
- every CA answer mapped to a typed error carrying the problem type, detail, HTTP status and
  `Retry-After` (that library drops the headers);
- `replaces` (RFC 9773 §5) on new orders, with the 409 `alreadyReplaced` fallback;
- polling that starts at 5 ms and doubles up to 1 s, honouring `Retry-After`, and stops at once
  when the caller's stop event is set (no multi-second fixed sleeps).

Callers see plain values (`Order`, `ChallengeTask`; `ari.RenewalInfo`), never protocol types.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization

from mamoru import __version__
from mamoru.challenges.base import PREFIX_HTTP01, ChallengeTask
from mamoru.errors import (
    BadNonceExhausted,
    Cancelled,
    CAUnavailable,
    ChallengeFailed,
    IssuanceError,
    OrderFailed,
)
from mamoru.protocol.errors import ACME_ERROR, AccountGone, parse_retry_after, problem_error
from mamoru.protocol.jws import AccountSigner, b64
from mamoru.protocol.keys import PrivateKey
from mamoru.protocol.transport import ConnectionPool, Response

log = logging.getLogger(__name__)

# Pebble may reject 50 % of nonces. A run signs ~10 requests per site, so per-request odds must
# be tiny: 20 fresh tries leave 1 in a million requests (12 lost ~4 % of 20-site runs).
BAD_NONCE_TRIES = 20
TRANSPORT_TRIES = 3  # connection refused/reset: retried twice, quickly
# Polls wait 5 ms, then twice as long each time, up to 1 s: a CA on the same network (Pebble
# validates and issues in a few ms) is seen at once, and against a CA that takes seconds (Let's
# Encrypt) there are no more polls than with slower starts: 10 for 3 s. Retry-After wins.
POLL_FIRST = 0.005
POLL_GROWTH = 2.0
POLL_MAX = 1.0
DIRECTORY_FAILURE_MEMORY = 30.0  # seconds a failed directory fetch is not retried
# A directory fetched from the CA is kept on disk this long (seconds), for the next processes:
# a vendor's script that runs `mamoru provision SITE` once per site, a daemon's worker per
# burst of due sites. Short, so a CA's new endpoints, profiles or terms are seen within minutes;
# an entry that fails (newNonce without a nonce, a 404) is dropped and fetched again at once.
DIRECTORY_CACHE_SECONDS = 600.0
USER_AGENT = f"mamoru/{__version__}"
_TOKEN_IN_URL = re.compile(r"(/acme-challenge/)[A-Za-z0-9_-]{16,}")
JOSE = "application/jose+json"
_T = TypeVar("_T")
PEM_CHAIN = "application/pem-certificate-chain"


@dataclass
class Order:
    url: str
    status: str
    identifiers: list[str]
    authorizations: list[str]
    finalize: str
    certificate: str | None = None
    replaced: str | None = None  # the cert id sent as `replaces`, when it was accepted

    @classmethod
    def from_json(cls, url: str, body: dict[str, Any]) -> Order:
        return cls(
            url=url,
            status=str(body.get("status", "")),
            identifiers=[str(i.get("value")) for i in body.get("identifiers", [])],
            authorizations=list(body.get("authorizations", [])),
            finalize=str(body.get("finalize", "")),
            certificate=body.get("certificate"),
        )


@dataclass
class PollState:
    """One polling loop's own state (one order's authorizations, or its finalization)."""

    retry_after: datetime | None = None


def _account_refused(error: IssuanceError) -> bool:
    """The CA refused a request signed with our account because the account is gone:
    unknown to it (accountDoesNotExist) or deactivated/revoked (RFC 8555 §7.3.6 answers
    those with `unauthorized`; the detail names the status)."""
    if isinstance(error, AccountGone):
        return True
    if error.problem_type != ACME_ERROR + "unauthorized":
        return False
    detail = (error.detail or "").lower()
    return "account" in detail and ("deactivated" in detail or "revoked" in detail)


class AcmeSession:
    """A connection to one ACME CA, shared by every order of one run (thread-safe).

    `stop` is checked while waiting; when it is set, waits end at once with `Cancelled`.
    Every method raises `IssuanceError` subclasses (never transport or parsing exceptions).
    """

    def __init__(
        self,
        directory_url: str,
        *,
        ca_bundle: str | None = None,
        timeout: float = 30.0,
        pool_size: int = 8,
        stop: threading.Event | None = None,
        directory_cache: str | None = None,
    ) -> None:
        self.directory_url = directory_url
        # The file the directory is kept in between processes (DIRECTORY_CACHE_SECONDS);
        # None: fetched by every session.
        self.directory_cache = directory_cache
        self._directory_from_cache = False
        self.timeout = timeout
        self.stop = stop or threading.Event()
        # Only `ca_bundle` when it is given, else the system trust store (never an
        # environment variable that would silently override the config).
        self.ca_bundle = ca_bundle
        # The account in use: its signer and URL, swapped together (a new account replaces
        # a refused one while other orders are signing), read together by `post`.
        self._account: tuple[AccountSigner, str | None] | None = None
        self._directory: dict[str, Any] | None = None
        self._directory_failure: tuple[IssuanceError, float] | None = None
        self._nonces: list[str] = []
        self._lock = threading.Lock()
        self.http = ConnectionPool(ca_bundle=ca_bundle, timeout=timeout, max_idle=pool_size + 2,
                                   headers={"User-Agent": USER_AGENT})
        # Counters shared by every order's thread: changed only under `_count_lock`, so
        # they stay exact however many orders run at once.
        self._count_lock = threading.Lock()
        self.requests_made = 0
        self.bad_nonces = 0

    def _count(self, *, requests: int = 0, bad_nonces: int = 0) -> None:
        with self._count_lock:
            self.requests_made += requests
            self.bad_nonces += bad_nonces

    # -- transport ---------------------------------------------------------------------------

    def _request(self, method: str, url: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Response:
        if self.stop.is_set():
            raise Cancelled("stopped before contacting the CA")
        last: Exception | None = None
        for attempt in range(TRANSPORT_TRIES):
            try:
                self._count(requests=1)
                return self.http.request(method, url, body, headers)
            except ssl.SSLCertVerificationError as error:
                raise CAUnavailable(
                    f"the CA's TLS certificate did not verify ({url}): {_short(error)}",
                    hint="If this CA uses a private root, set acme.ca_bundle to its PEM file.",
                ) from None
            except TimeoutError:
                raise CAUnavailable(
                    f"the CA did not answer within {self.timeout:g} s ({url})"
                ) from None
            except ssl.SSLError as error:
                if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError):
                    last = error  # the connection was cut: like a reset, worth a retry
                else:
                    raise CAUnavailable(f"TLS with the CA failed ({url}): {_short(error)}",
                                        hint="If this CA uses a private root, set "
                                        "acme.ca_bundle to its PEM file.") from None
            except OSError as error:  # refused, reset, DNS, a malformed answer
                last = error
            except ValueError as error:  # a malformed URL or proxy setting
                raise CAUnavailable(f"request to the CA failed ({url}): {_short(error)}") from None
            if attempt + 1 < TRANSPORT_TRIES and self.stop.wait(0.1 * (4**attempt)):
                raise Cancelled("stopped while retrying the CA") from None
        raise CAUnavailable(
            f"cannot reach the CA at {urlsplit(url).netloc} ({url}): {_short(last)}",
            hint="Check the network, DNS and the acme.directory URL; mamoru retries with backoff.",
        )

    @staticmethod
    def _problem(response: Response, context: str = "") -> IssuanceError:
        try:
            body = response.json()
        except ValueError:
            body = None
        problem = body if isinstance(body, dict) else None
        return problem_error(
            problem,
            status=response.status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            url=response.url,
            context=context,
        )

    def _take_nonce(self) -> str:
        with self._lock:
            if self._nonces:
                return self._nonces.pop()
        response = self._request("HEAD", self.directory()["newNonce"])
        nonce = response.headers.get("Replay-Nonce")
        if not nonce:
            if self._forget_cached_directory():  # the CA moved its endpoints: ask it again
                return self._take_nonce()
            raise self._problem(response, "getting a nonce")
        return nonce

    def _keep_nonce(self, response: Response) -> None:
        nonce = response.headers.get("Replay-Nonce")
        if nonce:
            with self._lock:
                self._nonces.append(nonce)

    @property
    def account_url(self) -> str | None:
        """The URL of the account in use (None before `use_account` has registered it)."""
        account = self._account
        return account[1] if account else None

    def post(self, url: str, payload: dict[str, Any] | None, *, accept: str | None = None,
             context: str = "", use_kid: bool = True,
             signer: AccountSigner | None = None) -> Response:
        """Signed POST (payload None = POST-as-GET, RFC 8555 §6.3). Retries badNonce.
        `use_kid=False` puts the public key in the header instead (newAccount); `signer`
        signs with a key that is not the session's account yet (newAccount).
        A CA that refuses the signing account raises `AccountGone` naming that account."""
        if signer is not None:
            signed_by: str | None = None
        else:
            signer, signed_by = self._account_now()
        for _ in range(BAD_NONCE_TRIES):
            nonce = self._take_nonce()
            body = signer.sign(payload, url=url, nonce=nonce,
                               kid=signed_by if use_kid else None)
            headers = {"Content-Type": JOSE}
            if accept:
                headers["Accept"] = accept
            response = self._request("POST", url, body, headers)
            self._keep_nonce(response)
            if response.ok:
                return response
            error = self._problem(response, context)
            if error.problem_type == ACME_ERROR + "badNonce":
                log.debug("badNonce from %s; retrying with a fresh nonce", url)
                self._count(bad_nonces=1)
                continue
            if _account_refused(error) and not isinstance(error, AccountGone):
                raise AccountGone.from_error(error, signed_by) from None
            if isinstance(error, AccountGone):
                error.account_url = error.account_url or signed_by
            raise error
        raise BadNonceExhausted(
            f"{context + ': ' if context else ''}the CA rejected {BAD_NONCE_TRIES} nonces in a "
            f"row ({url})"
        )

    def _account_now(self) -> tuple[AccountSigner, str | None]:
        account = self._account
        if account is None:
            raise OrderFailed("no ACME account is loaded (call use_account first)")
        return account

    def _account_signer(self) -> AccountSigner:
        return self._account_now()[0]

    # -- directory and account ---------------------------------------------------------------

    def directory(self) -> dict[str, Any]:
        """The CA's directory, fetched once (or read from `directory_cache` while it is
        fresh). A failed fetch is remembered for DIRECTORY_FAILURE_MEMORY seconds, so a run
        that meets a down or hanging CA waits for it once (for the renewal window and the
        order alike), not once per step."""
        directory = self._directory
        if directory is None:
            cached = self._read_cached_directory()
            if cached is not None:
                self._directory, self._directory_from_cache = cached, True
                return cached
            failed = self._directory_failure
            if failed is not None and time.monotonic() - failed[1] < DIRECTORY_FAILURE_MEMORY:
                raise failed[0]
            try:
                directory = self._fetch_directory()
            except IssuanceError as error:
                self._directory_failure = (error, time.monotonic())
                raise
            self._directory, self._directory_from_cache = directory, False
            self._directory_failure = None
            self._write_cached_directory(directory)
        return directory

    def _read_cached_directory(self) -> dict[str, Any] | None:
        """The directory kept by an earlier process, if it is for this URL, younger than
        DIRECTORY_CACHE_SECONDS and still looks like a directory; None otherwise (a missing,
        damaged or stale file is simply fetched again)."""
        if self.directory_cache is None:
            return None
        try:
            with open(self.directory_cache, "rb") as handle:
                kept = json.loads(handle.read())
            age = time.time() - float(kept["fetched"])
            body = kept["directory"]
            if kept["url"] != self.directory_url or not 0 <= age < DIRECTORY_CACHE_SECONDS \
                    or not _is_directory(body):
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        result: dict[str, Any] = body
        return result

    def _write_cached_directory(self, directory: dict[str, Any]) -> None:
        """Keep `directory` for the next processes. A cache: a write that fails costs the next
        process one fetch, never this run (so no error, and no fsync of the directory)."""
        if self.directory_cache is None:
            return
        from mamoru.storage.atomic import ensure_dir, write_file

        kept = {"url": self.directory_url, "fetched": time.time(), "directory": directory}
        try:
            ensure_dir(os.path.dirname(self.directory_cache), 0o700)
            write_file(self.directory_cache, json.dumps(kept).encode(), mode=0o600,
                       sync_dir=False)
        except OSError as error:
            log.debug("could not keep the ACME directory in %s: %s", self.directory_cache, error)

    def _forget_cached_directory(self) -> bool:
        """The directory in use came from the cache and one of its URLs failed: drop the
        file and the copy in memory, so the next `directory()` asks the CA. True when there
        was such a copy (the caller then tries once more), False for a fetched directory."""
        with self._lock:
            if not self._directory_from_cache:
                return False
            self._directory, self._directory_from_cache = None, False
        if self.directory_cache is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.directory_cache)
        log.info("the cached ACME directory of %s failed; fetching it again", self.directory_url)
        return True

    def _at_directory_url(self, name: str, call: Callable[[str], _T]) -> _T:
        """`call` with the directory's `name` URL. When the directory came from the cache and
        the CA answers 404 there, the directory is fetched again and, if it names another
        URL now, `call` tried once more there."""
        directory = self.directory()
        try:
            return call(directory[name])
        except IssuanceError as error:
            if error.status != 404:
                raise
            if directory is self._directory and not self._forget_cached_directory():
                raise  # a directory fetched just now: the 404 is the CA's answer
            if self.directory().get(name) == directory[name]:
                raise  # (it may have been fetched again meanwhile, by the nonce's failure)
        return call(self.directory()[name])

    def _fetch_directory(self) -> dict[str, Any]:
        response = self._request("GET", self.directory_url)
        if not response.ok:
            raise self._problem(response, "fetching the ACME directory")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not _is_directory(body):
            raise CAUnavailable(
                f"{self.directory_url} is not an ACME directory (no newNonce/newAccount/"
                "newOrder in its answer)",
                hint="Check acme.directory: it must be the CA's ACME directory URL.",
            ) from None
        result: dict[str, Any] = body
        return result

    @property
    def meta(self) -> dict[str, Any]:
        meta = self.directory().get("meta")
        return meta if isinstance(meta, dict) else {}

    @property
    def supports_ari(self) -> bool:
        return "renewalInfo" in self.directory()

    @property
    def profiles(self) -> dict[str, str]:
        profiles = self.meta.get("profiles")
        return dict(profiles) if isinstance(profiles, dict) else {}

    def use_account(self, key: PrivateKey, *, contact: tuple[str, ...] = (),
                    eab: tuple[str, str] | None = None) -> str:
        """Find or create the account for `key` (newAccount returns an existing one, RFC 8555
        §7.3.1), so a CA that forgot us is handled the same way as a first run. Returns its URL.
        `eab` is (kid, base64url HMAC key). Raises ValueError for an unusable key type."""
        signer = AccountSigner(key)
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if contact:
            payload["contact"] = list(contact)

        def register(new_account: str) -> Response:
            if eab is not None:
                try:
                    payload["externalAccountBinding"] = signer.external_binding(
                        eab[0], eab[1], new_account)
                except ValueError:
                    raise OrderFailed("acme.eab.hmac_key is not base64url",
                                      hint="Copy the HMAC key exactly as the CA gave it."
                                      ) from None
            elif self.meta.get("externalAccountRequired"):
                raise problem_error({"type": ACME_ERROR + "externalAccountRequired",
                                     "detail": "the CA requires External Account Binding"},
                                    status=None, retry_after=None, url=new_account,
                                    context="registering the account")
            return self.post(new_account, payload, use_kid=False, signer=signer,
                             context="registering the account")

        response = self._at_directory_url("newAccount", register)
        url = response.headers.get("Location")
        if not url:
            raise CAUnavailable("the CA created an account but sent no Location header")
        try:
            body = response.json()
        except ValueError:
            body = None
        status = body.get("status") if isinstance(body, dict) else None
        if status in ("deactivated", "revoked"):
            # newAccount found the key's account, but it can sign nothing any more.
            raise AccountGone(f"registering the account: the CA says account {url} is "
                              f"{status}", account_url=url, why=f"account {status}")
        self._account = (signer, url)  # one assignment: orders see the old account or the new
        return url

    def adopt_account(self, key: PrivateKey, url: str) -> None:
        """Sign with `key` as the account at `url`, known from an earlier run, without asking
        the CA (no newAccount). A CA that no longer accepts it refuses the first signed
        request with `AccountGone`, which the caller answers as for any refused account.
        Raises ValueError for an unusable key type."""
        self._account = (AccountSigner(key), url)

    def key_authorization(self, token: str) -> str:
        """RFC 8555 §8.1: token "." base64url(JWK thumbprint of the account key)."""
        return f"{token}.{self._account_signer().thumbprint}"

    # -- orders --------------------------------------------------------------------------------

    def new_order(self, names: list[str], *, profile: str | None = None,
                  replaces: str | None = None) -> Order:
        """Create an order. With `replaces`, a 409 alreadyReplaced (or a CA that refuses the
        field) is answered by ordering again without it (RFC 9773 §5)."""
        payload: dict[str, Any] = {"identifiers": [{"type": "dns", "value": n} for n in names]}
        if profile:
            payload["profile"] = profile
        return self._at_directory_url("newOrder", lambda url: self._new_order(url, payload,
                                                                              replaces))

    def _new_order(self, url: str, payload: dict[str, Any], replaces: str | None) -> Order:
        if replaces:
            try:
                response = self.post(url, {**payload, "replaces": replaces},
                                     context="creating the order")
                order = Order.from_json(response.headers.get("Location", ""), response.json())
                order.replaced = replaces
                return order
            except IssuanceError as error:
                if error.status != 409 and error.problem_type != ACME_ERROR + "alreadyReplaced":
                    raise
                log.info("CA says %s was already replaced; ordering without replaces", replaces)
        response = self.post(url, payload, context="creating the order")
        return Order.from_json(response.headers.get("Location", ""), response.json())

    def fetch(self, url: str, context: str = "") -> Response:
        """Unauthenticated GET of a CA resource (the renewalInfo endpoint); a problem
        document becomes the matching error."""
        response = self._request("GET", url)
        if not response.ok:
            raise self._problem(response, context)
        return response

    def get(self, url: str, context: str = "", poll: PollState | None = None
            ) -> dict[str, Any]:
        """POST-as-GET of a CA resource. With `poll`, the answer's Retry-After is kept in
        that one polling loop's state (never in the session, which other orders share)."""
        response = self.post(url, None, context=context)
        body = response.json()
        if poll is not None:
            poll.retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return body if isinstance(body, dict) else {}

    def pending_challenges(self, order: Order,
                           challenge_type: str | Callable[[str], str] = "http-01"
                           ) -> list[ChallengeTask]:
        """The challenges to answer for `order` (authorizations already valid are skipped).
        `challenge_type` is one type for every name, or a function of the name as ordered
        (a wildcard authorization is named "*.<name>", RFC 8555 §7.1.4)."""
        tasks = []
        for authz_url in order.authorizations:
            authz = self.get(authz_url, "fetching an authorization")
            name = _authz_name(authz)
            status = authz.get("status")
            if status == "valid":
                continue
            if status != "pending":
                raise self._authz_error(authz, name, None)
            wanted = challenge_type(name) if callable(challenge_type) else challenge_type
            chosen = next((c for c in authz.get("challenges", []) if c.get("type") ==
                           wanted), None)
            if chosen is None:
                offered = ", ".join(c.get("type", "?") for c in authz.get("challenges", []))
                raise OrderFailed(f"the CA offers no {wanted} challenge for {name} "
                                  f"(it offers: {offered})")
            token = str(chosen["token"])
            tasks.append(ChallengeTask(identifier=name, type=wanted, token=token,
                                       key_authorization=self.key_authorization(token),
                                       url=str(chosen["url"])))
        return tasks

    def answer(self, task: ChallengeTask) -> None:
        self.post(task.url, {}, context=f"answering the challenge for {task.identifier}")

    def wait_authorizations(self, order: Order, tasks: list[ChallengeTask],
                            deadline: float) -> None:
        """Poll the answered authorizations until all are valid; raise on the first invalid."""
        by_url = {url: None for url in order.authorizations}
        pending = {t.identifier: t for t in tasks}
        remaining = list(by_url)

        def check(poll: PollState) -> bool:
            nonlocal remaining
            still = []
            for url in remaining:
                authz = self.get(url, "checking an authorization", poll)
                status = authz.get("status")
                name = _authz_name(authz)
                if status == "valid":
                    continue
                if status in ("invalid", "deactivated", "expired", "revoked"):
                    raise self._authz_error(authz, name, pending.get(name))
                still.append(url)
            remaining = still
            return not remaining

        # The CA has just been told: no authorization is done yet, so the first look waits.
        self._poll(check, deadline, "validating the challenges", wait_first=True)

    def _authz_error(self, authz: dict[str, Any], name: str, task: ChallengeTask | None
                     ) -> IssuanceError:
        problem: dict[str, Any] | None = None
        for challenge in authz.get("challenges", []):
            if isinstance(challenge.get("error"), dict):
                # The CA's detail repeats the URL it fetched; no token goes into messages,
                # state or logs (the same "[token]" the event log shows).
                problem = json.loads(_TOKEN_IN_URL.sub(r"\1[token]",
                                                       json.dumps(challenge["error"])))
        if task is not None and task.type == "dns-01":
            tried = f" (the CA looked up TXT _acme-challenge.{name.removeprefix('*.')})"
        else:
            tried = f" (the CA fetched http://{name}{PREFIX_HTTP01}[token])" if task else ""
        error = problem_error(problem or {"type": ACME_ERROR + "unauthorized",
                                          "detail": f"authorization is {authz.get('status')}"},
                              status=None, retry_after=None, url=tried.strip(" ()") or name,
                              context=f"validating {name}")
        if not isinstance(error, ChallengeFailed | OrderFailed):
            error = ChallengeFailed(str(error), hint=error.hint, problem_type=error.problem_type,
                                    detail=error.detail)
        if task is not None and task.type == "dns-01" and isinstance(error, ChallengeFailed):
            error.hint = ("Check that every authoritative nameserver of the zone serves the "
                          "TXT record (`mamoru check-dns SITE` tries it) and that no CAA "
                          "record forbids this CA.")
        return error

    def finalize(self, order: Order, csr_der: bytes, deadline: float) -> bytes:
        """Finalize with `csr_der`, wait for the certificate, and return the PEM chain."""
        csr = b64(csr_der)
        body = self.post(order.finalize, {"csr": csr}, context="finalizing the order").json()
        state = {"body": body}

        def issued(body: dict[str, Any]) -> bool:
            status = body.get("status")
            if status == "invalid":
                raise problem_error(body.get("error") or {}, status=None, retry_after=None,
                                    url=order.url, context="the order became invalid")
            return status == "valid" and bool(body.get("certificate"))

        def ready(poll: PollState) -> bool:
            # Each answer is looked at as it comes, not after the next wait.
            state["body"] = self.get(order.url, "checking the order", poll)
            return issued(state["body"])

        if not issued(body):  # most CAs answer "processing" first: then wait, then look
            self._poll(ready, deadline, "waiting for the certificate", wait_first=True)
        cert_url = state["body"]["certificate"]
        response = self.post(cert_url, None, accept=PEM_CHAIN,
                             context="downloading the certificate")
        return response.content

    def _poll(self, done: Callable[[PollState], bool], deadline: float, what: str, *,
              wait_first: bool = False) -> None:
        """Call `done(poll)` until it is true, waiting POLL_FIRST, then twice as long each
        time up to POLL_MAX, between calls (and before the first with `wait_first`). `poll`
        belongs to this loop alone: the Retry-After of its own answers steers its waits,
        whatever other orders hear."""
        delay = POLL_FIRST
        poll = PollState()
        if wait_first and self.stop.wait(min(delay, max(deadline - time.monotonic(), 0))):
            raise Cancelled(f"stopped while {what}")
        while not done(poll):
            now = time.monotonic()
            if now >= deadline:
                raise CAUnavailable(f"timed out {what}", hint="The CA is slow; mamoru retries.")
            wait = delay
            if poll.retry_after is not None:
                ask = (poll.retry_after - datetime.now(UTC)).total_seconds()
                wait = max(wait, min(ask, 10.0))  # honour Retry-After, but keep polling bounded
            wait = min(wait, deadline - now)
            if self.stop.wait(max(wait, 0)):
                raise Cancelled(f"stopped while {what}")
            delay = min(delay * POLL_GROWTH, POLL_MAX)

    # -- revocation -------------------------------------------------------------------

    def revoke(self, cert_pem: bytes, reason: int = 0) -> None:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(cert_pem)
        der = cert.public_bytes(serialization.Encoding.DER)
        payload = {"certificate": b64(der), "reason": reason}
        self._at_directory_url("revokeCert", lambda url: self.post(
            url, payload, context="revoking the certificate"))

    def close(self) -> None:
        self.http.close()


def _is_directory(body: object) -> bool:
    """An ACME directory names at least its newNonce, newAccount and newOrder URLs."""
    return isinstance(body, dict) and all(isinstance(body.get(name), str) for name in
                                          ("newNonce", "newAccount", "newOrder"))


def _authz_name(authz: dict[str, Any]) -> str:
    """The name an authorization is for, as it was ordered: "*.<value>" for a wildcard."""
    name = str(authz.get("identifier", {}).get("value", ""))
    return f"*.{name}" if authz.get("wildcard") is True else name


def _short(error: BaseException | None) -> str:
    text = (str(error) or type(error).__name__) if error else "unknown error"
    # Socket and TLS errors can carry long reprs; keep the useful tail.
    for marker in ("[Errno", "Connection refused", "Name or service not known",
                   "Connection reset", "timed out", "certificate verify failed"):
        if marker in text:
            index = text.find(marker)
            return text[index:index + 120].rstrip(")'\"")
    return text[:200]

