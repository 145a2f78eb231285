"""The header rules of the HTTP/2 relay: what a request's headers say, what goes upstream, what comes back.

Upstream, a request's headers pass unchanged except that `:authority` and `user-agent` become the relay's own (as
a gRPC channel writes its own), hop-by-hop headers are dropped, and `traceparent`/`tracestate` are taken out while
tracing is on (the client span's are added instead). Back to the client, the upstream's headers and trailers pass
unchanged except that `x-prediction-id` is the sidecar's; a trailers-only answer becomes headers (`:status`,
`content-type`, encodings, the prediction id) followed by trailers (everything else), the shape grpc.aio answers in.

Each interpretation is kept on the decoded `HeaderBlock`, so the blocks a client or server repeats call after
call are read once; the connection's `HeaderEncoder` encodes them (by the interpretation's cache keys).
"""

from __future__ import annotations

from collections.abc import Callable

from sidecar.messages.records import LOG_OPT_OUT_HEADER
from sidecar.proxy.grpc.h2.hpack import Header, HeaderBlock, encode_field
from sidecar.proxy.grpc.h2.wire import encode_message, parse_timeout, status_of, status_of_http
from sidecar.proxy.grpc.metadata import MANAGED_BY_GRPC, PREDICTION_ID, REQUEST_ID
from sidecar.proxy.grpc.methods import GrpcMethod
from sidecar.proxy.grpc.status import StatusCode

PID = PREDICTION_ID.encode()
GRPC_STATUS = b"grpc-status"
GRPC_MESSAGE = b"grpc-message"
STATUS_200 = b"200"
RESPONSE_HEAD: tuple[Header, ...] = ((b":status", STATUS_200), (b"content-type", b"application/grpc"))

_PATH, _METHOD, _DROP, _TIMEOUT, _ENCODING, _CONTENT_TYPE, _PID, _RID, _TRACE, _OPT_OUT = range(10)
_REQUEST_FIELDS: dict[bytes, int] = {
    b":path": _PATH, b":method": _METHOD, b":authority": _DROP, b":scheme": _DROP, b"user-agent": _DROP,
    b"grpc-timeout": _TIMEOUT, b"grpc-encoding": _ENCODING, b"content-type": _CONTENT_TYPE, PID: _PID,
    REQUEST_ID.encode(): _RID, b"traceparent": _TRACE, b"tracestate": _TRACE, LOG_OPT_OUT_HEADER.encode(): _OPT_OUT,
    **{name.encode(): _DROP for name in MANAGED_BY_GRPC if name not in ("content-type", "te")},
}
_PSEUDO = (b":method", b"POST"), (b":scheme", b"http")
_INITIAL_NAMES = frozenset({b":status", b"content-type", b"grpc-encoding", b"grpc-accept-encoding"})
_PID_PREFIX = encode_field(PID, b"")[:-1]  # the field up to its value's length


def prediction_id_field(prediction_id: str | None) -> bytes:
    """The encoded `x-prediction-id` field; nothing for calls that make no prediction (status, metadata)."""
    if prediction_id is None:
        return b""
    value = prediction_id.encode()
    return _PID_PREFIX + bytes((len(value),)) + value if len(value) < 127 else encode_field(PID, value)


def status_fields(code: StatusCode, details: str) -> tuple[Header, ...]:
    """Trailers carrying the sidecar's own status."""
    return (GRPC_STATUS, str(code.value[0]).encode()), (GRPC_MESSAGE, encode_message(details))


class RequestHead:
    """What a request's header block says, and the fields that go upstream (without and with the sidecar's
    `grpc-timeout`); the per-call trace context is added by the call."""

    __slots__ = ("carrier", "encoding", "log_opt_out", "method", "prediction_id", "rejection", "relay_fields",
                 "request_id", "timed_key", "timeout", "upstream", "upstream_timed")

    def __init__(self, fields: tuple[Header, ...], relay_fields: RelayFields, tracing: bool,
                 describe: Callable[[str], GrpcMethod]) -> None:
        self.relay_fields = relay_fields
        self.timed_key = object()  # the encoder's cache key for `upstream_timed` (the head itself for `upstream`)
        self.rejection: tuple[bytes, str] | None = None  # (HTTP status, details) for a request that is not gRPC
        self.timeout: float | None = None
        self.encoding: bytes | None = None
        self.prediction_id: str | None = None
        self.request_id: str | None = None
        self.log_opt_out = False
        self.carrier: dict[str, str] = {}
        kept: list[Header] = []
        path = method = content_type = None
        lookup = _REQUEST_FIELDS.get
        for field in fields:
            kind = lookup(field[0])
            if kind is None:
                if field[0][:1] != b":":  # unknown pseudo-headers are dropped
                    kept.append(field)
            elif kind == _PATH:
                path = field
            elif kind == _METHOD:
                method = field[1]
            elif kind == _DROP:
                continue
            elif kind == _TRACE:
                if tracing:
                    self.carrier[field[0].decode()] = field[1].decode("latin-1")
                else:
                    kept.append(field)
            else:
                kept.append(field)
                if kind == _TIMEOUT:
                    self.timeout = parse_timeout(field[1])
                elif kind == _ENCODING:
                    self.encoding = field[1]
                elif kind == _CONTENT_TYPE:
                    content_type = field[1]
                elif kind == _PID:
                    self.prediction_id = field[1].decode("latin-1")
                elif kind == _RID:
                    self.request_id = field[1].decode("latin-1")
                elif kind == _OPT_OUT:
                    self.log_opt_out = field[1].strip().lower() == b"off"
        self.method: GrpcMethod | None = None
        self.upstream: tuple[Header, ...] = ()
        self.upstream_timed: tuple[Header, ...] = ()
        if method != b"POST":
            self.rejection = (b"405", f"sidecar: gRPC calls use POST, not {(method or b'?').decode('latin-1')}")
        elif content_type is None or not content_type.startswith(b"application/grpc"):
            self.rejection = (b"415", "sidecar: not a gRPC request (content-type is not application/grpc)")
        elif path is None or not path[1].startswith(b"/"):
            self.rejection = (b"400", "sidecar: the request has no method path")
        else:
            self.method = describe(path[1].decode("latin-1"))
            self.upstream = (*_PSEUDO, path, relay_fields.authority, *kept, relay_fields.user_agent)
            self.upstream_timed = (*self.upstream, relay_fields.timeout)


class RelayFields:
    """The fields a relay writes itself into every request it forwards."""

    __slots__ = ("authority", "timeout", "user_agent")

    def __init__(self, authority: bytes, user_agent: bytes, timeout: bytes) -> None:
        self.authority = (b":authority", authority)
        self.user_agent = (b"user-agent", user_agent)
        self.timeout = (b"grpc-timeout", timeout)


def request_head(block: HeaderBlock, relay_fields: RelayFields, tracing: bool,
                 describe: Callable[[str], GrpcMethod]) -> RequestHead:
    head = block.derived
    if not isinstance(head, RequestHead) or head.relay_fields is not relay_fields:
        head = block.derived = RequestHead(block.fields, relay_fields, tracing, describe)
    return head


class Answer:
    """An upstream header block as the client gets it: as response headers, as trailers, or trailers-only.

    The answer itself and the `*_key` objects are the connection encoder's cache keys for the blocks it gives.
    """

    __slots__ = ("_head", "_split", "_trailers", "fields", "split_head_key", "split_trailers_key", "status",
                 "trailers_key")

    def __init__(self, fields: tuple[Header, ...]) -> None:
        self.fields = fields
        self.status = STATUS_200
        for name, value in fields:
            if name == b":status":
                self.status = value
                break
        self.trailers_key = object()
        self.split_head_key = object()
        self.split_trailers_key = object()
        self._head: tuple[Header, ...] | None = None
        self._trailers: StatusCode | None = None
        self._split: tuple[tuple[Header, ...], tuple[Header, ...], StatusCode] | None = None

    def head(self) -> tuple[Header, ...]:
        """The fields for the client's response headers, without any prediction id (the call appends its own)."""
        if self._head is None:
            self._head = tuple(field for field in self.fields if field[0] != PID)
        return self._head

    def code(self, http_status: bytes = STATUS_200) -> StatusCode:
        """The call's status when this block is its trailers (they go to the client unchanged)."""
        if http_status != STATUS_200:
            return _code(self.fields, http_status)
        if self._trailers is None:
            self._trailers = _code(self.fields, STATUS_200)
        return self._trailers

    def split(self) -> tuple[tuple[Header, ...], tuple[Header, ...], StatusCode]:
        """A trailers-only answer (HTTP 200) as response headers (without prediction id) and trailers."""
        if self._split is None:
            initial: list[Header] = []
            trailing: list[Header] = []
            for field in self.fields:
                if field[0] in _INITIAL_NAMES:
                    initial.append(field)
                elif field[0] != PID:
                    trailing.append(field)
            if not any(name == b"content-type" for name, _ in initial):
                initial.append((b"content-type", b"application/grpc"))
            self._split = tuple(initial), tuple(trailing), _code(trailing, STATUS_200)
        return self._split


def answer(block: HeaderBlock) -> Answer:
    derived = block.derived
    if not isinstance(derived, Answer):
        derived = block.derived = Answer(block.fields)
    return derived


def with_message(fields: tuple[Header, ...], details: str, split: bool = False) -> list[Header]:
    """The trailers `fields` (of a trailers-only answer when `split`) with `grpc-message` replaced by `details`."""
    dropped = _INITIAL_NAMES | {GRPC_MESSAGE, PID} if split else {GRPC_MESSAGE}
    kept = [field for field in fields if field[0] not in dropped]
    kept.append((GRPC_MESSAGE, encode_message(details)))
    return kept


def _code(fields: tuple[Header, ...] | list[Header], http_status: bytes) -> StatusCode:
    for name, value in fields:
        if name == GRPC_STATUS:
            return status_of(value)
    return status_of_http(http_status) if http_status != STATUS_200 else status_of(None)
