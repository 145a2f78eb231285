"""What the detectors see of a model's input columns: each column one by one, or a projection when they are many.

Up to `max_features` numeric columns, the drift test runs per column and the multivariate detectors (Mahalanobis,
MMD) on the numeric columns. Beyond it, the numeric columns are replaced by a projection learned from the
reference (`sidecar.detectors.projection`: principal components, residual, row mean and spread), so every column still
counts and the tests stay few; categorical columns are always tested one by one. Excluded columns (a text's code
when its summary is analysed, or the other way round) are not analysed.

The projection is fitted on every other reference row and the detectors' reference is the other half, projected:
rows a projection was fitted on lie closer to its components than any later row (the leading components absorb
some of their noise), so an in-sample reference made every clean window look drifted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sidecar.detectors.projection import Projection
from sidecar.detectors.robust import centre_spread
from sidecar.worker.features import CATEGORICAL, NUMERIC

PROJECTION_PREFIX = "projection"


class Layout:
    """Maps raw feature rows (all columns) to the analysed ones; `names` and `kinds` describe the analysed."""

    def __init__(self, names: list[str], kinds: list[str], reference: np.ndarray, max_features: int,
                 components: int) -> None:
        """`reference`: the raw reference rows the projection is fitted on (extreme rows already set aside)."""
        self.numeric_columns = np.array([i for i, kind in enumerate(kinds) if kind == NUMERIC], dtype=np.int64)
        self.categorical_columns = np.array([i for i, kind in enumerate(kinds) if kind == CATEGORICAL],
                                            dtype=np.int64)
        self.projection: Projection | None = None
        if self.numeric_columns.size > max_features:
            rows = reference[::2, self.numeric_columns]
            rows = rows[np.all(np.isfinite(rows), axis=1)]
            if rows.shape[0] >= 2:
                self.projection = Projection.fit(rows, components, centre_spread(rows))
        if self.projection is not None:
            self.columns = self.categorical_columns
            self.names = [names[i] for i in self.columns] + self.projection.names(PROJECTION_PREFIX)
            self.kinds = [CATEGORICAL] * self.columns.size + [NUMERIC] * self.projection.width
        else:
            self.columns = np.sort(np.concatenate([self.numeric_columns, self.categorical_columns]))
            self.names = [names[i] for i in self.columns]
            self.kinds = [kinds[i] for i in self.columns]

    @property
    def projected(self) -> bool:
        return self.projection is not None

    def detector_reference(self, reference: np.ndarray) -> np.ndarray:
        """The raw reference rows the detectors are fitted on: all of them, or with a projection the half it was
        not fitted on."""
        return reference if self.projection is None else reference[1::2]

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Raw rows (n, all columns) -> analysed rows (n, len(names))."""
        kept = raw[:, self.columns]
        if self.projection is None:
            return kept
        return np.concatenate([kept, self.projection.transform(raw[:, self.numeric_columns])], axis=1)

    def describe(self) -> dict[str, Any]:
        if self.projection is None:
            return {"mode": "per_feature", "analysed_columns": len(self.names)}
        return {"mode": "projected", "numeric_columns": int(self.numeric_columns.size),
                "components": int(self.projection.components.shape[0]),
                "summaries": self.names[self.columns.size + self.projection.components.shape[0]:],
                "analysed_columns": len(self.names)}
