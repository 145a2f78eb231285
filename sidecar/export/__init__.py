"""Exporters: the payload log (JSONL file and CloudEvents over HTTP) and the Anodot metrics export.

Entry points: `sidecar.export.payload_log.PayloadLog`, `sidecar.export.anodot_sink.AnodotExporter` and
`sidecar.export.replay.replay_main`. Nothing is imported here so that `sidecar.config` (which reads
`sidecar.export.settings`) stays light.
"""
