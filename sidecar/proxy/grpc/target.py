"""Addresses as gRPC names them; no grpcio needed (the h2 relay uses it too)."""

from __future__ import annotations


def grpc_target(address: tuple[str, int]) -> str:
    """`host:port` as gRPC wants it (`[::1]:8500` for IPv6)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
