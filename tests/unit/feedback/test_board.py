"""The board routes each join to its model's quality and remembers what an `auto` model turned out to be."""

from __future__ import annotations

from sidecar.feedback.board import QualityBoard
from sidecar.feedback.join import Join


def join(model: str, task: str, truth: str | float, predicted: str | float) -> Join:
    return Join(("id", 0), model, task, truth, predicted, 0)


def test_joins_reach_their_model_and_task_window() -> None:
    board = QualityBoard(window=10, class_cap=5, model_label_cap=10)
    board.record(join("c", "binary", "1", "1"))
    board.record(join("r", "regression", 2.0, 2.5))
    classifier, regressor = board.get("c"), board.get("r")
    assert classifier is not None and classifier.classification.report().accuracy == 1.0
    assert regressor is not None and regressor.regression.report().mae == 0.5
    assert board.get("unknown") is None


def test_the_first_joined_task_of_a_model_is_remembered() -> None:
    board = QualityBoard(window=10, class_cap=5, model_label_cap=10)
    board.record(join("m", "binary", "1", "0"))
    board.record(join("m", "regression", 1.0, 0.0))
    assert board.auto_tasks == {"m": "binary"}


def test_models_beyond_the_cap_share_the_other_label() -> None:
    board = QualityBoard(window=10, class_cap=5, model_label_cap=1)
    board.record(join("a", "binary", "1", "1"))
    board.record(join("b", "binary", "1", "0"))
    assert set(board.qualities) == {"a", "__other__"}
