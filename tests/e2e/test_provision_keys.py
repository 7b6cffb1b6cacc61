"""Every key type end to end against Pebble: an RSA key is made on a thread while the CA
validates (issuance._make_key), an EC key inline; both must end up as the live key of the
certificate the CA issued."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.helpers import key_matches, provision_json, verify_chain, write_config
from tests.servers.pebble import Pebble

pytestmark = pytest.mark.e2e


def test_rsa_and_ec_keys_in_one_run(tmp_path: Path, pebble: Pebble) -> None:
    kinds = {"rsa2048": "rsa-2048", "rsa3072": "rsa-3072", "ecp384": "ec-p384"}
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        site: {"domains": [f"{site}.clinic.example"], "key": kind,
               "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}}
        for site, kind in kinds.items()})
    summary = provision_json("-c", str(config))
    assert [s["status"] for s in summary["sites"]] == ["issued"] * 3
    for site, kind in kinds.items():
        live = tmp_path / "live" / site
        leaf = verify_chain((live / "fullchain.pem").read_bytes(), pebble.root_pem(),
                            f"{site}.clinic.example")
        key_pem = (live / "privkey.pem").read_bytes()
        assert key_matches(key_pem, leaf)
        public = leaf.public_key()
        if kind.startswith("rsa-"):
            assert isinstance(public, rsa.RSAPublicKey)
            assert public.key_size == int(kind[4:])
        else:
            assert isinstance(public, ec.EllipticCurvePublicKey)
            assert public.curve.name == "secp384r1"
        assert stat.S_IMODE(os.stat(live / "privkey.pem").st_mode) == 0o600
