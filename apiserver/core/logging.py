"""JSON logs with the request id on every line, and a filter that redacts secrets and keys."""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import logging.handlers
import queue
import time

from spatialforge.apiserver.core.security import SECRET_PATTERN

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
REDACTED = "[REDACTED]"


class RedactFilter(logging.Filter):
    """Replaces configured secrets and anything shaped like a key in every record."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self.secrets = [s for s in (secrets or []) if s]

    def add(self, secrets: list[str]) -> None:
        self.secrets.extend(s for s in secrets if s and s not in self.secrets)

    def _clean(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, REDACTED)
        return SECRET_PATTERN.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        cleaned = self._clean(message)
        if cleaned != message:
            # Only a record that held a secret loses its args: formatters that read them
            # (uvicorn's access log) keep working for everything else.
            record.msg = cleaned
            record.args = ()
        if record.exc_info:
            record.exc_text = self._clean(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
                 "request_id": getattr(record, "request_id", request_id.get())}
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry)


_filter = RedactFilter()


_installed = False


def setup(secrets: list[str], json_logs: bool = True, level: int = logging.INFO) -> None:
    """Redact every log record of the process at creation (any logger, any handler), and give
    our loggers a JSON handler. Idempotent; later calls add secrets to redact."""
    global _installed
    _filter.add(secrets)
    if not _installed:
        previous = logging.getLogRecordFactory()

        def factory(*args, **kwargs):  # type: ignore[no-untyped-def]
            record = previous(*args, **kwargs)
            _filter.filter(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
    root = logging.getLogger("spatialforge.apiserver")
    root.setLevel(level)
    if json_logs and not any(isinstance(h, logging.handlers.QueueHandler) for h in root.handlers):
        root.addHandler(_off_loop_handler())


def _off_loop_handler() -> logging.Handler:
    """A QueueHandler: the event loop only puts the (redacted) record on a queue; a listener
    thread formats it as JSON and writes it. A write to stderr blocks when the pipe is full
    (a slow log collector), and that must never hold the event loop."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    stream = logging.StreamHandler()
    stream.setFormatter(JsonFormatter())
    listener = logging.handlers.QueueListener(records, stream, respect_handler_level=True)
    listener.start()
    atexit.register(listener.stop)  # flushes what is queued at exit
    return logging.handlers.QueueHandler(records)

# Headers a dependency wants on the response (e.g. X-RateLimit-*); the middleware sets a
# fresh dict per request and adds its contents when the response starts.
response_headers: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("response_headers")
