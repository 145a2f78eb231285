"""What the prediction store keeps about each predicted instance besides its prediction: the request's version, the
outlier detectors' scores and flags, and the instance's data-quality issues (`PredictionDetails`).

`ingest` notes, for every exchange whose predictions it keeps, where the exchange's instances lie among the
batch's analysed rows; once the detectors and the quality checks have run on those rows, `build` reads each
instance's row. Flags and issues become short codes from small tables, so a batch's columns hold shared strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import numpy as np

from sidecar.detectors.quality import ROW_ABOVE_MAX, ROW_BELOW_MIN, ROW_INF, ROW_MISSING
from sidecar.messages.results import ISSUE_CODES, OUTLIER_CODES, QUALITY_ISSUES, PredictionDetails
from sidecar.worker.buckets import OutlierRows

_ISSUE_BIT = {issue: 1 << position for position, issue in enumerate(QUALITY_ISSUES)}
_ROW_BITS = ((ROW_MISSING, _ISSUE_BIT["nan"]), (ROW_INF, _ISSUE_BIT["inf"]),
             (ROW_BELOW_MIN, _ISSUE_BIT["below_range"]), (ROW_ABOVE_MAX, _ISSUE_BIT["above_range"]))
_DETECTORS = tuple(OUTLIER_CODES)
NOT_SCORED, SCORED, FLAGGED = 0, 1, 2


def exchange_issue_bits(issues: Mapping[tuple[str, str], int]) -> int:
    """The issues an exchange's schema check found (missing input, shape, dtype): every instance of it has them."""
    bits = 0
    for (_, issue) in issues:
        bits |= _ISSUE_BIT.get(issue, 0)
    return bits


@cache
def issue_code(bits: int) -> str:
    return "".join(ISSUE_CODES[issue] for issue in QUALITY_ISSUES if bits & _ISSUE_BIT[issue])


@cache
def outlier_code(states: int) -> str:
    """The code of one instance's detector states, packed base 3 in `OUTLIER_CODES` order."""
    letters = []
    for detector in _DETECTORS:
        states, state = divmod(states, 3)
        if state == SCORED:
            letters.append(OUTLIER_CODES[detector])
        elif state == FLAGGED:
            letters.append(OUTLIER_CODES[detector].upper())
    return "".join(letters)


class DetailsBuilder:
    """Collects, per predicted instance in order, its version, its exchange's issues and its analysed row."""

    def __init__(self) -> None:
        self.versions: list[str] = []
        self.rows: list[int] = []  # the instance's row among the batch's analysed rows, -1 when it has none
        self.bits: list[int] = []  # issues of the instance's exchange

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, instances: int, version: str, bits: int, first_row: int | None, rows: int) -> None:
        """`instances` predicted instances of one exchange whose `rows` analysed rows start at `first_row` (None: the
        exchange has no analysed row)."""
        self.versions.extend([version] * instances)
        self.bits.extend([bits] * instances)
        if first_row is None:
            self.rows.extend([-1] * instances)
        else:
            self.rows.extend(first_row + index if index < rows else -1 for index in range(instances))

    def build(self, verdicts: Mapping[str, OutlierRows], row_issues: np.ndarray | None) -> PredictionDetails:
        """The details, given the outlier detectors' verdicts and the quality checks' `row_issues` (ROW_* bits per
        analysed row), both row-aligned with the batch's analysed rows."""
        rows = np.asarray(self.rows, dtype=np.int64)
        has_row = rows >= 0
        at = np.where(has_row, rows, 0)
        bits = np.asarray(self.bits, dtype=np.int64)
        if row_issues is not None and row_issues.size:
            found = np.where(has_row, row_issues[at], 0)
            for row_bit, issue_bit in _ROW_BITS:
                bits |= np.where(found & row_bit, issue_bit, 0)
        states = np.zeros(rows.shape[0], dtype=np.int64)
        scores: dict[str, list[float]] = {}
        for position, detector in enumerate(_DETECTORS):
            verdict = verdicts.get(detector)
            if verdict is None or verdict.scores is None:
                continue
            scored = has_row & verdict.scored[at]
            flagged = scored & verdict.outliers[at]
            states += np.where(flagged, FLAGGED, np.where(scored, SCORED, NOT_SCORED)) * 3 ** position
            scores[detector] = np.where(scored, verdict.scores[at], np.nan).tolist()
        return PredictionDetails(self.versions, [outlier_code(state) for state in states.tolist()],
                                 [issue_code(bit) for bit in bits.tolist()], scores)
