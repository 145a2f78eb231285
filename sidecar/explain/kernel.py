"""KernelSHAP of one model, computed in an explainer process (never in the proxy's process).

The model is a black box reached through the model server's own predict route, on one keep-alive connection per
explainer process (the explainer pool's size bounds the connections). The background is a sample of the model's
reference as the analysis saved it (`<state_dir>/models/<name>/reference.npz`, under the analysis name:
`model@version` for a version analysed apart, else the model's, which is also the fallback, said in the answer,
while the version has none). Each instance is explained for one output: the class the model gave it (a probability
vector) or the value (a scalar output), so the attributions sum to that output minus its mean over the background.
The rows KernelSHAP asks about are sent in the body shape the client used, and the attributions are per feature as
the analysis names them (`bodies`). numpy and shap are imported here, inside the calls, so importing this module
(to name the function a process runs) loads neither.
"""

from __future__ import annotations

import http.client
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sidecar.explain.errors import ExplainError, ImportanceError, NoPredictRouteError, UnexplainableError

if TYPE_CHECKING:
    from sidecar.explain.bodies import BodyShape
    from sidecar.worker.features import InputFeatures

__all__ = ["ExplainError", "ImportanceError", "ImportanceJob", "Job", "explain", "importance", "lower_priority"]


def lower_priority(priority: str) -> None:
    """An explainer process's initializer: yield the CPU to the proxy as the analysis workers do."""
    from sidecar.worker.process import lower_priority as lower

    lower(priority)


class Job(NamedTuple):
    model: str  # the analysis name: whose saved reference (rows and input schema) the explanation uses
    path: str  # the model's predict route at the model server
    body: dict[str, Any]  # the client's predict body
    upstream: tuple[str, int]
    state_dir: str
    background: int
    samples: int
    max_model_calls: int
    batch_rows: int
    timeout: float
    model_share: float = 1.0  # the most of the time the explanation may keep the model server busy
    fallback: str = ""  # the analysis name whose reference is used when `model` has none ("": none; a version's model)


_connection: http.client.HTTPConnection | None = None  # this explainer process's connection to the model server


def _post(upstream: tuple[str, int], path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    global _connection
    for attempt in (0, 1):  # a keep-alive connection the server closed is opened again once
        if _connection is None or (_connection.host, _connection.port) != upstream:
            _connection = http.client.HTTPConnection(*upstream, timeout=timeout)
        try:
            _connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = _connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            _connection.close()
            _connection = None
            if attempt:
                raise ExplainError(502, f"the model server did not answer the explanation's predict call: "
                                        f"{type(exc).__name__}: {exc}") from None
    raise AssertionError("unreachable")


class _Model:
    """The model as a function of rows, counting its predict calls against the budget."""

    def __init__(self, job: Job | ImportanceJob, shape: BodyShape, output: str | None) -> None:
        self.job = job
        self.path = job.path
        self.shape = shape  # the body the client sent, rebuilt around each batch of rows
        self.output = output  # the analysed output, when the model has several
        self.calls = 0
        self._busy = 0.0  # how long the latest predict call took

    def _pace(self) -> None:
        """Before the next call, wait so that calls take at most `model_share` of the time: a model server that also
        answers clients gets idle gaps between the explanation's calls for their predictions."""
        share = self.job.model_share
        if share < 1.0 and self._busy:
            time.sleep(self._busy * (1.0 - share) / share)

    def __call__(self, rows: Any) -> Any:
        import numpy as np

        from sidecar.explain.bodies import answer_values

        parts = []
        for start in range(0, len(rows), self.job.batch_rows):
            if self.calls >= self.job.max_model_calls:
                raise ExplainError(422, f"the explanation needs more than {self.job.max_model_calls} predict calls "
                                        "to the model (explain_max_model_calls); ask for fewer instances or raise "
                                        "the budget")
            self.calls += 1
            chunk = rows[start:start + self.job.batch_rows]
            body = json.dumps(self.shape.body(np.asarray(chunk, dtype=np.float64))).encode()
            self._pace()
            started = time.monotonic()
            status, answer = _post(self.job.upstream, self.path, body, self.job.timeout)
            self._busy = time.monotonic() - started
            if status != 200:
                raise _refused(self.job.upstream, self.path, status, answer)
            try:
                document = json.loads(answer)
            except ValueError:
                document = None
            if not isinstance(document, dict):
                raise ExplainError(502, "the model server's answer to the explanation's predict call is not a JSON "
                                        "object")
            values = answer_values(document, self.output)
            if values.shape[0] != len(chunk):
                raise ExplainError(502, f"the model server answered {values.shape[0]} predictions for {len(chunk)} "
                                        "instances")
            parts.append(values)
        return np.concatenate(parts, axis=0)


NO_ROUTE = (404, 405)  # the model server does not serve the model at the TF Serving REST predict route


def _refused(upstream: tuple[str, int], path: str, status: int, answer: bytes) -> ExplainError:
    """The error of a predict call the model server answered with `status`, naming the URL called."""
    host, port = upstream
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"
    said = answer[:200].decode("utf-8", "replace")
    if status in NO_ROUTE:
        return NoPredictRouteError(502, f"the model server answered the explanation's predict call POST {url} with "
                                        f"HTTP {status} ({said}): the explainer speaks the TF Serving REST API "
                                        "(/v1/models/{m}:predict) only, so a model the server does not serve there "
                                        "(an Open Inference Protocol (V2) server, such as MLServer) is not explained")
    return ExplainError(502, f"the model server answered the explanation's predict call POST {url} with HTTP "
                             f"{status}: {said}")


class _Saved(NamedTuple):
    reference: Any  # (n, features) the complete rows of the model's saved reference
    features: InputFeatures | None  # the input schema the analysis learned (None: an older or foreign reference)
    output: str | None  # the output the analysis chose


def _saved(job: Job | ImportanceJob) -> _Saved:
    """The model's saved reference (rows, schema, analysed output); a 409 when there is none yet."""
    import numpy as np

    from sidecar.worker.features import InputFeatures
    from sidecar.worker.reference import model_dir

    directory = model_dir(Path(job.state_dir), job.model)
    try:
        with np.load(directory / "reference.npz", allow_pickle=False) as data:
            reference = np.asarray(data["inputs"], dtype=np.float64)
    except (OSError, KeyError, ValueError):
        raise ExplainError(409, f"model {job.model!r} has no reference yet (the analysis saves one once it has "
                                "collected reference_size instances); explanations are measured against it") from None
    if reference.ndim != 2:
        raise ExplainError(400, f"model {job.model!r}'s reference is not a matrix of numbers")
    reference = reference[np.all(np.isfinite(reference), axis=1)]
    if reference.shape[0] == 0:
        raise ExplainError(409, f"model {job.model!r}'s reference has no complete row")
    features: InputFeatures | None = None
    output: str | None = None
    try:
        meta = json.loads((directory / "reference.json").read_text(encoding="utf-8"))
        features = InputFeatures.from_meta(meta["features"])
        output = (meta.get("output") or {}).get("name")
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        features = None
    if features is not None and features.width != reference.shape[1]:
        features = None
    return _Saved(reference, features, output)


def _evenly(rows: Any, count: int) -> Any:
    """At most `count` rows spread evenly over `rows`."""
    import numpy as np

    picked = np.linspace(0, rows.shape[0] - 1, min(count, rows.shape[0])).round().astype(int)
    return rows[np.unique(picked)]


class _Attributions(NamedTuple):
    outputs: Any  # (n, k) the model's outputs for the instances
    explained: Any  # (n,) the output explained per instance
    values: Any  # (n, d) the attributions to the explained output
    base: Any  # (k,) the outputs' mean over the background
    coalitions: int


def _attributions(model: _Model, background: Any, instances: Any, samples: int) -> _Attributions:
    import numpy as np

    try:
        import shap
    except ImportError:
        raise ExplainError(501, "explanations need the shap library: pip install 'tfs-sidecar[explain]'") from None
    outputs = model(instances)
    explained = outputs.argmax(axis=1) if outputs.shape[1] > 1 else np.zeros(len(instances), dtype=int)
    explainer = shap.KernelExplainer(model, background, link="identity")
    width = instances.shape[1]
    samples = min(samples, 2 ** width - 2 if width < 30 else samples)
    values = np.asarray(explainer.shap_values(instances, nsamples=max(samples, 2), silent=True), dtype=np.float64)
    if values.ndim == 2:
        values = values[:, :, None]
    base = np.atleast_1d(np.asarray(explainer.expected_value, dtype=np.float64))
    chosen = values[np.arange(len(instances)), :, explained]
    return _Attributions(outputs, explained, chosen, base,
                         int(2 ** width - 2 if samples >= 2 ** width - 2 else samples))


def _background_source(job: Job) -> tuple[_Saved, dict[str, Any]]:
    """The saved reference the explanation is measured against: `job.model`'s, else (a version analysed apart with no
    reference yet) `job.fallback`'s, and what the answer says of it."""
    try:
        return _saved(job), {"source": "reference", "reference": job.model}
    except ExplainError as missing:
        if missing.status != 409 or not job.fallback:
            raise
    try:
        saved = _saved(job._replace(model=job.fallback))
    except ExplainError as also:
        if also.status != 409:
            raise
        raise ExplainError(409, f"neither {job.model!r} nor {job.fallback!r} has a reference yet (the analysis saves "
                                "one once it has collected reference_size instances); explanations are measured "
                                "against it") from None
    said = (f"{job.model!r} has no reference yet (its version is analysed apart and has not collected "
            f"reference_size instances): the explanation is measured against the reference of {job.fallback!r}")
    return saved, {"source": "reference", "reference": job.fallback, "fallback_from": job.model, "fallback": said}


def explain(job: Job) -> dict[str, Any]:
    """The explanation of the instances of `job.body`, as the JSON answer; raises `ExplainError`."""
    from sidecar.explain.bodies import request_rows

    try:
        saved, source = _background_source(job)
    except ExplainError as missing:  # what is wrong with the body itself is said first
        if missing.status == 409:
            request_rows(job.body, None)
        raise
    instances, features, shape = request_rows(job.body, saved.features)
    if instances.shape[1] != saved.reference.shape[1]:
        raise ExplainError(400, f"instances have {instances.shape[1]} features but the model's reference has "
                                f"{saved.reference.shape[1]} numeric columns")
    background = _evenly(saved.reference, job.background)
    model = _Model(job, shape, saved.output)
    found = _attributions(model, background, instances, job.samples)
    outputs = found.outputs
    explanations = []
    for row, output in enumerate(found.explained.tolist()):
        explanations.append({
            "prediction": outputs[row].tolist() if outputs.shape[1] > 1 else float(outputs[row, 0]),
            "explained_output": int(output), "output_value": float(outputs[row, output]),
            "base_value": float(found.base[output]),
            "attributions": [_finite(value) for value in found.values[row].tolist()]})
    return {"method": "kernel_shap", "features": list(features.names), "explanations": explanations,
            "background": {**source, "rows": int(background.shape[0])},
            "coalitions": found.coalitions, "model_calls": model.calls}


class ImportanceJob(NamedTuple):
    model: str  # the analysis name: whose reference and recent rows are explained
    path: str  # the predict route of the model that analysis name watches
    upstream: tuple[str, int]  # the model server answering it (a shadow's own, for a shadow)
    state_dir: str
    rows: int  # rows explained from each sample
    background: int
    samples: int
    max_model_calls: int  # what is left of the period's budget
    batch_rows: int
    timeout: float
    model_share: float = 1.0
    rows_of: str = ""  # the analysis name whose saved rows are used ("": `model`'s own; a shadow: its primary's)


def importance(job: ImportanceJob) -> dict[str, Any]:
    """Mean absolute attribution per feature over a sample of the model's recent rows (`recent.npz`, kept by its
    worker) and over as many reference rows, both against the same background; raises `ImportanceError`."""
    import numpy as np

    from sidecar.codec import DEFAULT_INPUT
    from sidecar.explain.bodies import BodyShape, check_explainable
    from sidecar.explain.unchanged import identities
    from sidecar.worker.features import InputFeatures, TensorSpec
    from sidecar.worker.recent import RECENT_FILE
    from sidecar.worker.reference import model_dir, saved_path

    files = job._replace(model=job.rows_of or job.model)
    directory = model_dir(Path(job.state_dir), files.model)
    read = identities([str(saved_path(directory)), str(directory / RECENT_FILE)])  # before reading them
    model: _Model | None = None
    try:
        saved = _saved(files)
        features = saved.features or InputFeatures([TensorSpec(DEFAULT_INPUT, "float64",
                                                                (int(saved.reference.shape[1]),))])
        check_explainable(features)
        model = _Model(job, BodyShape.rows_for(features), saved.output)
        reference = saved.reference
        try:
            with np.load(directory / RECENT_FILE, allow_pickle=False) as data:
                recent = np.asarray(data["inputs"], dtype=np.float64)
                recent_saved = float(data["saved"])
        except (OSError, KeyError, ValueError):
            raise ExplainError(409, "no recent traffic sample yet (the analysis keeps one once the reference is "
                                    "complete)") from None
        if recent.ndim != 2 or recent.shape[1] != reference.shape[1] or recent.shape[0] == 0:
            raise ExplainError(409, "the recent traffic sample does not match the reference's columns")
        background = _evenly(reference, job.background)
        explained = _evenly(reference[::-1], job.rows)  # from the other end: not only the background's own rows
        sample = recent[-job.rows:]
        found = {side: _attributions(model, background, rows, job.samples)
                 for side, rows in (("reference", explained), ("recent", sample))}
    except ExplainError as exc:
        raise ImportanceError(exc.status, str(exc), model.calls if model is not None else 0,
                              unsupported=isinstance(exc, (UnexplainableError, NoPredictRouteError))) from None
    return {"features": list(features.names),
            "reference": [_finite(float(value)) for value in np.abs(found["reference"].values).mean(axis=0)],
            "recent": [_finite(float(value)) for value in np.abs(found["recent"].values).mean(axis=0)],
            "rows": {"reference": int(explained.shape[0]), "recent": int(sample.shape[0]),
                     "background": int(background.shape[0])},
            "recent_saved": recent_saved, "model_calls": model.calls, "files": read}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
