"""How the servers log: human lines by default, one JSON object a line with
`WORKFLOW_LOG_FORMAT=json` (contract section 10), through the standard `logging` machinery.

A JSON line has `time` (UTC, ISO 8601), `level`, `logger` and `message`, `exception` when
there is one, and `execution_id`, `task_id` and `workflow_id` where they apply: from the
record (`extra=`), else from the context variables below, which the engine sets while a runner
runs an execution and a task, and a SAQ worker while it runs a task. So whatever logs inside
(an action, an executor, a library) is tied to its execution too.

uvicorn's loggers go through the same handler (`uvicorn_log_config`), and so do grpc's (it
logs through `logging`; the C core's own lines, rare at its default verbosity, bypass it).
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import time
from contextvars import ContextVar
from typing import Any

LOG_FORMAT = "WORKFLOW_LOG_FORMAT"
FORMATS = ("human", "json")
HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

EXECUTION_ID: ContextVar[int | None] = ContextVar("execution_id", default=None)
TASK_ID: ContextVar[int | None] = ContextVar("task_id", default=None)
WORKFLOW_ID: ContextVar[int | None] = ContextVar("workflow_id", default=None)
CONTEXT = (("execution_id", EXECUTION_ID), ("task_id", TASK_ID), ("workflow_id", WORKFLOW_ID))


class JsonFormatter(logging.Formatter):
    """One JSON object a line. ASCII-only (json's escapes), so that any message, even one
    with lone surrogates or newlines, stays one line a parser reads."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, variable in CONTEXT:
            value = getattr(record, name, None)
            if value is None:
                value = variable.get()
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def _utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def log_format() -> str:
    """WORKFLOW_LOG_FORMAT: `human` (the default) or `json`; anything else raises ValueError."""
    from models.settings import load_env_file

    load_env_file()
    value = (os.environ.get(LOG_FORMAT) or "human").strip().lower()
    if value not in FORMATS:
        raise ValueError(f"{LOG_FORMAT} must be human or json, not {value!r}")
    return value


def logging_config(form: str, verbose: bool = False) -> dict[str, Any]:
    """The whole process's logging (`logging.config.dictConfig`): one handler on stderr, at
    INFO, in `form`. SAQ logs two lines per job at INFO (enqueued, processing, finished): at
    hundreds of tasks a second that is most of a worker's output and a fifth of its CPU, so
    its INFO shows with `verbose` only."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter} if form == "json" else {"format": HUMAN_FORMAT}
    )
    # uvicorn's loggers hand their records to the root's handler (no handler of their own).
    passing_on = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": "INFO"},
        "loggers": {
            "saq": {"level": "INFO" if verbose else "WARNING"},
            "uvicorn": {**passing_on, "level": "INFO"},
            "uvicorn.error": {**passing_on, "level": "INFO"},
            "uvicorn.access": {**passing_on, "level": "INFO"},
        },
    }


def configure(verbose: bool = False) -> None:
    """Set up this process's logging as WORKFLOW_LOG_FORMAT says. Raises ValueError for a
    format it does not know."""
    form = log_format()
    logging.config.dictConfig(logging_config(form, verbose))
    if form == "json":
        # Python's warnings as records too, not as lines of their own on stderr.
        logging.captureWarnings(True)


def uvicorn_log_config(verbose: bool = False) -> dict[str, Any] | None:
    """What `uvicorn.run(log_config=...)` gets: in JSON, the process's own configuration
    again (uvicorn applies it when it starts), so that its lines are JSON through the same
    handler; in human form, uvicorn's own default, which keeps its look as before."""
    form = log_format()
    if form == "json":
        return logging_config(form, verbose)
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG
