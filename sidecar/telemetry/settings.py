"""Settings of the admin listener, metrics and tracing."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.options import option, parse_duration, parse_hostport, parse_int, parse_optional_str


@dataclass(frozen=True)
class TelemetrySettings:
    listen_admin: tuple[str, int] | None = option(
        ("127.0.0.1", 8508), "admin listener (/metrics, /healthz, /readyz, /v1/monitor) HOST:PORT, or off; loopback "
        "unless set (deployments set 0.0.0.0:8508 for Prometheus)", parse_hostport(allow_off=True))
    model_label_cap: int = option(100, "distinct model label values before further models fold into '__other__'",
                                  parse_int(1, 100_000))
    admin_token: str | None = option(None, "bearer token the admin listener requires on every route but /healthz "
                                     "and /readyz; off: routes are open and the changing ones (DELETE "
                                     "/v1/monitor/{model}/reference) are refused", parse_optional_str, secret=True)
    readiness_interval: float = option(2.0, "seconds between upstream readiness probes", parse_duration(0.05))
