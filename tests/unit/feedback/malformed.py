"""Seeded malformed feedback bodies, one kind of damage per generator, for the test that no body gets a 500.

`bodies(seed, count, max_body_bytes)` yields `(kind, body, headers)`; every body is refused by the parser (400) or
by the size limit (413): none is valid feedback, so a 404 or a 200 would mean a generator (or the parser) is wrong.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

Body = tuple[bytes, dict[str, str]]
PID = "order-17"  # a client-chosen id: never stored in these tests


def _valid(rng: random.Random) -> Any:
    """A well-formed feedback document (damaged by the generators below)."""
    shape = rng.randrange(3)
    if shape == 0:
        return {"prediction_id": PID, "truth": [rng.randrange(3) for _ in range(rng.randint(1, 4))]}
    if shape == 1:
        return {"prediction_id": PID, "instance": rng.randrange(5), "truth": [0.2, 0.8]}
    return [{"prediction_id": f"{PID}-{index}", "truth": [rng.choice([0, 1, "cat", [0.1, 0.9], 2.5])]}
            for index in range(rng.randint(1, 4))]


def _dumps(document: Any) -> bytes:
    return json.dumps(document).encode()


def _plain(body: bytes) -> Body:
    return body, {}


def deep_nesting(rng: random.Random, limit: int) -> Body:
    depth = rng.choice([9, 10, 50, 999, 1000, 1001, 5000, rng.randint(9, 200_000)])
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"a":', b"}]")])
    inner = opener * depth + b"1" + closer * (depth if rng.random() < 0.7 else rng.randrange(depth))
    where = rng.randrange(4)
    if where == 0:
        return _plain(inner)
    if where == 1:
        return _plain(b'{"prediction_id": "' + PID.encode() + b'", "truth": [' + inner + b"]}")
    if where == 2:
        return _plain(b'{"prediction_id": ' + inner + b', "truth": [1]}')
    return _plain(b'[{"prediction_id": "' + PID.encode() + b'", "instance": 0, "truth": ' + inner + b"}]")


def huge_number(rng: random.Random, limit: int) -> Body:
    digits = rng.choice([101, 309, 400, 4300, 4301, 10_000, rng.randint(101, 100_000)])
    number = (b"-" if rng.random() < 0.3 else b"") + b"9" * digits
    if rng.random() < 0.3:
        number += rng.choice([b".5", b"e10", b"e-999999", b".0000001e+400"])
    where = rng.randrange(5)
    if where == 0:
        return _plain(number)
    if where == 1:
        return _plain(b'{"prediction_id": "' + PID.encode() + b'", "truth": [' + number + b"]}")
    if where == 2:
        return _plain(b'{"prediction_id": "' + PID.encode() + b'", "instance": ' + number + b', "truth": 1}')
    if where == 3:
        return _plain(b'{"prediction_id": "' + PID.encode() + b'", "truth": [[0.5, ' + number + b"]]}")
    return _plain(b'[{"prediction_id": ' + number + b', "truth": [1]}]')


def bad_numbers(rng: random.Random, limit: int) -> Body:
    """Numbers that JSON does not have, or that do not fit a float (but are short enough to get past the scan)."""
    token = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"0x10", b"+1", b".5", b"01", b"1.",
                        b"1e", b"--1", b"nan", b"inf"])
    pid = PID.encode()
    templates = [b'{"prediction_id": "%s", "truth": [%s]}', b'{"prediction_id": "%s", "truth": [[0.5, %s]]}',
                 b'{"prediction_id": "%s", "instance": 0, "truth": %s}', b'[{"prediction_id": "%s", "truth": [%s, 1]}]',
                 b'{"prediction_id": "%s", "instance": %s, "truth": 1}']
    return _plain(rng.choice(templates) % (pid, token))


def invalid_utf8(rng: random.Random, limit: int) -> Body:
    body = bytearray(_dumps(_valid(rng)))
    damage = rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80",
                         b"\xf4\x90\x80\x80"])
    position = rng.randrange(len(body) + 1)
    if rng.random() < 0.3:
        return _plain(_dumps(_valid(rng)).decode().encode(rng.choice(["utf-16", "utf-16-le", "utf-32"])))
    body[position:position] = damage
    return _plain(bytes(body))


def wrong_type(rng: random.Random, limit: int) -> Body:
    """A well-formed body with one value of the wrong type (or out of range) at some level."""
    level = rng.randrange(9)
    document: Any = {"prediction_id": PID, "truth": [1, [0.5, 0.5]]}
    if level == 0:
        return _plain(_dumps(rng.choice([None, True, 3, "text", 2.5, [], [1, 2], ["a"], [None], [[]]])))
    if level == 1:
        document = [document, rng.choice([None, 1, "x", [], [document]])]
    elif level == 2:
        document["prediction_id"] = rng.choice([None, 7, True, "", " padded ", "x" * 129, "tab\there", "é", [], {}])
    elif level == 3:
        document["instance"] = rng.choice([-1, 1.5, "0", True, None, [], {}, 1e300])
        document["truth"] = 1
    elif level == 4:
        document["truth"] = rng.choice([None, 1, "cat", {}, [], 1.5])
    elif level == 5:
        document["truth"] = [1, rng.choice([None, {}, [], [[0.5]], "", "z" * 129, {"a": [1]}])]
    elif level == 6:
        document["truth"] = [[0.5, rng.choice([None, True, False, "x", "", {}, [0.5], "0.5"])]]
    elif level == 7:
        document[rng.choice(["extra", "Truth", "prediction-id", "", "instances"])] = 1
    else:
        del document[rng.choice(["prediction_id", "truth"])]
    return _plain(_dumps(document))


def truncated(rng: random.Random, limit: int) -> Body:
    body = _dumps(_valid(rng))
    return _plain(body[:rng.randrange(len(body))])


def duplicate_keys(rng: random.Random, limit: int) -> Body:
    key = rng.choice(["prediction_id", "truth", "instance"])
    values = {"prediction_id": '"a"', "truth": "[1]", "instance": "0"}
    pairs = [f'"prediction_id": "{PID}"', '"truth": [1]', f'"{key}": {values[key]}']
    if key == "instance":
        pairs = [f'"prediction_id": "{PID}"', '"instance": 0', '"truth": 1', '"instance": 1']
    rng.shuffle(pairs)
    body = "{" + ", ".join(pairs) + "}"
    return _plain((f"[{body}]" if rng.random() < 0.5 else body).encode())


def enormous_string(rng: random.Random, limit: int) -> Body:
    size = rng.choice([129, 10_000, 1_000_000, limit // 2, limit - 100])
    unit = rng.choice(["a", "\\n", "\\u00e9", "[", "9", '\\"', "é"])
    text = unit * max(129, size // len(unit.encode()))  # more than 128 characters once decoded, under the limit
    pid = PID
    where = rng.randrange(5)
    if where == 0:
        return _plain(f'{{"prediction_id": "{text}", "truth": [1]}}'.encode())
    if where == 1:
        return _plain(f'{{"prediction_id": "{pid}", "truth": ["{text}"]}}'.encode())
    if where == 2:
        return _plain(f'{{"prediction_id": "{pid}", "{text}": 1, "truth": [1]}}'.encode())
    if where == 3:
        return _plain(f'{{"prediction_id": "{pid}", "truth": ["{text}'.encode())  # never closed
    return _plain(f'"{text}"'.encode())


def million_items(rng: random.Random, limit: int) -> Body:
    count = rng.choice([100_001, 1_000_000])
    shape = rng.randrange(4)
    if shape == 0:
        body = b"[" + b",".join([b"1"] * count) + b"]"
    elif shape == 1:
        body = b'{"prediction_id": "' + PID.encode() + b'", "truth": [' + b",".join([b"0"] * count) + b"]}"
    elif shape == 2:
        body = b"[" + b",".join([b"{}"] * count) + b"]"
    else:
        body = b"[" + b",".join([b'"a"'] * count) + b"]"
    assert len(body) <= limit
    return _plain(body)


def too_large(rng: random.Random, limit: int) -> Body:
    if rng.random() < 0.5:
        return _plain(b'{"prediction_id": "' + PID.encode() + b'", "truth": [' + b"1," * (limit // 2) + b"1]}")
    return gzip.compress(b" " * (limit + 1 + rng.randrange(1000)), compresslevel=1), {"content-encoding": "gzip"}


def bad_encoding(rng: random.Random, limit: int) -> Body:
    body = _dumps(_valid(rng))
    choice = rng.randrange(4)
    if choice == 0:
        return body, {"content-encoding": "gzip"}  # not gzip at all
    if choice == 1:
        return gzip.compress(body)[:-rng.randint(9, 20)], {"content-encoding": "gzip"}  # cut short
    if choice == 2:
        return body, {"content-encoding": rng.choice(["br", "deflate", "zstd", "gzip, br"])}
    return gzip.compress(body[:-1]), {"content-encoding": "gzip"}  # well compressed, malformed inside


def garbage(rng: random.Random, limit: int) -> Body:
    choice = rng.randrange(12)
    if choice == 0:
        return _plain(rng.randbytes(rng.randint(1, 2000)))
    fixed = [b"", b" ", b"\xef\xbb\xbf", b"null", b"{}", b"[]", b"{'prediction_id': 'a', 'truth': [1]}",
             b'{"prediction_id": "a", "truth": [1],}', b'{"prediction_id": "a" "truth": [1]}',
             b'{"prediction_id": "a\x01", "truth": [1]}', b'// comment\n{"prediction_id": "a", "truth": [1]}']
    return _plain(fixed[choice - 1])


def surrogates(rng: random.Random, limit: int) -> Body:
    escape = rng.choice(["\\ud800", "\\udfff", "\\udc80x"])
    where = rng.randrange(3)
    if where:
        escape = rng.choice([escape, "\\u0000"])  # fine in a label, not in an id or a field name
    if where == 0:
        return _plain(f'{{"prediction_id": "{PID}", "truth": ["lab{escape}"]}}'.encode())
    if where == 1:
        return _plain(f'{{"prediction_id": "id{escape}", "truth": [1]}}'.encode())
    return _plain(f'{{"prediction_id": "{PID}", "{escape}": 1, "truth": [1]}}'.encode())


# (generator, weight): the heavy kinds (megabytes each) are rare, so 2,000 bodies take a few seconds
GENERATORS: list[tuple[Callable[[random.Random, int], Body], int]] = [
    (deep_nesting, 12), (huge_number, 12), (bad_numbers, 12), (invalid_utf8, 10), (wrong_type, 20),
    (truncated, 12), (duplicate_keys, 6), (enormous_string, 2), (million_items, 1), (too_large, 1),
    (bad_encoding, 5), (garbage, 5), (surrogates, 4),
]


def bodies(seed: int, count: int, max_body_bytes: int) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    rng = random.Random(seed)
    generators = [generator for generator, _ in GENERATORS]
    weights = [weight for _, weight in GENERATORS]
    for _ in range(count):
        generator = rng.choices(generators, weights)[0]
        body, headers = generator(rng, max_body_bytes)
        yield generator.__name__, body, headers
