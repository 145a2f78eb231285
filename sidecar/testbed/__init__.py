"""A TF-Serving-compatible model server for the demo and the tests: it stands where TF Serving stands.

Small models (`classifier`, `regressor`, `multi`, `pair`; versions 1 and 2; labels `stable` -> 1, `canary` -> 2)
are trained at start-up on the generating rules in `sidecar.testbed.data`, exported as SavedModels and served
through their signatures over TF Serving's REST and gRPC APIs and the Open Inference Protocol (V2). Without
TensorFlow a numpy backend serves the same signatures. Run it with `python -m sidecar.testbed.cli` or in-process
with `start_testbed`.
"""

from sidecar.testbed.server import Testbed, start_testbed

__all__ = ["Testbed", "start_testbed"]
