"""Shared fixtures: see tests/support for the servers the tests start on loopback."""
