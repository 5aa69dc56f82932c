"""RFC 6750 §2.1: an access token is a `b64token`, since it goes into `Authorization: Bearer`.
A token endpoint's token of any other shape is refused in the response parsing, before it can
reach a header, the store or a traceback; the error never quotes it."""

from __future__ import annotations

import json
import traceback

import pytest

from bastion.errors import TokenError
from bastion.oauth.rfc6749 import parse_token_response


def parse(access_token: object) -> object:
    body = json.dumps({"access_token": access_token, "token_type": "Bearer", "expires_in": 60}).encode()
    return parse_token_response(
        200,
        body,
        now=0.0,
        issuer="https://as.example",
        token_endpoint="https://as.example/token",
        revocation_endpoint=None,
        resource=None,
        client_id="c",
        requested_scopes=[],
    )


@pytest.mark.parametrize(
    "token",
    [
        "tok-SECRET\r\nX-Injected: yes",
        "tok SECRET",
        "tok\x00SECRET",
        "tokSECRET\u00e9",
        "=tokSECRET",
        "tok=SECRET",
        'tok"SECRET',
    ],
)
def test_an_access_token_that_is_not_a_b64token_is_refused_without_quoting_it(token: str) -> None:
    with pytest.raises(TokenError, match="b64token") as caught:
        parse(token)
    shown = str(caught.value) + "".join(traceback.format_exception(caught.value))
    assert "SECRET" not in shown and "tok" not in str(caught.value).replace("token", "")


@pytest.mark.parametrize(
    "token",
    [
        "mF_9.B5f-4.1JqM",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
        "abc+/def==",
        "a~b",
        "gho_16C7e42F292c6912E7710c838347Ae178B4a",
    ],
)
def test_b64tokens_are_accepted(token: str) -> None:
    assert parse(token).access_token == token  # type: ignore[attr-defined]
