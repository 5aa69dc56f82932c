"""RFC 9207 — OAuth 2.0 Authorization Server Issuer Identification, §2.4 (the client checks
`iss` in the authorization response, against mix-up attacks).

https://www.rfc-editor.org/rfc/rfc9207#section-2.4
"""

from __future__ import annotations

from bastion.errors import IssuerResponseError

__all__ = ["check_iss"]

_HINT = "authorize again; if it keeps happening, another authorization server may be interfering"


def check_iss(received: str | None, expected_issuer: str, advertised: bool) -> None:
    """Raise IssuerResponseError when the authorization response's `iss` is present and not
    exactly `expected_issuer` (§2.4, simple string comparison), or absent although the server
    advertised `authorization_response_iss_parameter_supported` (§3)."""
    if received is None:
        if advertised:
            raise IssuerResponseError(
                f"the authorization response from {expected_issuer!r} has no `iss` although the server "
                "advertises authorization_response_iss_parameter_supported (RFC 9207); Bastion refuses it",
                hint=_HINT,
            )
        return
    if received != expected_issuer:
        raise IssuerResponseError(
            f"the authorization response names issuer {received[:200]!r}, but Bastion started the flow "
            f"with {expected_issuer!r} (RFC 9207 mix-up protection); Bastion refuses it",
            hint=_HINT,
        )
