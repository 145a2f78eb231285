"""TensorProto decoding, checked against TensorFlow's own encoders and decoders.

Protos are built with TensorFlow (`tf.make_tensor_proto`, `tensorflow.core.framework.tensor_pb2`), serialised
and parsed with the sidecar's wire-compatible subset, so every test also proves the bytes are compatible.
`tf.io.parse_tensor` (C++ Tensor::FromProto, what TF Serving runs) is the oracle for the fill rules.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from sidecar._proto import tf_pb2
from sidecar.codec import DecodeError
from sidecar.codec import tensors as tensors_module
from sidecar.codec.tensors import tensor_to_array

BFLOAT16 = np.dtype(tf.bfloat16.as_numpy_dtype)
NUMERIC_DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                  np.uint32, np.uint64]


def decode(proto: tensor_pb2.TensorProto) -> np.ndarray:
    return tensor_to_array(tf_pb2.TensorProto.FromString(proto.SerializeToString()))


def shape_proto(*dims: int, unknown_rank: bool = False) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims],
                                             unknown_rank=unknown_rank)


def sample(dtype: np.dtype, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random values including the type's extremes, so widening must not overflow."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype == BFLOAT16 or dtype.kind == "f":
        values = rng.normal(0, 100, size=shape).astype(dtype)
        flat = values.reshape(-1)
        flat[:3] = [np.inf, -np.inf, np.nan] if flat.size >= 3 else flat[:3]
        return values
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    flat = values.reshape(-1)
    flat[:2] = [info.min, info.max] if flat.size >= 2 else flat[:2]
    return values


def canonical(values: np.ndarray) -> np.ndarray:
    if values.dtype == BFLOAT16 or values.dtype.kind == "f" or values.dtype == np.uint64:
        return values.astype(np.float64)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    return values


@pytest.mark.parametrize("dtype", [*NUMERIC_DTYPES, BFLOAT16, np.bool_], ids=lambda d: np.dtype(d).name)
def test_tensor_content_of_every_dtype_round_trips(dtype: np.dtype) -> None:
    original = sample(dtype, (4, 3))
    # serialize_tensor writes tensor_content (C++ AsProtoTensorContent), as TF Serving does with
    # --enable_serialization_as_tensor_content.
    proto = tensor_pb2.TensorProto.FromString(tf.io.serialize_tensor(tf.constant(original)).numpy())
    assert proto.tensor_content

    decoded = decode(proto)

    expected = canonical(original)
    assert decoded.dtype == expected.dtype
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("dtype", [*NUMERIC_DTYPES, BFLOAT16, np.bool_], ids=lambda d: np.dtype(d).name)
def test_make_tensor_proto_output_of_every_dtype_round_trips(dtype: np.dtype) -> None:
    original = sample(dtype, (2, 5), seed=3)
    proto = tf.make_tensor_proto(original)

    decoded = decode(proto)

    np.testing.assert_array_equal(decoded, canonical(original))
    np.testing.assert_array_equal(decoded, canonical(tf.make_ndarray(proto)))


def _typed_proto(values: np.ndarray) -> tensor_pb2.TensorProto:
    """The typed-field encoding TF Serving writes by default, built field by field."""
    dtype = tf.as_dtype(values.dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum, tensor_shape=shape_proto(*values.shape))
    flat = values.reshape(-1)
    if values.dtype == np.float16 or values.dtype == BFLOAT16:
        proto.half_val.extend(flat.view(np.uint16).astype(np.int32).tolist())
    elif values.dtype == np.float32:
        proto.float_val.extend(flat.tolist())
    elif values.dtype == np.float64:
        proto.double_val.extend(flat.tolist())
    elif values.dtype in (np.int8, np.int16, np.int32, np.uint8, np.uint16):
        proto.int_val.extend(flat.astype(np.int32).tolist())
    elif values.dtype == np.int64:
        proto.int64_val.extend(flat.tolist())
    elif values.dtype == np.uint32:
        proto.uint32_val.extend(flat.tolist())
    elif values.dtype == np.uint64:
        proto.uint64_val.extend(flat.tolist())
    elif values.dtype == np.bool_:
        proto.bool_val.extend(flat.tolist())
    else:
        raise AssertionError(values.dtype)
    return proto


@pytest.mark.parametrize("dtype", [*NUMERIC_DTYPES, BFLOAT16, np.bool_], ids=lambda d: np.dtype(d).name)
def test_typed_fields_of_every_dtype_round_trip(dtype: np.dtype) -> None:
    original = sample(dtype, (3, 2, 2), seed=1)
    proto = _typed_proto(original)

    decoded = decode(proto)

    np.testing.assert_array_equal(decoded, canonical(original))
    np.testing.assert_array_equal(decoded, canonical(tf.io.parse_tensor(proto.SerializeToString(),
                                                                        tf.as_dtype(dtype)).numpy()))


def test_bool_and_string_tensors_from_make_tensor_proto() -> None:
    flags = np.array([[True, False], [False, True]])
    words = np.array([["cat", "dog"], ["émile", ""]])

    decoded_flags = decode(tf.make_tensor_proto(flags))
    decoded_words = decode(tf.make_tensor_proto(words))

    assert decoded_flags.dtype == np.bool_
    np.testing.assert_array_equal(decoded_flags, flags)
    assert decoded_words.dtype == object
    assert decoded_words.tolist() == [["cat", "dog"], ["émile", ""]]


def test_string_bytes_that_are_not_utf8_keep_their_exact_bytes() -> None:
    decoded = decode(tf.make_tensor_proto(np.array([b"\xff\xfeok", b"plain"], dtype=object)))

    assert decoded.tolist() == [b"\xff\xfeok", "plain"]


def test_scalar_tensor_has_no_dimensions() -> None:
    decoded = decode(tf.make_tensor_proto(2.5))

    assert decoded.shape == ()
    assert decoded.item() == 2.5


@pytest.mark.parametrize(("dtype", "field", "value"), [
    (types_pb2.DT_FLOAT, "float_val", 2.5),
    (types_pb2.DT_DOUBLE, "double_val", -1.25),
    (types_pb2.DT_INT32, "int_val", 7),
    (types_pb2.DT_INT64, "int64_val", -9),
    (types_pb2.DT_BOOL, "bool_val", True),
    (types_pb2.DT_UINT32, "uint32_val", 4_000_000_000),
    (types_pb2.DT_STRING, "string_val", b"same"),
])
def test_a_single_typed_value_is_broadcast_to_the_whole_shape(dtype: int, field: str, value: object) -> None:
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape_proto(2, 3))
    getattr(proto, field).append(value)

    decoded = decode(proto)

    oracle = tf.io.parse_tensor(proto.SerializeToString(), tf.dtypes.as_dtype(dtype)).numpy()
    assert decoded.shape == (2, 3)
    expected = value.decode() if isinstance(value, bytes) else value
    assert decoded.tolist() == [[expected] * 3] * 2
    assert oracle.shape == (2, 3)


def test_fewer_typed_values_repeat_the_last_one_like_tensorflow() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape_proto(2, 3), float_val=[1, 2, 7])

    decoded = decode(proto)

    np.testing.assert_array_equal(decoded, tf.io.parse_tensor(proto.SerializeToString(), tf.float32).numpy())
    assert decoded.tolist() == [[1, 2, 7], [7, 7, 7]]


def test_extra_typed_values_are_ignored_like_tensorflow() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, tensor_shape=shape_proto(2), int64_val=[4, 5, 6])

    decoded = decode(proto)

    np.testing.assert_array_equal(decoded, tf.io.parse_tensor(proto.SerializeToString(), tf.int64).numpy())
    assert decoded.tolist() == [4, 5]


@pytest.mark.parametrize(("dtype", "expected"), [(types_pb2.DT_FLOAT, 0.0), (types_pb2.DT_STRING, ""),
                                                 (types_pb2.DT_BOOL, False)])
def test_an_empty_typed_field_means_default_values(dtype: int, expected: object) -> None:
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape_proto(2, 2))

    decoded = decode(proto)

    assert decoded.tolist() == [[expected] * 2] * 2
    oracle = tf.io.parse_tensor(proto.SerializeToString(), tf.dtypes.as_dtype(dtype)).numpy()
    assert [v.decode() if isinstance(v, bytes) else v for v in oracle.reshape(-1).tolist()] == [expected] * 4


def test_narrow_int_values_wrap_like_tensorflow() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, tensor_shape=shape_proto(3), int_val=[255, 256, -1])

    decoded = decode(proto)

    np.testing.assert_array_equal(decoded, tf.io.parse_tensor(proto.SerializeToString(), tf.uint8).numpy())


def test_zero_element_tensor_decodes_to_an_empty_array() -> None:
    decoded = decode(tf.make_tensor_proto(np.zeros((0, 4), dtype=np.float32)))

    assert decoded.shape == (0, 4)
    assert decoded.dtype == np.float64


def test_one_unknown_dimension_is_inferred_from_the_values() -> None:
    typed = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape_proto(-1, 2),
                                   float_val=[1, 2, 3, 4, 5, 6])
    content = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, tensor_shape=shape_proto(2, -1),
                                     tensor_content=np.arange(6, dtype="<i4").tobytes())

    assert decode(typed).shape == (3, 2)
    assert decode(content).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_unknown_rank_gives_a_flat_array() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, tensor_shape=shape_proto(unknown_rank=True),
                                   double_val=[1.5, 2.5, 3.5])

    assert decode(proto).tolist() == [1.5, 2.5, 3.5]


@pytest.mark.parametrize("dims", [(-1, -1), (-1, 0), (-1, 4), (-2, 3)])
def test_unresolvable_dimensions_are_a_shape_error(dims: tuple[int, ...]) -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape_proto(*dims),
                                   float_val=[1, 2, 3, 4, 5, 6])

    with pytest.raises(DecodeError) as caught:
        decode(proto)

    assert caught.value.reason == "shape"


def test_tensor_content_that_does_not_fill_the_shape_is_a_shape_error() -> None:
    short = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape_proto(3),
                                   tensor_content=np.ones(2, dtype="<f4").tobytes())
    ragged = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape_proto(1), tensor_content=b"\x00" * 5)

    for proto in (short, ragged):
        with pytest.raises(DecodeError) as caught:
            decode(proto)
        assert caught.value.reason == "shape"


def test_string_tensor_content_uses_tensorflows_string_list_coding() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape_proto(2, 2),
                                   tensor_content=b"\x01\x02\x00\x81\x01" + b"a" + b"bc" + b"x" * 129)

    decoded = decode(proto)

    oracle = tf.io.parse_tensor(proto.SerializeToString(), tf.string).numpy()
    assert decoded.tolist() == [[s.decode() for s in row] for row in oracle.tolist()]
    assert decoded.tolist() == [["a", "bc"], ["", "x" * 129]]


def test_binary_strings_keep_their_bytes_in_tensor_content_and_when_broadcast() -> None:
    image = b"\x89PNG\r\n\x1a\n\x00\x00"
    content = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, tensor_shape=shape_proto(2), tensor_content=b"\x0a\x02" + image + b"ok")
    broadcast = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape_proto(3), string_val=[image])

    assert decode(content).tolist() == [image, "ok"]
    assert tf.io.parse_tensor(content.SerializeToString(), tf.string).numpy().tolist() == [image, b"ok"]
    assert decode(broadcast).tolist() == [image] * 3


@pytest.mark.parametrize("content", [b"\x01\x05abc", b"\x01", b"\x80\x80\x80\x80\x80\x80"])
def test_broken_string_tensor_content_is_a_shape_error(content: bytes) -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape_proto(2), tensor_content=content)

    with pytest.raises(DecodeError) as caught:
        decode(proto)

    assert caught.value.reason == "shape"


@pytest.mark.parametrize("proto", [
    tf.make_tensor_proto(np.array([1 + 2j], dtype=np.complex64)),
    tf.make_tensor_proto(np.array([1 + 2j], dtype=np.complex128)),
    tensor_pb2.TensorProto(dtype=types_pb2.DT_RESOURCE),
    tensor_pb2.TensorProto(dtype=types_pb2.DT_VARIANT),
], ids=["complex64", "complex128", "resource", "variant"])
def test_complex_resource_and_variant_tensors_are_unsupported(proto: tensor_pb2.TensorProto) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(proto)

    assert caught.value.reason == "unsupported"


@pytest.mark.parametrize("dtype", [types_pb2.DT_INVALID, 99])
def test_invalid_or_unknown_dtype_is_a_dtype_error(dtype: int) -> None:
    proto = tf_pb2.TensorProto(dtype=dtype, float_val=[1.0])  # type: ignore[arg-type]

    with pytest.raises(DecodeError) as caught:
        tensor_to_array(proto)

    assert caught.value.reason == "dtype"


def test_broadcasting_past_the_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape_proto(1_000_000, 1_000_000),
                                   float_val=[1.0])

    with pytest.raises(DecodeError) as caught:
        decode(proto)

    assert caught.value.reason == "shape"
    monkeypatch.setattr(tensors_module, "MAX_FILLED_ELEMENTS", 10)
    with pytest.raises(DecodeError):
        decode(tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape_proto(11), string_val=[b"a"]))


def test_decoded_arrays_own_their_memory() -> None:
    decoded = decode(tf.make_tensor_proto(np.arange(4, dtype=np.int64)))

    decoded[0] = 42

    assert decoded.flags.writeable and decoded[0] == 42


def test_serialize_tensor_output_decodes() -> None:
    original = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    serialized = tf.io.serialize_tensor(tf.constant(original)).numpy()

    decoded = tensor_to_array(tf_pb2.TensorProto.FromString(serialized))

    np.testing.assert_array_equal(decoded, original.astype(np.float64))
