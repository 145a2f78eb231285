"""HPACK (RFC 7541) for the HTTP/2 relay: a decoder that remembers whole header blocks, and a stateless encoder.

Why not `hpack.Decoder`: it costs about 25 us per gRPC request block in pure Python, while gRPC clients send the
same few blocks again and again (after the first call every field is an index into the dynamic table). A block
that leaves the dynamic table unchanged decodes to the same fields until the table changes, so decoded blocks
are cached by their bytes and the cache is emptied whenever a block changes the table. Huffman strings are
decoded with the `hpack` package's decoder; its static table is reused too.

`HeaderEncoder` (one per connection and direction) indexes fields the second time it sees them, so a peer reads
the blocks that repeat call after call as a few table indices (gRPC libraries spend noticeably more time on
literal fields); values that differ per call (prediction ids, trace context, timeouts) are never indexed. While
the table stays unchanged a block's encoding does too, so encoded blocks are cached by a caller's key until the
next change. Blocks must go out in the order they were encoded. `encode_headers` is the stateless variant
(literals without indexing only) for blocks that may be sent out of order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

__all__ = ["DEFAULT_TABLE_SIZE", "HeaderBlock", "HeaderDecoder", "HeaderEncoder", "HpackError", "encode_field",
           "encode_headers"]

Header = tuple[bytes, bytes]

DEFAULT_TABLE_SIZE = 4096  # SETTINGS_HEADER_TABLE_SIZE; the relay never advertises another value
ENTRY_OVERHEAD = 32
MAX_BLOCK_FIELDS = 1024
MAX_CACHED_BLOCKS = 512
MAX_CACHED_BYTES = 256 * 1024  # a decoder's cache of blocks holds at most this many block bytes
MAX_CACHED_FIELDS = 4096
MAX_STRING_BYTES = 1 << 20

STATIC: tuple[Header, ...] = tuple(HeaderTable.STATIC_TABLE)
STATIC_LENGTH = len(STATIC)  # 61
_STATIC_NAMES: dict[bytes, int] = {}
_STATIC_FIELDS: dict[Header, bytes] = {}  # fields of the static table, as indexed representations
for _index, _field in enumerate(STATIC, start=1):
    _STATIC_NAMES.setdefault(_field[0], _index)
    _STATIC_FIELDS.setdefault(_field, bytes((0x80 | _index,)))
NEVER_INDEXED = frozenset({b"x-prediction-id", b"x-request-id", b"traceparent", b"tracestate", b"grpc-timeout"})
MAX_INDEXED_FIELD = 512  # larger fields are not worth a table slot
MAX_SEEN_FIELDS = 1024


class HpackError(Exception):
    """The header block is not valid HPACK (a connection error: COMPRESSION_ERROR)."""


class HeaderBlock:
    """A decoded header block. The same object comes back for every repetition of a cached block, so whoever
    interprets it can keep the interpretation in `derived` and skip the work next time."""

    __slots__ = ("derived", "fields")

    def __init__(self, fields: tuple[Header, ...]) -> None:
        self.fields = fields
        self.derived: object = None


def _integer(data: bytes, pos: int, prefix_mask: int) -> tuple[int, int]:
    """Decode an HPACK integer whose prefix is the low bits of data[pos]; returns (value, next position)."""
    value = data[pos] & prefix_mask
    pos += 1
    if value < prefix_mask:
        return value, pos
    shift = 0
    end = len(data)
    while pos < end:
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            break
    raise HpackError("integer overflow or truncated integer")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(data):
        raise HpackError("truncated string")
    huffman = data[pos] & 0x80
    length, pos = _integer(data, pos, 0x7F)
    stop = pos + length
    if stop > len(data) or length > MAX_STRING_BYTES:
        raise HpackError("truncated or oversized string")
    raw = data[pos:stop]
    if huffman:
        try:
            raw = decode_huffman(raw)
        except Exception as exc:  # hpack raises its own HPACKDecodingError
            raise HpackError(f"invalid Huffman string: {exc}") from None
    return raw, stop


class HeaderDecoder:
    """Decodes the header blocks of one direction of one connection, in order."""

    __slots__ = ("_cache", "_cache_bytes", "_dynamic", "_max_size", "_size")

    def __init__(self, max_size: int = DEFAULT_TABLE_SIZE) -> None:
        self._dynamic: list[Header] = []  # oldest first; HPACK index 62 is the last entry
        self._size = 0
        self._max_size = max_size
        self._cache: dict[bytes, HeaderBlock] = {}
        self._cache_bytes = 0

    def decode(self, block: bytes) -> HeaderBlock:
        """The fields of a complete header block. Raises HpackError; the connection is then unusable."""
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        fields, changed = self._decode(block)
        decoded = HeaderBlock(fields)
        if changed:
            self._cache.clear()
            self._cache_bytes = 0
        else:
            if len(self._cache) >= MAX_CACHED_BLOCKS or self._cache_bytes + len(block) > MAX_CACHED_BYTES:
                self._cache.clear()
                self._cache_bytes = 0
            self._cache[block] = decoded
            self._cache_bytes += len(block)
        return decoded

    def _entry(self, index: int) -> Header:
        if 0 < index <= STATIC_LENGTH:
            return STATIC[index - 1]
        position = len(self._dynamic) - (index - STATIC_LENGTH)
        if index <= 0 or position < 0:
            raise HpackError(f"header table index {index} out of range")
        return self._dynamic[position]

    def _add(self, header: Header) -> None:
        size = len(header[0]) + len(header[1]) + ENTRY_OVERHEAD
        dynamic = self._dynamic
        while dynamic and self._size + size > self._max_size:
            old_name, old_value = dynamic.pop(0)
            self._size -= len(old_name) + len(old_value) + ENTRY_OVERHEAD
        if size <= self._max_size:
            dynamic.append(header)
            self._size += size

    def _resize(self, size: int) -> None:
        if size > DEFAULT_TABLE_SIZE:
            raise HpackError(f"table size {size} exceeds the advertised {DEFAULT_TABLE_SIZE}")
        self._max_size = size
        dynamic = self._dynamic
        while dynamic and self._size > size:
            old_name, old_value = dynamic.pop(0)
            self._size -= len(old_name) + len(old_value) + ENTRY_OVERHEAD

    def _decode(self, data: bytes) -> tuple[tuple[Header, ...], bool]:
        fields: list[Header] = []
        changed = False
        pos, end = 0, len(data)
        while pos < end:
            if len(fields) >= MAX_BLOCK_FIELDS:
                raise HpackError("too many header fields")
            byte = data[pos]
            if byte & 0x80:  # indexed field
                index, pos = _integer(data, pos, 0x7F)
                fields.append(self._entry(index))
            elif byte & 0x40:  # literal with incremental indexing
                index, pos = _integer(data, pos, 0x3F)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = _string(data, pos)
                value, pos = _string(data, pos)
                header = (name, value)
                fields.append(header)
                self._add(header)
                changed = True
            elif byte & 0x20:  # dynamic table size update
                if fields:
                    raise HpackError("table size update after a header field")
                size, pos = _integer(data, pos, 0x1F)
                self._resize(size)
                changed = True
            else:  # literal without indexing (0000) or never indexed (0001): the table is untouched
                index, pos = _integer(data, pos, 0x0F)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = _string(data, pos)
                value, pos = _string(data, pos)
                fields.append((name, value))
        return tuple(fields), changed


def _encode_integer(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_field_cache: dict[Header, bytes] = {}


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field as a literal without indexing (name by static index when possible), raw strings."""
    index = _STATIC_NAMES.get(name)
    head = b"\x00" + _encode_integer(len(name), 7, 0x00) + name if index is None else _encode_integer(index, 4, 0x00)
    return head + _encode_integer(len(value), 7, 0x00) + value


def encode_headers(fields: list[Header] | tuple[Header, ...]) -> bytes:
    """A header block for `fields`; repeated fields come from a bounded cache."""
    cache = _field_cache
    parts = []
    for header in fields:
        encoded = cache.get(header)
        if encoded is None:
            encoded = encode_field(*header)
            if len(cache) >= MAX_CACHED_FIELDS:
                cache.clear()
            cache[header] = encoded
        parts.append(encoded)
    return b"".join(parts)


class HeaderEncoder:
    """Encodes the header blocks of one direction of one connection, indexing the fields that repeat."""

    __slots__ = ("_blocks", "_entries", "_inserted", "_max_size", "_numbers", "_resize", "_seen", "_size")

    def __init__(self, max_size: int = DEFAULT_TABLE_SIZE) -> None:
        self._entries: deque[tuple[Header, int]] = deque()  # (field, insertion number), oldest first
        self._numbers: dict[Header, int] = {}  # field -> insertion number of its newest entry
        self._inserted = 0
        self._size = 0
        self._max_size = max_size
        self._resize: int | None = None  # a table size update owed to the peer
        self._seen: set[Header] = set()  # fields sent once as literals; indexed when they come again
        self._blocks: dict[object, bytes] = {}  # encoded blocks by the caller's key, valid until the table changes

    def set_max_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE; the table never grows beyond the default."""
        size = min(size, DEFAULT_TABLE_SIZE)
        if size != self._max_size:
            self._max_size = size
            self._resize = size
            self._evict(0)
            self._blocks.clear()

    def encode(self, fields: Iterable[Header], key: object = None) -> bytes:
        """The block for `fields`; with a `key`, a block encoded before under that key comes back while the table
        is unchanged (the caller promises the same key means the same fields)."""
        blocks = self._blocks
        if key is not None:
            cached = blocks.get(key)
            if cached is not None:
                return cached
        parts: list[bytes] = []
        changed = False
        if self._resize is not None:
            parts.append(_encode_integer(self._resize, 5, 0x20))
            self._resize = None
            changed = True
        numbers = self._numbers
        for field in fields:
            encoded = _STATIC_FIELDS.get(field)
            if encoded is not None:
                parts.append(encoded)
                continue
            number = numbers.get(field)
            if number is not None:
                parts.append(_encode_integer(self._inserted - number + STATIC_LENGTH + 1, 7, 0x80))
                continue
            name, value = field
            if name in NEVER_INDEXED or len(name) + len(value) > MAX_INDEXED_FIELD or field not in self._seen:
                if name not in NEVER_INDEXED:
                    if len(self._seen) >= MAX_SEEN_FIELDS:
                        self._seen.clear()
                    self._seen.add(field)
                parts.append(encode_field(name, value))
                continue
            index = _STATIC_NAMES.get(name)
            if index is None:
                parts.append(b"\x40" + _encode_integer(len(name), 7, 0x00) + name)
            else:
                parts.append(_encode_integer(index, 6, 0x40))
            parts.append(_encode_integer(len(value), 7, 0x00) + value)
            self._insert(field)
            changed = True
        block = b"".join(parts)
        if changed:
            blocks.clear()
        elif key is not None:
            if len(blocks) >= MAX_CACHED_BLOCKS:
                blocks.clear()
            blocks[key] = block
        return block

    def _insert(self, field: Header) -> None:
        size = len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
        self._evict(size)
        if size > self._max_size:
            return  # the peer empties its table the same way: nothing is inserted
        self._inserted += 1
        self._entries.append((field, self._inserted))
        self._numbers[field] = self._inserted
        self._size += size
        self._seen.discard(field)

    def _evict(self, room: int) -> None:
        entries, numbers = self._entries, self._numbers
        while entries and self._size + room > self._max_size:
            field, number = entries.popleft()
            self._size -= len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
            if numbers.get(field) == number:
                del numbers[field]
