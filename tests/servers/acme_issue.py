"""A minimal reference ACME issuance with certbot's ``acme`` library, to prove a test CA works.

This is *fixture plumbing*, not mamoru's client: the smoke tests use it to show that Pebble /
acme2certifier plus a webroot-served http-01 token yield a certificate, independently of the
code under test. It writes tokens as files under ``challenge_dir``.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import time
from dataclasses import dataclass
from pathlib import Path

import josepy as jose
from acme import challenges, client, crypto_util, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


class NewOrderWithReplaces(messages.NewOrder):
    """``messages.NewOrder`` plus RFC 9773's ``replaces`` (the library has no such field)."""

    replaces: str = jose.field("replaces", omitempty=True)


def new_order(
    acme: client.ClientV2,
    csr_pem: bytes,
    *,
    profile: str | None = None,
    replaces: str | None = None,
) -> messages.OrderResource:
    """``ClientV2.new_order`` that can also send ``replaces`` (same result type)."""
    if not replaces:
        return acme.new_order(csr_pem, profile=profile)
    csr = x509.load_pem_x509_csr(csr_pem)
    dns_names, ips = crypto_util.get_identifiers_from_x509(csr.subject, csr.extensions)
    identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in dns_names]
    identifiers += [messages.Identifier(typ=messages.IDENTIFIER_IP, value=str(i)) for i in ips]
    order = NewOrderWithReplaces(identifiers=identifiers, profile=profile or "", replaces=replaces)
    response = acme._post(acme.directory["newOrder"], order)
    body = messages.Order.from_json(response.json())
    authzs = [
        acme._authzr_from_response(acme._post_as_get(url), uri=url) for url in body.authorizations
    ]
    return messages.OrderResource(
        body=body, uri=response.headers.get("Location"), authorizations=authzs, csr_pem=csr_pem
    )


def ari_cert_id(cert_pem: str | bytes) -> str:
    """RFC 9773 certificate identifier: base64url(AKI keyIdentifier) "." base64url(serial)."""
    if isinstance(cert_pem, str):
        cert_pem = cert_pem.encode()
    cert = x509.load_pem_x509_certificate(cert_pem)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    serial = cert.serial_number
    serial_der = serial.to_bytes((serial.bit_length() + 8) // 8, "big")  # DER INTEGER bytes

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    return f"{b64(aki.key_identifier)}.{b64(serial_der)}"


@dataclass
class Issued:
    fullchain_pem: str
    key_pem: bytes
    order: messages.OrderResource
    account: messages.RegistrationResource


def new_client(
    directory_url: str,
    verify: bool | str,
    *,
    email: str | None = "admin@clinic.test",
    eab: tuple[str, str] | None = None,
) -> tuple[client.ClientV2, messages.RegistrationResource]:
    """Register a fresh ES256 account and return ``(ClientV2, registration)``.

    ``verify`` is passed to requests for every call (a CA bundle path for Pebble).
    ``eab`` is ``(kid, base64url HMAC key)`` for CAs that require external account binding.
    """
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = client.ClientNetwork(
        key,
        alg=jose.ES256,
        verify_ssl=verify,  # type: ignore[arg-type]
        user_agent="mamoru-tests",
    )
    directory = client.ClientV2.get_directory(directory_url, net)
    acme = client.ClientV2(directory, net)
    binding = None
    if eab is not None:
        binding = messages.ExternalAccountBinding.from_data(
            account_public_key=key.public_key(), kid=eab[0], hmac_key=eab[1], directory=directory
        )
    regr = acme.new_account(
        messages.NewRegistration.from_data(
            email=email, terms_of_service_agreed=True, external_account_binding=binding
        )
    )
    return acme, regr


def issue_http01(
    directory_url: str,
    verify: bool | str,
    names: list[str],
    challenge_dir: str | os.PathLike[str],
    *,
    timeout: float = 30.0,
    profile: str | None = None,
    replaces: str | None = None,
    acme: tuple[client.ClientV2, messages.RegistrationResource] | None = None,
) -> Issued:
    """Issue a certificate for ``names`` answering http-01 by writing token files.

    ``challenge_dir`` is ``<webroot>/.well-known/acme-challenge`` of a server on the port the
    CA dials. Files are removed after the order is done. ``replaces`` adds RFC 9773's field
    to the new order; ``acme`` reuses a ``new_client()`` result (same account).
    """
    acme_client, regr = acme or new_client(directory_url, verify)
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    csr_pem = crypto_util.make_csr(key_pem, names)
    orderr = new_order(acme_client, csr_pem, profile=profile, replaces=replaces)
    cdir = Path(challenge_dir)
    cdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    deadline = time.monotonic() + timeout
    try:
        for authzr in orderr.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue
            challb = next(
                c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01)
            )
            response, validation = challb.response_and_validation(acme_client.net.key)
            token_file = cdir / challb.chall.encode("token")
            token_file.write_text(validation)
            token_file.chmod(0o644)
            written.append(token_file)
            acme_client.answer_challenge(challb, response)
        # Poll authorizations with a short, capped backoff (the library sleeps whole seconds).
        for authzr in orderr.authorizations:
            delay = 0.05
            while True:
                authzr, _ = acme_client.poll(authzr)
                status = authzr.body.status
                if status == messages.STATUS_VALID:
                    break
                if status == messages.STATUS_INVALID:
                    raise RuntimeError(f"authorization failed: {authzr.body.to_json()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"authorization still {status} after {timeout}s")
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        orderr = acme_client.finalize_order(
            orderr,
            dt.datetime.now() + dt.timedelta(seconds=max(1.0, deadline - time.monotonic())),
        )
    finally:
        for f in written:
            f.unlink(missing_ok=True)
    assert orderr.fullchain_pem is not None
    return Issued(orderr.fullchain_pem, key_pem, orderr, regr)
