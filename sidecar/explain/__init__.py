"""Explanations through the proxy: `POST /v1/models/{m}[/versions/{v}]:explain` answered by the sidecar."""
