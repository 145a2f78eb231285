"""The explain endpoint's and the feature importance's main-process side loads neither numpy nor shap: they load in
the explainer processes."""

from __future__ import annotations

import subprocess
import sys


def test_the_explain_service_imports_neither_numpy_nor_shap() -> None:
    script = ("import sys, sidecar.explain.service, sidecar.explain.settings, sidecar.explain.importance\n"
              "import sidecar.app\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'shap', 'scipy')))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"
