"""What about the machine shapes latency at low concurrency, printed next to every latency benchmark.

On a KVM guest the `haltpoll` cpuidle driver decides what an idle vCPU does: poll for up to
`guest_halt_poll_ns` before halting (kernel default 200000), or halt at once (0). A halted vCPU costs a VM exit and
entry to wake, tens of microseconds, and a proxied request at concurrency 1 wakes one several times. Measured with
`bench_rest.py` on a 2-vCPU KVM guest: with 0, direct calls took 59 us p50, nginx's proxy added 21 us and the
sidecar 73 us; with 200000, direct took 15 us, nginx added 16 us and the sidecar 27 us. A latency figure means
little without this line.
"""

from __future__ import annotations

from pathlib import Path

_CPUIDLE = Path("/sys/devices/system/cpu/cpuidle/current_driver")
_HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def idle_note() -> str:
    """One line naming the cpuidle driver and, under haltpoll, its polling time."""
    try:
        driver = _CPUIDLE.read_text().strip()
    except OSError:
        return "cpuidle driver: unknown"
    if driver != "haltpoll":
        return f"cpuidle driver: {driver}"
    try:
        poll_ns = int(_HALT_POLL.read_text().strip())
    except (OSError, ValueError):
        return "cpuidle driver: haltpoll (polling time unknown)"
    if poll_ns == 0:
        return "cpuidle driver: haltpoll with guest_halt_poll_ns=0 (idle vCPUs halt at once; each wake is a VM exit)"
    return f"cpuidle driver: haltpoll with guest_halt_poll_ns={poll_ns} (idle vCPUs poll before halting)"
