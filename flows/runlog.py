"""One line on the console, the whole story in a file: each ``logdiff`` command that runs work writes a log under
the project's ``.logdiff/logs/``, with every traceback, while the console shows Prefect's lines without them and
an error as one line naming that file."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from flows.project import ignored_state_dir
from tasks.paths import STATE

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_path(project: Path, command: str) -> Path:
    folder = ignored_state_dir(ignored_state_dir(project / STATE) / "logs")
    return folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{command}.log"


def _without_traceback(handler: logging.Handler):
    """``handler.format`` that leaves out tracebacks (they are in the log file)."""
    original = handler.format

    def format_one_line(record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None,
                                            "stack_info": None})
        return original(record)

    return original, format_one_line


@contextmanager
def run_log(project: Path, command: str, prefect_console: bool = True) -> Iterator[Path]:
    """Send every log record (Prefect's included) to a new log file, and keep tracebacks off the console.

    ``prefect_console=False`` (a stage that DVC starts runs no flow) puts a plain warnings-only console handler on
    the root logger instead of Prefect's, which spares the stage's process the import of Prefect (~1.5 s)."""
    if prefect_console:
        from prefect.logging.configuration import setup_logging

        setup_logging()  # Prefect's console handler on the root logger, now, so it can be told to stay brief
    else:
        logging.basicConfig(level=logging.WARNING, format=FORMAT)
    path = log_path(project, command)
    file_handler = logging.FileHandler(path)
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    consoles = [h for h in root.handlers if isinstance(h, logging.StreamHandler) and
                not isinstance(h, logging.FileHandler)]
    originals = {}
    for handler in consoles:
        originals[handler], handler.format = _without_traceback(handler)
    root.addHandler(file_handler)
    try:
        yield path
    finally:
        root.removeHandler(file_handler)
        file_handler.close()
        for handler, original in originals.items():
            handler.format = original


def record_exception(path: Path, error: BaseException) -> None:
    """Append an exception's full traceback to the log file the one-line error names."""
    logger = logging.getLogger("logdiff")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("%s: %s", type(error).__name__, error, exc_info=(type(error), error, error.__traceback__))
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.propagate = True
