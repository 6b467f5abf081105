"""What busseg prints while it works: a progress bar on a terminal, plain lines in a log.

- :func:`progress_bar` is tqdm when the output is a terminal; when it is a file or a pipe (a
  job's log, CI) it is :class:`PlainProgress`, which writes one plain line every ``interval``
  seconds (count, percentage, elapsed time, ETA) and nothing for a stage shorter than that — a
  tqdm bar there would write every redrawn frame into the log (one "decoding" line was ~10 KB).
- :func:`configure_logging` sets up the ``busseg`` command's log lines, and
  :func:`tidy_library_logging` makes the libraries' messages go through it ONCE: Lightning
  installs a console handler of its own on top of the propagation to the root logger (every
  line printed twice) and advertises its cloud products at every fit; the ONNX exporter's
  optimiser logs its passes at INFO level. Both are quietened here, in one place.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Iterable, Iterator

#: Lightning's rank-zero messages that advertise a product rather than report on the run.
_ADVERTISEMENTS = ("litlogger", "litmodels", "Tip:")
#: Loggers of the ONNX export stack that report their optimisation passes at INFO level.
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")
_LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


def is_terminal(stream: IO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class PlainProgress:
    """Progress for a log: ``"<desc>: 250/780 (32 %), 10 s, ETA 21 s"`` every ``interval``
    seconds, and a last line at the end when any line was written. Supports the part of the
    tqdm interface busseg uses (iteration, ``update``, ``close``, context manager)."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", stream: IO | None = None, interval: float = 30.0) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = sys.stderr if stream is None else stream
        self.interval = float(interval)
        self.n = 0
        self.started = self._last = time.monotonic()
        self._written_n: int | None = None
        self._closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("PlainProgress: nothing to iterate (give an iterable)")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _line(self) -> str:
        elapsed = time.monotonic() - self.started
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} ({100 * self.n / self.total:.0f} %)"
        text += f" {self.unit}, {format_duration(elapsed)}"
        if self.total and 0 < self.n < self.total:
            text += f", ETA {format_duration(elapsed / self.n * (self.total - self.n))}"
        return text

    def _write(self) -> None:
        self.stream.write(self._line() + "\n")
        self.stream.flush()
        self._written_n = self.n
        self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.interval:
            self._write()

    def set_postfix(self, *args, **kwargs) -> None:  # tqdm interface; nothing to redraw
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._written_n is not None and self._written_n != self.n:  # a long stage: say how it ended
            self._write()


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 enabled: bool = True, leave: bool = False, stream: IO | None = None, interval: float = 30.0):
    """A tqdm bar on a terminal, :class:`PlainProgress` lines otherwise, nothing when
    ``enabled`` is false (the iterable itself, or an object whose ``update`` does nothing)."""
    if not enabled:
        return PlainProgress(iterable, total=total, desc=desc, unit=unit, stream=stream, interval=float("inf"))
    if is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, stream=stream, interval=interval)


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(word in message for word in _ADVERTISEMENTS)


_ADS_FILTER = _DropAdvertisements()


def tidy_library_logging() -> None:
    """Each Lightning message once, no advertisements, no ONNX-export INFO chatter (see the
    module docstring). Idempotent; call it after the libraries are imported (they install their
    handlers at import time)."""
    root_handles = logging.getLogger().hasHandlers()
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if root_handles:
            # the root handler prints every record once; the library's own would print it again
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
        for handler in logger.handlers:
            if _ADS_FILTER not in handler.filters:
                handler.addFilter(_ADS_FILTER)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _ADS_FILTER not in logger.filters:
            logger.addFilter(_ADS_FILTER)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # --verbose keeps them
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(verbose: bool = False) -> None:
    """The ``busseg`` command's logging: ``LEVEL logger: message`` lines on standard error
    (DEBUG with ``verbose``), with the libraries tidied (:func:`tidy_library_logging`)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    tidy_library_logging()


__all__ = ["PlainProgress", "configure_logging", "format_duration", "is_terminal", "progress_bar", "tidy_library_logging"]
