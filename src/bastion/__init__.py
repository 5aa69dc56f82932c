"""Bastion: an MCP gateway with a complete OAuth 2.1 client built in."""

__version__ = "0.1.0"
