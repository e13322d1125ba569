"""Progress for long work: tqdm's bar on a terminal (or a notebook), and plain lines where the output is a file or a
pipe (a log, ``nohup``, Ray's relay of its workers), which a bar's carriage-return updates would flood.

A line says how far, how fast and how long to go (``train gaussian: 40% 2400/6000 [02:00<03:00, 20.0it/s]``). It is
printed when the work starts, then whenever both ``LINE_EVERY_S`` seconds and ``LINE_EVERY_FRACTION`` of the work
have passed since the last line, and when it ends: at most ten lines and at most one each 30 s per stage.
"""
from __future__ import annotations

import math
import sys

from tqdm import tqdm as plain_tqdm
from tqdm.auto import tqdm as auto_tqdm
from tqdm.autonotebook import tqdm as notebook_or_plain_tqdm

LINE_EVERY_S = 30.0
LINE_EVERY_FRACTION = 0.1
LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class ProgressLines(plain_tqdm):
    """tqdm that writes whole lines, rarely: the same API (``set_postfix``, ``update``, iteration), no bar, no
    carriage returns; the rate is the average since the start (no smoothing), so the ETA is the plain one."""

    def __init__(self, iterable=None, *args, **kwargs):
        total = kwargs.get("total")
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        remaining = (total or 0) - kwargs.get("initial", 0)
        kwargs.update(mininterval=LINE_EVERY_S, maxinterval=math.inf, smoothing=0, bar_format=LINE_FORMAT,
                      miniters=max(1, math.ceil(remaining * LINE_EVERY_FRACTION)), dynamic_ncols=False, leave=True)
        super().__init__(iterable, *args, **kwargs)

    def display(self, msg=None, pos=None) -> bool:
        if msg == "":  # tqdm clearing its bar: a line once written stays
            return False
        self.fp.write(f"{self if msg is None else msg}\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        if not self.disable and self.n != self.last_print_n:  # where it ended, unless the last line says so
            self.refresh()
        self.leave = False  # nothing left to print or clear
        super().close()


def _is_terminal(file) -> bool:
    isatty = getattr(file, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(iterable=None, **kwargs) -> plain_tqdm:
    """``tqdm(iterable, **kwargs)`` where the output is a terminal or a notebook, ``ProgressLines`` elsewhere."""
    in_notebook = notebook_or_plain_tqdm is not plain_tqdm
    if in_notebook or _is_terminal(kwargs.get("file") or sys.stderr):
        return auto_tqdm(iterable, **kwargs)
    return ProgressLines(iterable, **kwargs)
