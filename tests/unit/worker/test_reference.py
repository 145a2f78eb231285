"""References: collected from traffic up to a target, read from npz/npy/csv files, saved and reloaded atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sidecar.worker.features import CATEGORICAL, NUMERIC, InputFeatures
from sidecar.worker.reference import (
    OutputSpec,
    Reference,
    ReferenceCollector,
    ReferenceFileError,
    model_dir,
    read_reference_file,
    reference_from_arrays,
    safe_name,
)


def features() -> InputFeatures:
    return InputFeatures.from_arrays({"x": np.zeros((1, 2)), "city": np.array(["a"], dtype=object)})


def test_safe_names_keep_plain_model_names_and_separate_cleaned_ones() -> None:
    assert safe_name("iris-v2.1_x") == "iris-v2.1_x"
    cleaned = safe_name("team/iris")
    assert cleaned.startswith("team_iris-") and "/" not in cleaned
    assert safe_name("team/iris") != safe_name("team_iris")
    assert safe_name("..") not in ("..", ".", "")
    assert model_dir(Path("state"), "m") == Path("state/models/m")


def test_a_saved_reference_loads_back_unchanged(tmp_path: Path) -> None:
    space = features()
    space.extract({"x": np.zeros((2, 2)), "city": np.array(["rome", "oslo"], dtype=object)}, 2)
    inputs = np.array([[0.0, 1.0, 2.0], [1.0, 3.0, 4.0]])
    outputs = np.array([[0.2, 0.8], [0.9, 0.1]])
    reference = reference_from_arrays(inputs, [CATEGORICAL, NUMERIC, NUMERIC], space, outputs,
                                      OutputSpec("probs", 2, False, ["no", "yes"]), "classification", None)
    path = reference.save(tmp_path / "m")
    assert path == tmp_path / "m" / "reference.npz"
    assert not list((tmp_path / "m").glob(".*tmp"))
    loaded = Reference.load(tmp_path / "m")
    assert loaded is not None
    np.testing.assert_array_equal(loaded.inputs, inputs)
    assert loaded.outputs is not None
    np.testing.assert_array_equal(loaded.outputs, outputs)
    assert loaded.kinds == reference.kinds
    assert loaded.features.names == space.names
    assert loaded.features.vocabularies() == {"city": ["rome", "oslo"]}
    assert loaded.output == OutputSpec("probs", 2, False, ["no", "yes"])
    assert (loaded.task, loaded.source, loaded.file, loaded.instances) == ("classification", "traffic", None, 2)


def test_no_or_a_damaged_saved_reference_loads_as_none(tmp_path: Path) -> None:
    assert Reference.load(tmp_path / "absent") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "reference.json").write_text("{not json")
    assert Reference.load(tmp_path / "bad") is None


def test_the_collector_stops_at_its_target_and_says_how_many_rows_it_took() -> None:
    collector = ReferenceCollector(target=5)
    assert collector.add(np.ones((3, 2)), np.ones((3, 1))) == 3
    assert not collector.complete
    assert collector.add(np.zeros((4, 2)), None) == 2
    assert collector.complete
    assert collector.add(np.zeros((4, 2)), None) == 0
    assert collector.inputs().shape == (5, 2)
    outputs = collector.outputs(width=1)
    assert outputs is not None
    np.testing.assert_array_equal(outputs[:3, 0], [1, 1, 1])
    assert np.isnan(outputs[3:]).all()


def test_an_npz_reference_is_read_by_input_name_with_an_optional_output(tmp_path: Path) -> None:
    path = tmp_path / "ref.npz"
    np.savez(path, x=np.arange(6.0).reshape(3, 2), city=np.array(["a", "b", "a"]),
             **{"output:probs": np.full((3, 2), 0.5)})  # type: ignore[arg-type]
    inputs, outputs = read_reference_file(str(path), features(), OutputSpec("probs", 2, False, None))
    np.testing.assert_array_equal(inputs[:, 5:], np.arange(6.0).reshape(3, 2))
    np.testing.assert_array_equal(inputs[:, 0], [0, 1, 0])  # city's codes, then its text summary
    np.testing.assert_array_equal(inputs[:, 1], [1, 1, 1])
    assert outputs is not None and outputs.shape == (3, 2)


def test_an_npz_reference_that_does_not_match_the_inputs_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ref.npz"
    np.savez(path, x=np.zeros((3, 5)), city=np.array(["a", "b", "a"]))
    with pytest.raises(ReferenceFileError, match=r"x: shape"):
        read_reference_file(str(path), features(), None)


def test_an_npy_reference_is_a_matrix_of_all_input_elements(tmp_path: Path) -> None:
    space = InputFeatures.from_arrays({"x": np.zeros((1, 3))})
    path = tmp_path / "ref.npy"
    np.save(path, np.arange(12.0).reshape(4, 3))
    inputs, outputs = read_reference_file(str(path), space, None)
    assert inputs.shape == (4, 3) and outputs is None
    np.save(path, np.zeros((4, 2)))
    with pytest.raises(ReferenceFileError, match="3 columns"):
        read_reference_file(str(path), space, None)


def test_a_csv_reference_maps_columns_by_feature_name(tmp_path: Path) -> None:
    path = tmp_path / "ref.csv"
    path.write_text("x[1],note,city,x[0]\n1.5,ignored,b,0.5\n2.5,ignored,a,\n")
    inputs, _ = read_reference_file(str(path), features(), None)
    np.testing.assert_array_equal(inputs[:, 0], [0, 1])  # city codes: b first seen
    np.testing.assert_array_equal(inputs[:, 6], [1.5, 2.5])
    assert inputs[0, 5] == 0.5 and np.isnan(inputs[1, 5])
    path.write_text("x[0],city\n1,a\n2,b\n")
    with pytest.raises(ReferenceFileError, match=r"lacks features x\[1\]"):
        read_reference_file(str(path), features(), None)


def test_an_unreadable_reference_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ReferenceFileError, match=r"absent\.npy"):
        read_reference_file(str(tmp_path / "absent.npy"), features(), None)
