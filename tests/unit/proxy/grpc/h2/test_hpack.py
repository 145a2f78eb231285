"""HPACK for the HTTP/2 relay, checked against the `hpack` package's own encoder and decoder (RFC 7541)."""

from __future__ import annotations

import random

import hpack
import pytest

from sidecar.proxy.grpc.h2.hpack import HeaderDecoder, HeaderEncoder, HpackError, encode_headers

GRPC_REQUEST = [(b":method", b"POST"), (b":scheme", b"http"),
                (b":path", b"/tensorflow.serving.PredictionService/Predict"), (b":authority", b"127.0.0.1:8500"),
                (b"content-type", b"application/grpc"), (b"te", b"trailers"),
                (b"grpc-accept-encoding", b"identity, deflate, gzip"), (b"grpc-timeout", b"10S"),
                (b"user-agent", b"grpc-python/1.85.1 grpc-c/58.0.0 (linux; chttp2)")]


def test_the_decoder_reads_what_a_reference_encoder_writes_with_indexing_and_huffman() -> None:
    encoder, decoder = hpack.Encoder(), HeaderDecoder()
    rng = random.Random(7)
    for call in range(300):
        blob = bytes(rng.randrange(256) for _ in range(8)).hex().encode()
        fields = [*GRPC_REQUEST, (b"x-call", str(call).encode()), (b"x-blob-bin", blob)]
        block = encoder.encode(fields, huffman=rng.random() < 0.5)
        assert list(decoder.decode(block).fields) == fields


def test_a_repeated_block_decodes_to_the_same_object_until_the_table_changes() -> None:
    encoder, decoder = hpack.Encoder(), HeaderDecoder()
    decoder.decode(encoder.encode(GRPC_REQUEST))  # first call: literals that fill the table
    steady = encoder.encode(GRPC_REQUEST)  # later calls: indices only
    first = decoder.decode(steady)
    first.derived = "interpretation"
    assert decoder.decode(steady) is first
    decoder.decode(encoder.encode([(b"x-new", b"entry")]))  # an insertion shifts every dynamic index
    again = decoder.decode(steady)
    assert again is not first and again.derived is None


def test_a_table_size_update_evicts_entries() -> None:
    encoder, decoder = hpack.Encoder(), HeaderDecoder()
    decoder.decode(encoder.encode(GRPC_REQUEST))
    encoder.header_table_size = 0
    assert list(decoder.decode(encoder.encode(GRPC_REQUEST)).fields) == GRPC_REQUEST


@pytest.mark.parametrize("block", [b"\xff", b"\x80", b"\xbe", b"\x40\x05ab", b"\x3f\xe2\x1f",
                                   b"\x00\x7f\xff\xff\xff\x7f"],
                         ids=["truncated-integer", "index-zero", "index-beyond-table", "truncated-string",
                              "table-size-too-large", "oversized-string"])
def test_malformed_blocks_raise_hpack_error(block: bytes) -> None:
    with pytest.raises(HpackError):
        HeaderDecoder().decode(block)


def test_the_stateless_encoder_writes_literals_any_decoder_reads() -> None:
    fields = [*GRPC_REQUEST, (b"x-long", b"v" * 300)]
    assert list(hpack.Decoder().decode(encode_headers(fields), raw=True)) == fields
    assert list(HeaderDecoder().decode(encode_headers(fields)).fields) == fields


def test_the_encoder_indexes_fields_seen_twice_and_never_per_call_values() -> None:
    encoder, reference = HeaderEncoder(), hpack.Decoder()
    sizes = []
    for call in range(4):
        fields = [*GRPC_REQUEST, (b"x-prediction-id", f"id-{call}".encode())]
        block = encoder.encode(fields)
        assert list(reference.decode(block, raw=True)) == fields
        sizes.append(len(block))
    assert min(sizes[:2]) > 200  # literals twice (the second time they enter the table) ...
    # ... then one byte per field but the timeout and the prediction id, literals (2 + name + 1 + value bytes)
    assert sizes[2] == sizes[3] == 8 + (2 + 12 + 1 + 3) + (2 + 15 + 1 + 4)


def test_encoded_blocks_are_cached_by_key_while_the_table_is_unchanged() -> None:
    encoder, key = HeaderEncoder(), object()
    for _ in range(3):
        encoder.encode(GRPC_REQUEST, key)
    steady = encoder.encode(GRPC_REQUEST, key)
    assert encoder.encode(GRPC_REQUEST, key) is steady
    encoder.encode([(b"x-other", b"1")])
    encoder.encode([(b"x-other", b"1")])  # indexed now: the table changed
    assert encoder.encode(GRPC_REQUEST, key) is not steady


def test_the_encoder_follows_the_peers_table_size_and_stays_readable() -> None:
    rng = random.Random(3)
    encoder, decoder, reference = HeaderEncoder(), HeaderDecoder(), hpack.Decoder()
    pool = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"x-a", b"1"), (b"x-b", b"v" * 300),
            (b"grpc-status", b"0"), (b"grpc-message", b""), (b"x-prediction-id", b"p")]
    for _ in range(2000):
        fields = [rng.choice(pool) for _ in range(rng.randint(0, 6))]
        if rng.random() < 0.3:
            fields.append((b"x-varying-%d" % rng.randint(0, 40), b"u" * rng.randint(0, 900)))
        if rng.random() < 0.01:
            encoder.set_max_size(rng.choice([0, 100, 4096, 65536]))
        block = encoder.encode(fields, tuple(fields) if rng.random() < 0.5 else None)
        assert list(decoder.decode(block).fields) == fields
        assert list(reference.decode(block, raw=True)) == fields
