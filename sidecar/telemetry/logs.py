"""Log lines as text or as one JSON object per line (`--log-format json`, for log pipelines); the analysis workers
log the same way as the main process, with the worker named."""

from __future__ import annotations

import json
import logging
import time

TEXT = "text"
JSON = "json"
FORMATS = (TEXT, JSON)


class JsonFormatter(logging.Formatter):
    """`{"time": "...Z", "level": ..., "logger": ..., "process": ..., "message": ..., "exception"?: ...}`."""

    def __init__(self, process: str = "main") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "process": self.process,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str | int, log_format: str = TEXT, process: str | None = None) -> None:
    """The root logger's level and format (once per process; later calls replace the handler)."""
    handler = logging.StreamHandler()
    if log_format == JSON:
        handler.setFormatter(JsonFormatter(process or "main"))
    else:
        prefix = f"{process} " if process else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)


def current_format() -> str:
    """`json` when this process logs JSON, else `text` (what the analysis workers are told to use)."""
    return JSON if any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers) else TEXT
