"""The one exception the codec raises for bytes it cannot turn into arrays, with a bounded reason label."""

from __future__ import annotations

REASONS: frozenset[str] = frozenset({"gzip", "json", "protobuf", "shape", "dtype", "missing", "unsupported", "empty",
                                     "truncated"})
"""Values of `DecodeError.reason`, the `reason` label of `sidecar_decode_errors_total{model,protocol,reason}`:

- gzip: the body is declared or framed as compressed but does not decompress (or decompresses past the cap).
- json: not JSON, or JSON of the wrong structure (top level not an object, a list where an object belongs,
  bad base64 in a `{"b64": ...}` value, trailing bytes that are not a binary-data extension).
- protobuf: the bytes do not parse as the expected protobuf message.
- shape: ragged nesting, element counts that do not fill the declared shape, instance counts that disagree.
- dtype: an unknown or invalid data type, or values that do not fit the declared or inferred type.
- missing: a required key or field is absent (no `instances`/`inputs`, no `results`, a tensor without data).
- unsupported: well-formed but outside what the codec decodes (complex tensors, MultiInference, an unknown
  route, a content encoding other than gzip).
- empty: no bytes at all, or zero instances.
- truncated: the capture holds only part of a streamed response (cut at the capture bound, or the stream ended
  early); counted by the workers, which do not decode it.
"""


class DecodeError(Exception):
    """Raised for anything undecodable; `reason` is one of `REASONS`, `detail` a short human message."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown decode error reason {reason!r}")
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason

    def __reduce__(self) -> tuple[type[DecodeError], tuple[str, str]]:
        # Workers send errors across process boundaries; keep both fields through pickling.
        return DecodeError, (self.reason, self.detail)
