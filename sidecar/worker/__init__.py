"""What runs in the analysis worker processes: per-model state, signature, features, reference, windows."""
