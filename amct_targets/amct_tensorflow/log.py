"""AMCT's logging: console lines `INFO - [AMCT]:[AMCT]: message`, and the same lines with a
timestamp in `./amct_log/amct_tensorflow.log` (relative to the working directory, as AMCT).

`set_logging_level(print_level='info', save_level='info')` sets both levels; the environment
variables AMCT uses (`AMCT_LOG_LEVEL` for the console, `AMCT_LOG_FILE_LEVEL` for the file)
give the start-up levels. The log file is opened at the first message, not at import.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from amct_targets.errors import ConfigError

LOG_DIR = "amct_log"
LOG_FILE = "amct_tensorflow.log"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
CONSOLE_FORMAT = "%(levelname)s - [AMCT]:[AMCT]: %(message)s"
FILE_FORMAT = "%(asctime)s - %(levelname)s - [AMCT]:[AMCT]: %(message)s"


def _level(name: str, what: str) -> int:
    level = LEVELS.get(str(name).lower())
    if level is None:
        raise ConfigError(f"set_logging_level: {what}={name!r}; expected one of "
                          f"{sorted(LEVELS)}")
    return level


class _LazyFileHandler(logging.Handler):
    """Appends to ./amct_log/amct_tensorflow.log, creating it at the first record (the
    working directory of that moment, as AMCT does)."""

    def __init__(self, level: int):
        super().__init__(level)
        self.setFormatter(logging.Formatter(FILE_FORMAT))
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        return Path.cwd() / LOG_DIR / LOG_FILE

    def emit(self, record: logging.LogRecord) -> None:
        try:
            path = self.path
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(self.format(record) + "\n")
        except OSError:
            self.handleError(record)


class AmctLogger:
    """`logi`, `logd`, `logw`, `loge` as AMCT's LOGGER, on a `logging` logger."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("amct_targets.amct_tensorflow")
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        self.console = logging.StreamHandler(sys.stdout)
        self.console.setFormatter(logging.Formatter(CONSOLE_FORMAT))
        self.file = _LazyFileHandler(logging.INFO)
        self.console.setLevel(_env_level("AMCT_LOG_LEVEL", logging.INFO))
        self.file.setLevel(_env_level("AMCT_LOG_FILE_LEVEL", logging.INFO))
        self.logger.addHandler(self.console)
        self.logger.addHandler(self.file)

    def logd(self, message: str) -> None:
        self.logger.debug(message)

    def logi(self, message: str) -> None:
        self.logger.info(message)

    def logw(self, message: str) -> None:
        self.logger.warning(message)

    def loge(self, message: str) -> None:
        self.logger.error(message)


def _env_level(variable: str, default: int) -> int:
    value = os.environ.get(variable)
    return LEVELS.get(value.lower(), default) if value else default


LOGGER = AmctLogger()


def set_logging_level(print_level: str = "info", save_level: str = "info") -> None:
    """AMCT's `set_logging_level`: the console level and the log file's level, each one of
    'debug', 'info', 'warning', 'error'."""
    LOGGER.console.setLevel(_level(print_level, "print_level"))
    LOGGER.file.setLevel(_level(save_level, "save_level"))


def fail(error: Exception) -> Exception:
    """Log `error` as AMCT logs its errors, and return it for `raise`."""
    LOGGER.loge(str(error))
    return error
