"""JSON Web Signatures for ACME requests (RFC 8555 §6.2), signed with `cryptography`; the
External Account Binding made by certbot's `acme.jws` on `josepy`'s keys.

Every POST is a flattened JWS whose protected header carries `alg`, `nonce`, `url` and either
`kid` (the account URL) or `jwk` (newAccount, and revocation by certificate key). The account
key's thumbprint (RFC 7638) makes the http-01 key authorization (RFC 8555 §8.1); External
Account Binding (§7.3.4) is an HS256 JWS over the account's JWK.

Every request is signed, so that path is this module's own: the public JWK, its thumbprint and
the signature come straight from `cryptography` (tests check each against josepy, an
independent implementation, and have josepy verify the JWS). `acme.jws` and `josepy` are
imported only for External Account Binding, once per account registration: loading them costs
every other process 0.8 MB and 17 ms (docs/PERFORMANCE.md). Their `acme.client` and
`acme.messages` would pull in `requests` and pyOpenSSL, about 8 MB, for an HTTP layer mamoru
replaces anyway (`transport.py`: a thread-safe nonce pool, Retry-After, `replaces`, ARI).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from mamoru.protocol.keys import PrivateKey

# RFC 7518 §3.4 and §6.2.1.1: per account key curve, the JWS algorithm, its hash, the JWK
# curve name and the size of each coordinate (and of r and s in a signature), in bytes.
_EC: dict[str, tuple[str, hashes.HashAlgorithm, str, int]] = {
    "secp256r1": ("ES256", hashes.SHA256(), "P-256", 32),
    "secp384r1": ("ES384", hashes.SHA384(), "P-384", 48),
}
_FROM_URLSAFE = str.maketrans("-_", "+/")
# One compact encoder for every request (json.dumps builds a new encoder at each call).
_compact = json.JSONEncoder(separators=(",", ":")).encode
# A nonce as CAs send it: base64url without padding (RFC 8555 §6.5), used as it is; anything
# else is decoded and encoded again (which refuses what is not base64 at all).
_PLAIN_NONCE = re.compile(r"[A-Za-z0-9_-]+")


def b64(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Decode base64url (or standard base64), with or without padding. Raises ValueError for
    any other character (a mistyped key must not be silently shortened)."""
    text = text.strip().rstrip("=").translate(_FROM_URLSAFE)
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 thumbprint (base64url SHA-256) of a public JWK given as JSON members: the
    required members only, in lexical order, without white space (§3.2, §3.3)."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "oct": ("k", "kty")}
    members = required.get(jwk.get("kty", ""))
    if members is None:
        raise ValueError(f"unsupported JWK key type {jwk.get('kty')!r}")
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"),
                           sort_keys=True)
    return b64(hashlib.sha256(canonical.encode()).digest())


def _int(value: int, size: int | None = None) -> str:
    """An integer as a JWK member: big-endian base64url, `size` bytes (EC coordinates keep
    their leading zeros, RFC 7518 §6.2.1.2) or as few as it takes (RSA, §6.3.1)."""
    return b64(value.to_bytes(size or max(1, (value.bit_length() + 7) // 8), "big"))


class AccountSigner:
    """Signs ACME requests with an account key (EC P-256/P-384 or RSA). Thread-safe (the key
    and the JWK are never changed). Raises ValueError for any other kind of key."""

    def __init__(self, key: PrivateKey) -> None:
        self.key = key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if key.curve.name not in _EC:
                raise ValueError(f"unsupported account key curve {key.curve.name}")
            self.alg, self._hash, crv, self._size = _EC[key.curve.name]
            point = key.public_key().public_numbers()
            self.jwk: dict[str, str] = {"crv": crv, "kty": "EC", "x": _int(point.x, self._size),
                                        "y": _int(point.y, self._size)}
        elif isinstance(key, rsa.RSAPrivateKey):
            self.alg, self._hash, self._size = "RS256", hashes.SHA256(), 0
            public = key.public_key().public_numbers()
            self.jwk = {"e": _int(public.e), "kty": "RSA", "n": _int(public.n)}
        else:
            raise ValueError(f"unsupported account key type {type(key).__name__}")
        self.thumbprint = thumbprint(self.jwk)

    def sign(self, payload: dict[str, Any] | None, *, url: str, nonce: str,
             kid: str | None) -> bytes:
        """The request body: a flattened JWS of `payload` (None = POST-as-GET, RFC 8555 §6.3,
        an empty payload), with `kid` in the header, or the public key when `kid` is None.
        The same flattened JWS josepy makes (tests have josepy parse and verify it), at a
        third of its CPU, which matters with 1,000 sites in one provision."""
        body = b"" if payload is None else _compact(payload).encode()
        if not _PLAIN_NONCE.fullmatch(nonce):
            nonce = b64(b64decode(nonce))
        header: dict[str, Any] = {"alg": self.alg, "nonce": nonce, "url": url}
        if kid is None:
            header["jwk"] = self.jwk
        else:
            header["kid"] = kid
        protected = b64(_compact(header).encode())
        encoded = b64(body)
        signature = b64(self._signature(f"{protected}.{encoded}".encode()))
        # Three base64url strings: nothing in them needs escaping in JSON.
        return (f'{{"protected":"{protected}","payload":"{encoded}",'
                f'"signature":"{signature}"}}').encode("ascii")

    def _signature(self, signing_input: bytes) -> bytes:
        key = self.key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(self._hash)))
            return r.to_bytes(self._size, "big") + s.to_bytes(self._size, "big")  # §3.4
        return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())

    def external_binding(self, kid: str, hmac_key: str, url: str) -> dict[str, Any]:
        """The `externalAccountBinding` member of a newAccount payload (RFC 8555 §7.3.4):
        this account's JWK signed with the CA-issued HMAC key (base64url), by `acme.jws`.
        Raises ValueError when `hmac_key` is not base64url."""
        from acme.jws import JWS  # only here: once per registration with EAB
        from josepy.jwa import HS256
        from josepy.jwk import JWKOct

        public = json.dumps(self.jwk, separators=(",", ":")).encode()
        binding = JWS.sign(public, key=JWKOct(key=b64decode(hmac_key)), alg=HS256, nonce=None,
                           url=url, kid=kid)
        result: dict[str, Any] = binding.to_partial_json(flat=True)
        return result
