"""Settings of the explain endpoint: which models the sidecar explains itself, and the limits of doing so."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.options import (
    option,
    parse_bool,
    parse_choice,
    parse_duration,
    parse_float,
    parse_int,
    parse_str_list,
)


@dataclass(frozen=True)
class ExplainSettings:
    explain_enabled: bool = option(False, "answer `:explain` on the REST port for every model (KernelSHAP over the "
                                   "model's reference, needs the `explain` extra); off: `:explain` is forwarded",
                                   parse_bool)
    explain_models: tuple[str, ...] = option((), "models answered by the sidecar's `:explain` even when "
                                             "explain_enabled is off (comma-separated)", parse_str_list)
    explain_background: int = option(50, "reference rows the attributions are measured against",
                                     parse_int(1, 10_000))
    explain_samples: int = option(256, "coalitions KernelSHAP evaluates per instance (all of them when the "
                                  "features allow fewer)", parse_int(4, 100_000))
    explain_max_instances: int = option(16, "instances one explain request may ask for (400 beyond)",
                                        parse_int(1, 10_000))
    explain_max_model_calls: int = option(64, "predict calls to the model one explanation may make (422 beyond)",
                                          parse_int(1, 100_000))
    explain_batch_rows: int = option(64, "rows per predict call an explanation makes (short calls keep clients' "
                                     "predictions from queueing long behind them at the model server)",
                                     parse_int(1, 1_000_000))
    explain_model_share: float = option(1.0, "most of the time an explanation keeps the model server busy with its "
                                        "predict calls (it waits between them; below 1 leaves gaps for clients' "
                                        "predictions on a model server that answers one call at a time)",
                                        parse_float(0.01, 1.0))
    explain_concurrency: int = option(1, "explanations computed at once (each in its own process, with its own "
                                      "connection to the model server)", parse_int(1, 64))
    explain_priority: str = option("idle", "CPU priority of the explainer processes: idle (Linux SCHED_IDLE: only CPU "
                                   "the proxy leaves), low (nice 10) or normal", parse_choice("idle", "low", "normal"))
    explain_queue: int = option(8, "explanations waiting beyond those computed (503 beyond)", parse_int(0, 10_000))
    explain_timeout: float = option(60.0, "longest one explanation may take (504 beyond)", parse_duration(0.1))

    def enabled_for(self, model: str) -> bool:
        return self.explain_enabled or model in self.explain_models

    @property
    def any_enabled(self) -> bool:
        return self.explain_enabled or bool(self.explain_models)
