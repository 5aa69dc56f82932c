"""RFC 6750 §3 WWW-Authenticate parsing and formatting."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.oauth.rfc6750 import (
    Challenge,
    bearer_challenge,
    format_challenge,
    parse_www_authenticate,
    parse_www_authenticate_headers,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(
            'Bearer realm="example"',
            [Challenge("Bearer", (("realm", "example"),))],
            id="rfc6750-3-no-token",
        ),
        pytest.param(
            'Bearer realm="example", error="invalid_token", error_description="The access token expired"',
            [
                Challenge(
                    "Bearer",
                    (
                        ("realm", "example"),
                        ("error", "invalid_token"),
                        ("error_description", "The access token expired"),
                    ),
                )
            ],
            id="rfc6750-3-expired-token",
        ),
        pytest.param(
            'Bearer resource_metadata="https://resource.example.com/.well-known/oauth-protected-resource"',
            [
                Challenge(
                    "Bearer",
                    (("resource_metadata", "https://resource.example.com/.well-known/oauth-protected-resource"),),
                )
            ],
            id="rfc9728-5.1",
        ),
        pytest.param(
            'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"',
            [
                Challenge("Newauth", (("realm", "apps"), ("type", "1"), ("title", 'Login to "apps"'))),
                Challenge("Basic", (("realm", "simple"),)),
            ],
            id="rfc9110-11.6.1-two-challenges",
        ),
    ],
)
def test_rfc_examples_parse(header: str, expected: list[Challenge]) -> None:
    """RFC 6750 §3, RFC 9728 §5.1 and RFC 9110 §11.6.1 examples."""
    assert parse_www_authenticate(header) == expected


def test_parameter_names_are_lowercased_and_scheme_kept() -> None:
    [challenge] = parse_www_authenticate('BEARER Realm="x", ERROR=invalid_token')
    assert challenge.scheme == "BEARER"
    assert challenge.params == (("realm", "x"), ("error", "invalid_token"))
    assert challenge.is_bearer
    assert challenge.param("Error") == "invalid_token"


def test_quoted_string_may_contain_commas_and_escaped_quotes() -> None:
    [challenge] = parse_www_authenticate(r'Bearer error_description="a, b \"c\", d\\e", scope="x y"')
    assert challenge.error_description == 'a, b "c", d\\e'
    assert challenge.scope == ["x", "y"]


def test_bearer_may_come_after_other_challenges() -> None:
    challenges = parse_www_authenticate('Basic realm="a", Bearer scope="read", DPoP algs="ES256"')
    assert [c.scheme for c in challenges] == ["Basic", "Bearer", "DPoP"]
    bearer = bearer_challenge(challenges)
    assert bearer is not None and bearer.scope == ["read"]


def test_unquoted_url_value_is_read_to_the_comma() -> None:
    [challenge] = parse_www_authenticate("Bearer resource_metadata=https://x.example/.well-known/a?b=c, scope=read")
    assert challenge.resource_metadata == "https://x.example/.well-known/a?b=c"
    assert challenge.scope == ["read"]


def test_token68_is_read_after_scheme() -> None:
    assert parse_www_authenticate("Negotiate YIIBhwYGKwYBBQUCoII=, Basic") == [
        Challenge("Negotiate", token68="YIIBhwYGKwYBBQUCoII="),
        Challenge("Basic"),
    ]


def test_empty_list_elements_and_whitespace_are_ignored() -> None:
    assert parse_www_authenticate(' ,, Bearer  ,\t realm = "x" ,, ') == [Challenge("Bearer", (("realm", "x"),))]


def test_missing_comma_between_params_is_tolerated() -> None:
    [challenge] = parse_www_authenticate('Bearer error="invalid_token" error_description="gone"')
    assert challenge.error == "invalid_token"
    assert challenge.error_description == "gone"


def test_bare_scheme_has_no_params() -> None:
    [challenge] = parse_www_authenticate("Bearer")
    assert challenge == Challenge("Bearer")
    assert challenge.scope == [] and challenge.resource_metadata is None and challenge.error is None


def test_repeated_param_returns_first() -> None:
    [challenge] = parse_www_authenticate('Bearer scope="a", scope="b"')
    assert challenge.param("scope") == "a"


@pytest.mark.parametrize("garbage", ["", "   ", ",,,", '"', "=", '="x", ==', "\x00\x01", '"unterminated, Bearer'])
def test_garbage_yields_no_challenge(garbage: str) -> None:
    assert parse_www_authenticate(garbage) == []


def test_params_before_any_scheme_are_skipped() -> None:
    assert parse_www_authenticate('realm="x, y", Bearer scope=a') == [Challenge("Bearer", (("scope", "a"),))]


def test_unterminated_quoted_string_runs_to_end() -> None:
    [challenge] = parse_www_authenticate('Bearer error_description="oops')
    assert challenge.error_description == "oops"


def test_several_header_lines_are_concatenated() -> None:
    challenges = parse_www_authenticate_headers(['Basic realm="a"', 'Bearer scope="s"'])
    assert [c.scheme for c in challenges] == ["Basic", "Bearer"]


def test_bearer_challenge_is_none_without_bearer() -> None:
    assert bearer_challenge(parse_www_authenticate('Basic realm="a"')) is None


def test_format_quotes_every_value() -> None:
    challenge = Challenge.of("Bearer", error="insufficient_scope", scope="a b", error_description=None)
    assert format_challenge(challenge) == 'Bearer error="insufficient_scope", scope="a b"'


def test_format_escapes_quotes_and_backslashes() -> None:
    assert format_challenge(Challenge("Bearer", (("d", 'a"b\\c'),))) == r'Bearer d="a\"b\\c"'


@pytest.mark.parametrize(
    "challenge",
    [
        Challenge("Bea rer"),
        Challenge("Bearer", (("bad name", "x"),)),
        Challenge("Bearer", (("x", "line\r\nSet-Cookie: a=b"),)),
        Challenge("Basic", token68="not token68"),
    ],
)
def test_format_refuses_what_cannot_be_written(challenge: Challenge) -> None:
    with pytest.raises(ValueError):
        format_challenge(challenge)


_TCHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
_tokens = st.text(alphabet=_TCHARS, min_size=1, max_size=12)
_names = st.text(alphabet=string.ascii_lowercase + string.digits + "!#$%&'*+-.^_`|~", min_size=1, max_size=12)
_values = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters=[chr(0x7F)]).filter(
        lambda c: c == "\t" or ord(c) >= 0x20
    ),
    max_size=30,
)
_token68s = st.builds(
    lambda body, pad: body + "=" * pad,
    st.text(alphabet=string.ascii_letters + string.digits + "-._~+/", min_size=1, max_size=20),
    st.integers(0, 2),
)
_challenges = st.one_of(
    st.builds(Challenge, _tokens, st.lists(st.tuples(_names, _values), max_size=5).map(tuple)),
    st.builds(lambda scheme, t68: Challenge(scheme, token68=t68), _tokens, _token68s),
)


@given(_challenges)
def test_format_then_parse_round_trips(challenge: Challenge) -> None:
    assert parse_www_authenticate(format_challenge(challenge)) == [challenge]


@given(st.lists(_challenges, min_size=1, max_size=4))
def test_several_formatted_challenges_round_trip(challenges: list[Challenge]) -> None:
    header = ", ".join(format_challenge(c) for c in challenges)
    assert parse_www_authenticate(header) == challenges


@given(st.text())
def test_parser_never_raises_on_arbitrary_text(text: str) -> None:
    for challenge in parse_www_authenticate(text):
        assert challenge.scheme


@given(st.lists(st.sampled_from(['"', "\\", ",", "=", " ", "Bearer", "a", "\t", "=="]), max_size=30).map("".join))
def test_parser_never_raises_on_header_like_text(text: str) -> None:
    parse_www_authenticate(text)
