"""CPU per signed ACME request: mamoru's AccountSigner.sign against josepy's JWS.sign (what
mamoru used before), P-256 account key, the same header and payload.

    .venv/bin/python bench/jws_sign.py [--n 5000]
"""

from __future__ import annotations

import argparse
import json
import time

from acme.jws import JWS
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from mamoru.protocol.jws import AccountSigner, b64decode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    n = parser.parse_args().n
    key = ec.generate_private_key(ec.SECP256R1())
    signer, jwk = AccountSigner(key), JWKEC(key=key)
    url, nonce, kid = "https://ca.test/acme/order/1", "bm9uY2UtMQ", "https://ca.test/acct/1"
    payload = {"identifiers": [{"type": "dns", "value": "clinic.example"}]}

    def josepy() -> bytes:
        body = json.dumps(payload, separators=(",", ":")).encode()
        jws = JWS.sign(body, key=jwk, alg=ES256, nonce=b64decode(nonce), url=url, kid=kid)
        return json.dumps(jws.to_partial_json(flat=True), separators=(",", ":")).encode()

    for label, sign in (("josepy JWS.sign", josepy),
                        ("AccountSigner.sign", lambda: signer.sign(payload, url=url,
                                                                     nonce=nonce, kid=kid))):
        started = time.process_time()
        for _ in range(n):
            sign()
        print(f"{label:20} {(time.process_time() - started) / n * 1e6:7.1f} µs CPU per request")


if __name__ == "__main__":
    main()
