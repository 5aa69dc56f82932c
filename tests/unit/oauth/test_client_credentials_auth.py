"""Client authentication for the client credentials grant (RFC 6749 §2.3.1, §4.4; RFC 7523 §2.2, §3)."""

from __future__ import annotations

import base64

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bastion.config.catalog import ClientCredentialsSpec
from bastion.errors import RegistrationError
from bastion.oauth.client_credentials import (
    ASSERTION_LIFETIME,
    ASSERTION_TYPE,
    ClientCredentials,
    authentication,
    token_form,
)

ISSUER = "https://as.example.com"
NOW = 1_800_000_000.0


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _credentials(method: str, secret: str, alg: str = "RS256") -> ClientCredentials:
    spec = ClientCredentialsSpec.model_validate(
        {"client_id": "svc client", "token_endpoint_auth_method": method, "signing_alg": alg}
    )
    return ClientCredentials(server_url="https://mcp.example.com/mcp", spec=spec, secret=secret)


def test_client_secret_basic_is_an_authorization_header_with_encoded_parts() -> None:
    form, headers = authentication(_credentials("client_secret_basic", "s3cr:et"), ISSUER, now=NOW)
    assert form == {}
    assert base64.b64decode(headers["Authorization"].removeprefix("Basic ")) == b"svc+client:s3cr%3Aet"


def test_client_secret_post_puts_both_in_the_form() -> None:
    form, headers = authentication(_credentials("client_secret_post", "s3cret"), ISSUER, now=NOW)
    assert form == {"client_id": "svc client", "client_secret": "s3cret"} and headers == {}


@pytest.mark.parametrize(
    ("alg", "key"),
    [("ES256", ec.generate_private_key(ec.SECP256R1())), ("RS256", rsa.generate_private_key(65537, 2048))],
)
def test_private_key_jwt_assertion_claims(alg: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    credentials = _credentials("private_key_jwt", _pem(key), alg)
    form, headers = authentication(credentials, ISSUER, now=NOW)
    assert headers == {}
    assert form["client_assertion_type"] == ASSERTION_TYPE and form["client_id"] == "svc client"
    assert jwt.get_unverified_header(form["client_assertion"])["alg"] == alg
    claims = jwt.decode(
        form["client_assertion"],
        key.public_key(),
        algorithms=[alg],
        audience=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["iss"] == claims["sub"] == "svc client"
    assert claims["iat"] == int(NOW) and claims["exp"] == int(NOW) + ASSERTION_LIFETIME
    again, _ = authentication(credentials, ISSUER, now=NOW)
    assert jwt.decode(again["client_assertion"], options={"verify_signature": False})["jti"] != claims["jti"]


def test_a_key_that_is_not_a_key_is_refused_without_showing_it() -> None:
    with pytest.raises(RegistrationError) as caught:
        authentication(_credentials("private_key_jwt", "-----BEGIN PRIVATE KEY-----", "ES256"), ISSUER, now=NOW)
    assert "BEGIN" not in str(caught.value) and "ES256" in str(caught.value)


def test_token_form_omits_what_is_unknown() -> None:
    assert token_form([], None) == {"grant_type": "client_credentials"}
    assert token_form(["a", "b"], "https://mcp.example.com/mcp") == {
        "grant_type": "client_credentials",
        "scope": "a b",
        "resource": "https://mcp.example.com/mcp",
    }
