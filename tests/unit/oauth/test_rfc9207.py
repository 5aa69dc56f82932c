"""RFC 9207 authorization server issuer identification."""

from __future__ import annotations

import pytest

from bastion.errors import IssuerResponseError
from bastion.oauth.rfc9207 import check_iss

ISSUER = "https://as.example/tenant"


@pytest.mark.parametrize(("received", "advertised"), [(ISSUER, True), (ISSUER, False), (None, False)])
def test_matching_or_absent_unadvertised_iss_is_accepted(received: str | None, advertised: bool) -> None:
    """RFC 9207 §2.4."""
    check_iss(received, ISSUER, advertised)


@pytest.mark.parametrize("received", ["https://evil.example", ISSUER + "/", "https://AS.example/tenant", ""])
def test_different_iss_is_refused(received: str) -> None:
    """RFC 9207 §2.4: simple string comparison."""
    with pytest.raises(IssuerResponseError) as info:
        check_iss(received, ISSUER, advertised=False)
    assert ISSUER in str(info.value)


def test_missing_iss_is_refused_when_advertised() -> None:
    """RFC 9207 §3: a server that advertises it always sends it."""
    with pytest.raises(IssuerResponseError, match="no `iss`"):
        check_iss(None, ISSUER, advertised=True)
