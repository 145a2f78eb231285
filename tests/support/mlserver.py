"""Run Seldon's MLServer (a real Open Inference Protocol V2 server) with its scikit-learn runtime on loopback.

    with running_mlserver(tmp_path) as mlserver:
        V2 requests go to mlserver.rest_url and mlserver.grpc_target

MLServer lives in its own virtualenv, `.venv-mlserver` at the repository root (`scripts/mlserver_env.sh` builds
it), so its pins never meet ours; without it the caller is skipped. The models are trained inside that virtualenv
(so the joblib pickles match its scikit-learn), on a fixed-seed `make_classification` data set of three classes:

- `clf-proba`: logistic regression; its model-settings set `parameters.extra.predict_fn: predict_proba`, which
  mlserver-sklearn uses as the requested output when a request names none, so it answers one FP64 tensor
  `predict_proba` of shape [n, 3] (class probabilities);
- `clf-label`: a decision tree with no such setting, so it answers the runtime's default, `predict`: one INT64
  class id per instance.

The training script also writes what scikit-learn itself predicts for the held-out rows and its accuracy there
(`data.npz`, `expected.json`), so a test can compare the sidecar's view with scikit-learn's own numbers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-mlserver"
CLASSES = 3
FEATURES = 6
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 15.0
START_ATTEMPTS = 3  # the ports are picked before MLServer binds them: another process may take one meanwhile

# Runs with .venv-mlserver/bin/python; argv[1] is the model repository to fill.
TRAIN_SCRIPT = textwrap.dedent("""
    import json, pathlib, sys

    import joblib
    import numpy as np
    import sklearn
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import train_test_split
    from sklearn.tree import DecisionTreeClassifier

    out = pathlib.Path(sys.argv[1])
    X, y = make_classification(n_samples=1200, n_features=6, n_informative=4, n_redundant=1, n_classes=3,
                               n_clusters_per_class=1, class_sep=1.0, flip_y=0.05, random_state=7)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=400, random_state=7, stratify=y)
    models = {
        "clf-proba": (LogisticRegression(max_iter=1000).fit(X_train, y_train), {"predict_fn": "predict_proba"}),
        "clf-label": (DecisionTreeClassifier(max_depth=4, random_state=7).fit(X_train, y_train), None),
    }
    expected = {"sklearn_version": sklearn.__version__, "models": {}}
    arrays = {"X_train": X_train, "y_train": y_train, "X_test": X_test, "y_test": y_test}
    for name, (model, extra) in models.items():
        folder = out / name
        folder.mkdir(parents=True)
        joblib.dump(model, folder / "model.joblib")
        parameters = {"uri": "./model.joblib"}
        if extra:
            parameters["extra"] = extra
        settings = {"name": name, "implementation": "mlserver_sklearn.SKLearnModel", "parameters": parameters}
        (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))
        predicted = model.predict(X_test)
        arrays[f"{name}/predict"] = predicted
        arrays[f"{name}/predict_proba"] = model.predict_proba(X_test)
        expected["models"][name] = {"accuracy": float(accuracy_score(y_test, predicted)),
                                    "classes": model.classes_.tolist()}
    np.savez(out / "data.npz", **arrays)
    (out / "expected.json").write_text(json.dumps(expected, indent=2))
""")


@dataclass(frozen=True)
class ModelExpectation:
    """What scikit-learn itself says about one model on the held-out rows."""

    accuracy: float
    predict: np.ndarray  # class ids, one per held-out row
    predict_proba: np.ndarray  # [rows, classes]


@dataclass(frozen=True)
class MLServerProcess:
    host: str
    http_port: int
    grpc_port: int
    process: subprocess.Popen[bytes]
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray  # held out: no model saw these rows in training
    y_test: np.ndarray
    models: dict[str, ModelExpectation]
    sklearn_version: str

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"


def mlserver_python() -> Path:
    """The MLServer virtualenv's interpreter; skips the calling test when it has not been built."""
    python = VENV / "bin" / "python"
    if not (python.exists() and (VENV / "bin" / "mlserver").exists()):
        pytest.skip(f"MLServer virtualenv {VENV.name} not found: run scripts/mlserver_env.sh "
                    "(scripts/test.sh does)")
    return python


def _clean_env() -> dict[str, str]:
    """Our environment without MLSERVER_* settings or virtualenv and Python path leftovers of the test process."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    env = {key: value for key, value in os.environ.items() if key not in drop and not key.startswith("MLSERVER_")}
    env["PATH"] = os.pathsep.join([str(VENV / "bin"), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def train_models(repository: Path) -> None:
    """Train and save both models, with their model-settings.json and the expectations, into `repository`."""
    python = mlserver_python()
    repository.mkdir(parents=True, exist_ok=True)
    script = repository.parent / "train_models.py"
    script.write_text(TRAIN_SCRIPT)
    result = subprocess.run([str(python), str(script), str(repository)], capture_output=True, text=True,
                            env=_clean_env(), cwd=repository.parent, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"training in {VENV.name} failed ({result.returncode}):\n{result.stderr[-4000:]}")


def _load_expectations(repository: Path) -> tuple[dict[str, np.ndarray], dict[str, ModelExpectation], str]:
    expected = json.loads((repository / "expected.json").read_text())
    with np.load(repository / "data.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    models = {name: ModelExpectation(accuracy=entry["accuracy"], predict=arrays[f"{name}/predict"],
                                     predict_proba=arrays[f"{name}/predict_proba"])
              for name, entry in expected["models"].items()}
    return arrays, models, str(expected["sklearn_version"])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to MLServer's process group (it may have children), SIGKILL if it is still there after a while."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # anything of its group left behind


def _start(workdir: Path, repository: Path, host: str, timeout: float, log_path: Path) -> tuple[
        subprocess.Popen[bytes], int, int]:
    """Start `mlserver start` on free ports and wait for readiness; (process, http port, grpc port)."""
    http_port, grpc_port = free_port(host), free_port(host)
    while grpc_port == http_port:
        grpc_port = free_port(host)
    settings: dict[str, Any] = {
        "host": host, "http_port": http_port, "grpc_port": grpc_port,
        "metrics_endpoint": None,  # no metrics server (it would want a port of its own)
        "parallel_workers": 0,  # inference in the server process: quicker to start, nothing to orphan
        "debug": False,
    }
    (repository / "settings.json").write_text(json.dumps(settings, indent=2))
    log = log_path.open("ab")
    try:
        process = subprocess.Popen([str(VENV / "bin" / "mlserver"), "start", str(repository)], cwd=workdir,
                                   env=_clean_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()
    url = f"http://{host}:{http_port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ChildProcessError(f"mlserver exited with code {process.returncode} before it was ready")
        if _ready(url):
            return process, http_port, grpc_port
        time.sleep(0.25)
    _stop(process)
    raise TimeoutError(f"mlserver not ready after {timeout:.0f} s")


def _tail(path: Path, limit: int = 4000) -> str:
    return path.read_text(errors="replace")[-limit:] if path.exists() else ""


@contextlib.contextmanager
def running_mlserver(tmp_path: Path, host: str = "127.0.0.1",
                     timeout: float = START_TIMEOUT_SECONDS) -> Iterator[MLServerProcess]:
    """Train the models in MLServer's virtualenv, start `mlserver start` on free loopback ports, yield it ready
    (`GET /v2/health/ready` answered 200), stop it on exit. Skips when `.venv-mlserver` is missing."""
    mlserver_python()
    repository = tmp_path / "models"
    train_models(repository)
    arrays, models, sklearn_version = _load_expectations(repository)
    log_path = tmp_path / "mlserver.log"
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            process, http_port, grpc_port = _start(tmp_path, repository, host, timeout, log_path)
            break
        except ChildProcessError as exc:  # most likely a port taken between picking and binding it: try again
            if attempt == START_ATTEMPTS:
                raise RuntimeError(f"{exc}; log:\n{_tail(log_path)}") from None
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}; log:\n{_tail(log_path)}") from None
    try:
        yield MLServerProcess(host, http_port, grpc_port, process, X_train=arrays["X_train"],
                              y_train=arrays["y_train"], X_test=arrays["X_test"], y_test=arrays["y_test"],
                              models=models, sklearn_version=sklearn_version)
    finally:
        _stop(process)
        if process.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
            print(f"mlserver exited with code {process.returncode}; log:\n{_tail(log_path)}", file=sys.stderr)
