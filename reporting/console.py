"""A quiet console: what a normal run prints is litembed's and Lightning's progress, not third-party noise."""

import logging
import sys
import warnings

# Lightning's advertisements for its cloud products, printed on every run
ADVERTISING = ("💡 Tip:",)


class _DropAdvertising(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(ADVERTISING)


def quiet() -> None:
    """Hide the deprecation notices of the libraries litembed calls (they concern litembed's calls, which the user can
    do nothing about) and Lightning's advertising tips. Warnings asked for with ``-W`` or ``PYTHONWARNINGS`` show."""
    if not sys.warnoptions:
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)
    for name in ("lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_DropAdvertising())
