from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sidecar.testbed.model import ModelRegistry, Servable
from sidecar.testbed.status import Code, ServingError


def error_of(call: Any, *args: Any, **kwargs: Any) -> ServingError:
    with pytest.raises(ServingError) as caught:
        call(*args, **kwargs)
    return caught.value


def test_resolve_picks_latest_version_label_or_specific(registry: ModelRegistry) -> None:
    assert registry.resolve("classifier").version == 2
    assert registry.resolve("classifier", version=1).version == 1
    assert registry.resolve("classifier", label="stable").version == 1
    assert registry.resolve("classifier", label="canary").version == 2
    assert registry.model_names == ["classifier", "multi", "pair", "regressor"]


@pytest.mark.parametrize(("kwargs", "code", "message"), [
    ({"name": "nope"}, Code.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    ({"name": "classifier", "version": 7}, Code.NOT_FOUND, "Servable not found for request: Specific(classifier, 7)"),
    ({"name": "classifier", "label": "gold"}, Code.INVALID_ARGUMENT, "Unrecognized servable version label: gold"),
    ({"name": "nope", "label": "stable"}, Code.INVALID_ARGUMENT, "Unrecognized servable version label: stable"),
])
def test_resolve_errors_match_tf_serving(registry: ModelRegistry, kwargs: dict[str, Any], code: Code,
                                         message: str) -> None:
    error = error_of(registry.resolve, **kwargs)
    assert (error.code, error.message) == (code, message)


def test_status_lists_versions_newest_first_and_reports_missing_ones(registry: ModelRegistry) -> None:
    assert [s.version for s in registry.status("multi")] == [2, 1]
    assert [s.version for s in registry.status("multi", 1)] == [1]
    assert error_of(registry.status, "nope").message == "Could not find any versions of model nope"
    assert error_of(registry.status, "multi", 3).message == "Could not find version 3 of model multi"


def test_signature_lookup_defaults_to_serving_default(registry: ModelRegistry) -> None:
    servable = registry.resolve("classifier")
    assert servable.signature("")[0] == "serving_default"
    error = error_of(servable.signature, "nope")
    assert (error.code, error.message) == (Code.FAILED_PRECONDITION, 'Serving signature key "nope" not found.')
    assert error_of(servable.input_infos, "nope").message == 'Serving signature name: "nope" not found in signature def'


def multi_inputs(rows: int = 2) -> dict[str, np.ndarray[Any, Any]]:
    tags = np.empty(rows, dtype=object)
    tags[:] = [b"t"] * rows
    return {"x": np.zeros((rows, 3), np.float32), "tag": tags}


def test_predict_runs_the_signature_and_filters_outputs(registry: ModelRegistry) -> None:
    servable = registry.resolve("multi")
    key, outputs = servable.predict("", multi_inputs())
    assert key == "serving_default" and sorted(outputs) == ["label_bytes", "score"]
    _, filtered = servable.predict("serving_default", multi_inputs(), ["score"])
    assert list(filtered) == ["score"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda i: i.pop("tag"), "input size does not match signature: 1!=2 len({x}) != len({tag,x}). Sent extra: {}. "
                             "Missing but required: {tag}."),
    (lambda i: i.update(extra=i.pop("tag")), "input tensor alias not found in signature: extra. Inputs expected to "
                                             "be in the set {tag,x}."),
    (lambda i: i.update(x=np.zeros((2, 3), np.float64)), "Expects arg[1] to be float but double is provided"),
    (lambda i: i.update(x=np.zeros((2, 4), np.float32)), "input tensor x has shape [2,4] but the signature expects "
                                                         "[-1,3]"),
    (lambda i: i.update(x=np.zeros((3, 3), np.float32)), "input tensors must have equal 0th-dimension size"),
])
def test_invalid_inputs_are_rejected_before_running(registry: ModelRegistry, change: Any, message: str) -> None:
    inputs = multi_inputs()
    change(inputs)
    error = error_of(registry.resolve("multi").predict, "", inputs)
    assert error.code == Code.INVALID_ARGUMENT and error.message.startswith(message)


@pytest.mark.parametrize(("output_filter", "message"), [
    (["nope"], "output tensor alias not found in signature: nope Outputs expected to be in the set "
               "{label_bytes,score}."),
    (["score", "score"], "duplicate output tensor alias: score"),
])
def test_output_filter_errors(registry: ModelRegistry, output_filter: list[str], message: str) -> None:
    assert error_of(registry.resolve("multi").predict, "", multi_inputs(), output_filter).message == message


def test_backend_failures_become_internal_errors(registry: ModelRegistry) -> None:
    def broken(key: str, inputs: Any) -> dict[str, Any]:
        raise RuntimeError("boom")

    good = registry.resolve("multi")
    servable = Servable("multi", 1, good.signature_defs, broken)
    error = error_of(servable.predict, "", multi_inputs())
    assert (error.code, error.message) == (Code.INTERNAL, "RuntimeError: boom")
