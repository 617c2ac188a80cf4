"""Silence the chatter of the libraries the studio drives (exporters, optimizers, quantizer), so stdout
stays clean for --json and the studio reports what matters itself."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")


@contextlib.contextmanager
def quiet(loggers: tuple[str, ...] = EXPORTER_LOGGERS) -> Iterator[io.StringIO]:
    """Within the block: the named loggers ("" is the root logger) log errors only, warnings are ignored
    and stdout goes to the yielded buffer. Everything is restored afterwards."""
    buf = io.StringIO()
    found = [logging.getLogger(n or None) for n in loggers]
    levels = [lg.level for lg in found]
    try:
        for lg in found:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, lv in zip(found, levels):
            lg.setLevel(lv)
