"""Logging for every service: ``HH:MM:SS service LEVEL message`` to the terminal and to
``<log_dir>/<service>.log`` (rotated at 5 MB, 3 backups). A filter masks the access token
in every record, whatever code logged it.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path


class RedactFilter(logging.Filter):
    """Replace each secret string in a log record's final message with ``***``."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if any(s in message for s in self.secrets):
                for s in self.secrets:
                    message = message.replace(s, "***")
                record.msg, record.args = message, None
        return True


def setup(service: str, log_dir: Path, secrets: list[str] | None = None,
          level: int = logging.INFO) -> logging.Logger:
    """Configure the root logger for ``service`` and return the service's logger.

    Creates ``log_dir`` if needed. ``secrets`` (e.g. the access token) are masked.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter(f"%(asctime)s {service:<16} %(levelname)-7s %(message)s", "%H:%M:%S")
    redact = RedactFilter(secrets or [])
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    for handler in (
        logging.StreamHandler(sys.stderr),
        logging.handlers.RotatingFileHandler(log_dir / f"{service}.log", maxBytes=5_000_000,
                                             backupCount=3, encoding="utf-8"),
    ):
        handler.setFormatter(fmt)
        handler.addFilter(redact)
        root.addHandler(handler)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(service)
