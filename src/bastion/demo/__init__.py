"""`bastion demo`: a narrated run of the whole flow against an OAuth-protected MCP server and
its authorization server, both started on loopback in this process with the `mcp` SDK.

What the SDK's authorization server (mcp 2.3.0, `mcp.server.auth`) needed here:

- Its metadata lists `client_secret_basic`, but its token and revocation endpoints read
  `client_id` from the form body only (and revocation requires a `client_secret` form field),
  so a client using HTTP Basic alone, as RFC 6749 §2.3.1 allows, gets 401 "Missing client_id";
  a public client (`none`) cannot revoke (400, `client_secret` missing). The demo advertises
  `client_secret_post` only, which both endpoints accept.
- The metadata does not say `authorization_response_iss_parameter_supported`; the demo's
  authorization step sends `iss` (RFC 9207) and advertises it.
- The issuer must be given as a string to `AuthSettings` (which preserves the empty path);
  a separately built `AnyHttpUrl("http://127.0.0.1:P")` gains a trailing slash and would no
  longer equal the issuer exactly.
"""

from bastion.demo.walkthrough import DemoError, run_demo

__all__ = ["DemoError", "run_demo"]
