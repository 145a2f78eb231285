"""Monitoring sidecar for TensorFlow Serving and Open Inference Protocol model servers."""

__all__ = ["__version__"]
__version__ = "0.2.0"
