"""Clients of the pipeline used by the CLI: the gateway-like audio producer and the results tail."""
