"""Outlier scores from a user-provided TensorFlow SavedModel that reconstructs its input (autoencoder or VAE).

The score of a row is the mean squared error between the row and the model's reconstruction of it. The model is
called through its `serving_default` signature (or as a plain callable when it has none); when the signature
returns several tensors, the one shaped like the input is the reconstruction. The threshold is the conformal
(1 - fpr) rank of the reference's scores: the reference should be data the model was not trained on, or the
threshold will be too low. TensorFlow is imported when the detector is built, never at module import, and runs
the model on a GPU when it sees one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from sidecar.detectors.mahalanobis import conformal_threshold
from sidecar.detectors.two_sample import FloatArray, as_matrix

BATCH_ROWS = 4096


class ReconstructionOutlier:
    def __init__(self, model_path: str, reference: npt.ArrayLike, fpr: float = 0.01) -> None:
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"fpr must be in (0, 1), got {fpr}")
        ref = as_matrix(reference)
        ref = ref[np.isfinite(ref).all(axis=1)]
        if ref.shape[0] == 0:
            raise ValueError("the reference has no finite rows to set the threshold from")
        self.model_path = model_path
        self.fpr = fpr
        self.features = ref.shape[1]
        self._model = _SavedModel(model_path)
        self.threshold = conformal_threshold(self.score(ref), fpr)

    def score(self, x: npt.ArrayLike) -> FloatArray:
        """Mean squared reconstruction error per row; NaN for rows with a NaN or infinite value."""
        rows = as_matrix(x)
        if rows.shape[1] != self.features:
            raise ValueError(f"rows have {rows.shape[1]} features, the reference has {self.features}")
        scores = np.full(rows.shape[0], np.nan)
        finite = np.flatnonzero(np.isfinite(rows).all(axis=1))
        for start in range(0, finite.size, BATCH_ROWS):
            chosen = finite[start:start + BATCH_ROWS]
            reconstruction = self._model.reconstruct(rows[chosen])
            scores[chosen] = ((reconstruction - rows[chosen]) ** 2).mean(axis=1)
        return scores

    def predict(self, x: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        with np.errstate(invalid="ignore"):
            return self.score(x) > self.threshold  # type: ignore[no-any-return]


class _SavedModel:
    def __init__(self, path: str) -> None:
        import tensorflow as tf

        self.tf: Any = tf
        try:
            self.loaded = tf.saved_model.load(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load the SavedModel at {path!r}: {exc}") from exc
        signatures = getattr(self.loaded, "signatures", {})
        self.signature = signatures.get("serving_default") if signatures else None
        if self.signature is not None:
            _, inputs = self.signature.structured_input_signature
            if len(inputs) != 1:
                raise ValueError(f"the SavedModel signature takes {len(inputs)} inputs; a reconstruction model "
                                 "takes one")
            (self.input_name, spec), = inputs.items()
            self.dtype = spec.dtype
        elif callable(self.loaded):
            self.input_name, self.dtype = "", tf.float32
        else:
            raise ValueError(f"the SavedModel at {path!r} has no serving_default signature and is not callable")

    def reconstruct(self, rows: FloatArray) -> FloatArray:
        tf = self.tf
        batch = tf.constant(rows, dtype=self.dtype)
        output = self.loaded(batch) if self.signature is None else self.signature(**{self.input_name: batch})
        return _reconstruction(output, rows.shape)


def _reconstruction(output: Any, shape: tuple[int, ...]) -> FloatArray:
    """The output tensor with the input's shape (a VAE may also return means, variances, latents)."""
    candidates = list(output.values()) if isinstance(output, dict) else (
        list(output) if isinstance(output, (list, tuple)) else [output])
    for tensor in candidates:
        array = np.asarray(tensor.numpy() if hasattr(tensor, "numpy") else tensor, dtype=np.float64)
        if array.shape == shape:
            return array
        if array.ndim > 2 and array.shape[0] == shape[0] and int(np.prod(array.shape[1:])) == shape[1]:
            return array.reshape(shape)
    shapes = [tuple(getattr(t, "shape", ())) for t in candidates]
    raise ValueError(f"no model output has the input's shape {shape}; outputs: {shapes}")
