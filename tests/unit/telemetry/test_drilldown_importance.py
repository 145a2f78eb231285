"""The importance-weighted drift view: drifted features with their importance, the most important first."""

from __future__ import annotations

from typing import Any

from sidecar.telemetry.drilldown import DrillDown, drifted_by_importance


def feature(name: str, drift: bool) -> dict[str, Any]:
    return {"name": name, "drift": drift, "adjusted_p_value": 0.01 if drift else 0.9}


def test_drifted_features_are_ranked_by_their_importance() -> None:
    detectors = {"feature_drift": {"features": [feature("a", True), feature("b", True), feature("c", False)]},
                 "mmd": {"features": []}}
    importance = [{"feature": "b", "reference": 2.0, "recent": 3.0}, {"feature": "a", "reference": 0.1,
                                                                      "recent": 0.2},
                  {"feature": "c", "reference": 5.0, "recent": 5.0}]
    drifted = drifted_by_importance(detectors, importance)
    assert [item["feature"] for item in drifted] == ["b", "a"]
    assert drifted[0] == {"feature": "b", "detectors": ["feature_drift"], "p_value": 0.01,
                          "importance_recent": 3.0, "importance_reference": 2.0}


class Analysis:
    def monitor(self, model: str, extremes: bool = False) -> dict[str, Any] | None:
        return {"model": model, "detectors": {"feature_drift": {"features": [feature("x", True)]}}}

    def models(self) -> list[str]:
        return ["m"]


class Importance:
    def snapshot(self, model: str) -> dict[str, Any] | None:
        return {"outcome": "ok", "features": [{"feature": "x", "reference": 1.0, "recent": 4.0}]} \
            if model == "m" else None


def test_the_drill_down_shows_the_importance_and_leaves_it_out_without_one() -> None:
    drill = DrillDown(Analysis(), None, None, Importance())
    found = drill.model("m")
    assert found is not None and found["feature_importance"]["drifted"][0]["importance_recent"] == 4.0
    other = drill.model("n")
    assert other is not None and "feature_importance" not in other
    assert "feature_importance" not in (DrillDown(Analysis(), None).model("m") or {})
