"""JSON Web Signatures for ACME requests (RFC 8555 §6.2), made by certbot's `acme.jws` on
`josepy`'s keys.

Every POST is a flattened JWS whose protected header carries `alg`, `nonce`, `url` and either
`kid` (the account URL) or `jwk` (newAccount, and revocation by certificate key). The account
key's thumbprint (RFC 7638) makes the http-01 key authorization (RFC 8555 §8.1); External
Account Binding (§7.3.4) is an HS256 JWS over the account's JWK.

Only `acme.jws` is imported from the `acme` package: its `acme.client`/`acme.messages` pull in
`requests` and pyOpenSSL, about 8 MB and 0.08 s per process (docs/PERFORMANCE.md), for an
HTTP layer mamoru replaces anyway (`transport.py`: a thread-safe nonce pool, Retry-After,
`replaces`, ARI).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from acme.jws import JWS
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from josepy.jwa import ES256, ES384, HS256, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA, JWKOct

from mamoru.protocol.keys import PrivateKey

# RFC 7518 §3.4: the JWS algorithm per account key curve.
_EC_ALGORITHMS: dict[str, JWASignature] = {"secp256r1": ES256, "secp384r1": ES384}
_FROM_URLSAFE = str.maketrans("-_", "+/")
# The hash and the size of r and s (bytes) per curve, for a JWS signature (RFC 7518 §3.4).
_EC_SIGNING: dict[str, tuple[hashes.HashAlgorithm, int]] = {
    "secp256r1": (hashes.SHA256(), 32), "secp384r1": (hashes.SHA384(), 48)}


def b64(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Decode base64url (or standard base64), with or without padding. Raises ValueError for
    any other character (a mistyped key must not be silently shortened)."""
    text = text.strip().rstrip("=").translate(_FROM_URLSAFE)
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 thumbprint (base64url SHA-256) of a public JWK given as JSON members."""
    key = JWK.from_json(jwk)
    assert isinstance(key, JWK)
    return b64(key.thumbprint())


class AccountSigner:
    """Signs ACME requests with an account key (EC P-256/P-384 or RSA). Thread-safe (keys and
    josepy objects are immutable). Raises ValueError for any other kind of key."""

    def __init__(self, key: PrivateKey) -> None:
        self.key = key
        self._jwk: JWK
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if key.curve.name not in _EC_ALGORITHMS:
                raise ValueError(f"unsupported account key curve {key.curve.name}")
            self.alg = _EC_ALGORITHMS[key.curve.name]
            self._jwk = JWKEC(key=key)
        elif isinstance(key, rsa.RSAPrivateKey):
            self.alg = RS256
            self._jwk = JWKRSA(key=key)
        else:
            raise ValueError(f"unsupported account key type {type(key).__name__}")
        self.jwk: dict[str, str] = self._jwk.public_key().to_partial_json()
        self.thumbprint = b64(self._jwk.thumbprint())

    def sign(self, payload: dict[str, Any] | None, *, url: str, nonce: str,
             kid: str | None) -> bytes:
        """The request body: a flattened JWS of `payload` (None = POST-as-GET, RFC 8555 §6.3,
        an empty payload), with `kid` in the header, or the public key when `kid` is None.

        Made here with `cryptography` rather than by josepy's JWS objects: every ACME
        request is signed, and josepy's (immutable maps, JSON (de)serialization of its own
        header) cost more CPU than the signature itself, which matters with 1,000 sites in
        one provision. The result is the same flattened JWS (tests compare it with josepy's
        and verify it with josepy)."""
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        header: dict[str, Any] = {"alg": self.alg.name, "nonce": b64(b64decode(nonce)),
                                  "url": url}
        if kid is None:
            header["jwk"] = self.jwk
        else:
            header["kid"] = kid
        protected = b64(json.dumps(header, separators=(",", ":")).encode())
        encoded = b64(body)
        return json.dumps({"protected": protected, "payload": encoded,
                           "signature": b64(self._signature(f"{protected}.{encoded}".encode()))},
                          separators=(",", ":")).encode()

    def _signature(self, signing_input: bytes) -> bytes:
        key = self.key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            algorithm, size = _EC_SIGNING[key.curve.name]
            r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(algorithm)))
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")  # RFC 7518 §3.4
        return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())

    def external_binding(self, kid: str, hmac_key: str, url: str) -> dict[str, Any]:
        """The `externalAccountBinding` member of a newAccount payload (RFC 8555 §7.3.4):
        this account's JWK signed with the CA-issued HMAC key (base64url). Raises ValueError
        when `hmac_key` is not base64url."""
        public = json.dumps(self.jwk, separators=(",", ":")).encode()
        binding = JWS.sign(public, key=JWKOct(key=b64decode(hmac_key)), alg=HS256, nonce=None,
                           url=url, kid=kid)
        result: dict[str, Any] = binding.to_partial_json(flat=True)
        return result
