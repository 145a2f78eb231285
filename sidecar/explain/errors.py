"""The failures an explanation reports to its client: a status and a message for `{"error": ...}`; they cross the
explainer process's boundary intact."""

from __future__ import annotations


class ExplainError(Exception):
    """A failure the client is told about: `status` and a message for `{"error": ...}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[ExplainError], tuple[int, str]]:  # crosses the process boundary
        return ExplainError, (self.status, str(self))


class ImportanceError(ExplainError):
    """An importance run that failed after it had made `model_calls` predict calls (they count all the same);
    `unsupported`: the model cannot be explained at all (inputs that are not numbers, no TF Serving REST predict
    route), so no later run can do better."""

    def __init__(self, status: int, message: str, model_calls: int, unsupported: bool = False) -> None:
        super().__init__(status, message)
        self.model_calls = model_calls
        self.unsupported = unsupported

    def __reduce__(self) -> tuple[type[ExplainError], tuple[int, str, int, bool]]:  # type: ignore[override]
        return ImportanceError, (self.status, str(self), self.model_calls, self.unsupported)


class UnexplainableError(ExplainError):
    """The model's inputs cannot be perturbed (strings, encoded images): a 400 for a request, and for the feature
    importance a decision that holds for the model."""


class NoPredictRouteError(ExplainError):
    """The model server answered the TF Serving REST predict route with 404 or 405: it does not serve the model there
    (an Open Inference Protocol (V2) server, say): a 502 for a request, and for the feature importance a decision
    that holds for the model."""
