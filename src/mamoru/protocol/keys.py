"""Private keys and certificate signing requests.

Keys are generated in memory and handed to storage as PEM bytes, which writes them 0600 from
creation. CSRs carry every name as a SAN and no OCSP must-staple (OCSP is gone, ACME-NOTES).
"""

from __future__ import annotations

import importlib
import sys
import threading

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def generate_key(kind: str) -> PrivateKey:
    """A new private key of `kind` (ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096)."""
    if kind == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[4:]))
    raise ValueError(f"unknown key type {kind!r}")


def key_kind(key: object) -> str:
    """The config name of a public or private key's type ("ec-p256", "rsa-2048", ...)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(key.curve.name, key.curve.name)
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return type(key).__name__


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("unsupported key type")
    return key


# cryptography.x509 takes a fifth of a one-certificate process's start (about 20 ms here: its
# name parser's patterns, email.utils...), and an order needs it only for the CSR, after the
# CA has validated: `load_x509_meanwhile` imports it on a helper thread while the order's
# requests wait on the CA, where the process would otherwise sit idle.
_X509 = "cryptography.x509"


def load_x509_meanwhile() -> None:
    """Start importing cryptography.x509 on a helper thread, unless it is loaded already (the
    CSR, or anything else that needs it first, simply waits for that import to finish)."""
    if _X509 not in sys.modules:
        threading.Thread(target=importlib.import_module, args=(_X509,), daemon=True,
                         name="import x509").start()


def make_csr_der(key: PrivateKey, names: list[str] | tuple[str, ...]) -> bytes:
    """A CSR for `names` (the first as CN, when it fits the 64-character CN limit)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    builder = x509.CertificateSigningRequestBuilder()
    if len(names[0]) <= 64:
        builder = builder.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                     names[0])]))
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)
