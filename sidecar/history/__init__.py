"""The history: per-model buckets of input, output, label, drift and outlier statistics, stored in the state
directory, served by `GET /v1/monitor/{model}/history` and exported to Anodot."""
