"""The decoded exchange: named arrays that share a leading instance axis."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sidecar.codec.errors import DecodeError

DEFAULT_INPUT = "input"
"""Name of a single input that the request does not name (REST `instances: [values]`, `inputs: value`)."""
DEFAULT_OUTPUT = "output"
"""Name of a single unnamed output (REST one-output predictions, regression values)."""
SCORES_OUTPUT = "scores"
"""Classification scores (n, k); their labels are `Exchange.classes`."""


@dataclass(frozen=True, eq=False)  # eq=False: equality of dicts of arrays has no single truth value
class Exchange:
    """One decoded predict/classify/regress/infer exchange.

    Every array in `inputs` and `outputs` has the leading instance axis (n_instances, ...). Numbers are
    float64, int64 or bool (uint64 becomes float64, every float width becomes float64); strings are object
    arrays holding `str` for values that are valid UTF-8 and the exact `bytes` for values that are not (binary
    payloads such as PNG/JPEG images). `outputs` is empty when the exchange failed. `classes` holds
    classification labels (n, k) as str, else None. Names are in sorted order. Missing tf.Example values are
    NaN (numbers) or None (strings); see `sidecar.codec.examples`.
    """

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    n_instances: int
    method: str
    classes: np.ndarray | None = None


def instance_axis(arrays: dict[str, np.ndarray], side: str, expected: int | None = None) -> int:
    """Return the instance count all arrays share, giving 0-d arrays that axis (in place).

    A 0-d tensor (a scalar input such as a temperature) applies to every instance, so it is repeated to the
    count of the other arrays (one instance when all are 0-d). `expected` (the request's count, when checking
    outputs) must match. Arrays that disagree raise DecodeError("shape"): they would not line up.
    """
    count = expected
    for name, array in arrays.items():
        if array.ndim == 0:
            continue
        if count is None:
            count = array.shape[0]
        elif array.shape[0] != count:
            raise DecodeError("shape", f"{side} {name!r} has {array.shape[0]} instances, expected {count}")
    if count is None:
        count = 1 if arrays else 0
    for name, array in arrays.items():
        if array.ndim == 0:
            arrays[name] = np.repeat(array.reshape(1), count)
    return count


def make_exchange(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], method: str,
                  classes: np.ndarray | None = None) -> Exchange:
    """Check the instance axis of both sides and build the Exchange; zero instances is DecodeError("empty").

    Names are put in sorted order so every protocol (and every protobuf map order) gives the same order.
    """
    inputs = dict(sorted(inputs.items()))
    outputs = dict(sorted(outputs.items()))
    if not inputs:
        raise DecodeError("missing", "the request carries no inputs")
    n = instance_axis(inputs, "input")
    if n == 0:
        raise DecodeError("empty", "the request carries zero instances")
    instance_axis(outputs, "output", n)
    if classes is not None and classes.shape[0] != n:
        raise DecodeError("shape", f"{classes.shape[0]} classifications for {n} instances")
    return Exchange(inputs, outputs, n, method, classes)
