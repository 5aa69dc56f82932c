"""RFC 7636 — Proof Key for Code Exchange (PKCE), §4.1 (code verifier) and §4.2 (S256 code
challenge). MCP requires S256; `plain` is never used.

https://www.rfc-editor.org/rfc/rfc7636#section-4
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field

__all__ = ["PKCE", "generate_pkce", "is_valid_verifier", "s256_challenge"]

_VERIFIER_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def is_valid_verifier(verifier: str) -> bool:
    """§4.1: 43 to 128 unreserved characters `[A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~"`."""
    return _VERIFIER_RE.fullmatch(verifier) is not None


def s256_challenge(verifier: str) -> str:
    """§4.2: BASE64URL-ENCODE(SHA256(ASCII(code_verifier))), without padding."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass(frozen=True)
class PKCE:
    """A code verifier and its challenge. `repr()` hides the verifier."""

    verifier: str = field(repr=False)
    challenge: str
    method: str = "S256"


def generate_pkce(entropy: bytes | None = None) -> PKCE:
    """A fresh verifier (64 random bytes, 86 characters) and its S256 challenge.

    `entropy` (32 to 96 bytes) replaces the random bytes, for tests: the verifier is then its
    base64url encoding without padding (as in RFC 7636 Appendix B). Raises ValueError for a
    length that would give a verifier outside 43–128 characters.
    """
    if entropy is None:
        verifier = secrets.token_urlsafe(64)
    else:
        if not 32 <= len(entropy) <= 96:
            raise ValueError(f"PKCE entropy must be 32 to 96 bytes, got {len(entropy)}")
        verifier = _b64url(entropy)
    return PKCE(verifier=verifier, challenge=s256_challenge(verifier))
