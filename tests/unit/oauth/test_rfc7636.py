"""RFC 7636 PKCE."""

from __future__ import annotations

import pytest

from bastion.oauth.rfc7636 import PKCE, generate_pkce, is_valid_verifier, s256_challenge

# RFC 7636 Appendix B.
APPENDIX_B_OCTETS = bytes(
    [116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186]
    + [22, 212, 37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121]
)
APPENDIX_B_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
APPENDIX_B_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_s256_challenge_matches_appendix_b() -> None:
    """RFC 7636 Appendix B."""
    assert s256_challenge(APPENDIX_B_VERIFIER) == APPENDIX_B_CHALLENGE


def test_entropy_gives_appendix_b_verifier_and_challenge() -> None:
    """RFC 7636 Appendix B: the verifier is the base64url encoding of the 32 octets."""
    pkce = generate_pkce(APPENDIX_B_OCTETS)
    assert pkce == PKCE(APPENDIX_B_VERIFIER, APPENDIX_B_CHALLENGE, "S256")


def test_generated_verifier_is_valid_and_fresh() -> None:
    """§4.1: 43–128 unreserved characters, high entropy."""
    first, second = generate_pkce(), generate_pkce()
    assert is_valid_verifier(first.verifier)
    assert first.verifier != second.verifier
    assert first.challenge == s256_challenge(first.verifier)
    assert first.method == "S256"


@pytest.mark.parametrize("size", [31, 97, 0])
def test_entropy_of_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(ValueError):
        generate_pkce(bytes(size))


@pytest.mark.parametrize(("size", "length"), [(32, 43), (96, 128)])
def test_entropy_bounds_give_43_and_128_characters(size: int, length: int) -> None:
    assert len(generate_pkce(bytes(size)).verifier) == length


def test_repr_hides_verifier() -> None:
    pkce = generate_pkce(APPENDIX_B_OCTETS)
    assert APPENDIX_B_VERIFIER not in repr(pkce)
    assert APPENDIX_B_CHALLENGE in repr(pkce)


@pytest.mark.parametrize(
    ("verifier", "valid"),
    [("a" * 43, True), ("a" * 128, True), ("a" * 42, False), ("a" * 129, False), ("a" * 42 + "+", False)],
)
def test_verifier_validity(verifier: str, valid: bool) -> None:
    assert is_valid_verifier(verifier) is valid
