"""Typed errors. Each carries a message a person can act on; the CLI and the app print it as is."""

from __future__ import annotations

import re
from typing import Any

from studio.escape import cut

MESSAGE_CHARS = 4000  # an error's message (and hint) at most: an upload's megabyte name is never quoted whole
WORD_CHARS = 300  # one run of non-space characters in it (a quoted column name, a value) at most
_LONG_WORD = re.compile(rf"(?<!\S)\S{{{WORD_CHARS + 1}}}\S*")  # tried at a run's start only: linear


def bounded(text: str) -> str:
    """`text` with every run of more than WORD_CHARS non-space characters cut (saying how long it was), and
    the whole cut to MESSAGE_CHARS (its start and its end kept). Linear in the text."""
    if len(text) > WORD_CHARS:
        text = _LONG_WORD.sub(lambda m: cut(m.group(), WORD_CHARS), text)
    if len(text) > MESSAGE_CHARS:
        head, tail = MESSAGE_CHARS * 3 // 4, MESSAGE_CHARS // 5
        text = f"{text[:head]} [... {len(text) - head - tail:,} characters cut ...] {text[-tail:]}"
    return text


class StudioError(Exception):
    """Base of every error the studio raises on purpose (bad input, impossible export).

    The CLI turns it into a message and exit code 2; the app shows the same text in the page.
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, details: str | None = None):
        message, hint = bounded(str(message)), hint if hint is None else bounded(str(hint))
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details  # long diagnosis (e.g. the exporter's markdown report)

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nHint: {self.hint}"


class CheckpointError(StudioError):
    """The checkpoint cannot be read, is of an unsupported kind, or does not fit its config."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint is of a kind that can run code when loaded and the operator did not trust it."""


class BatchError(StudioError):
    """The sample file or the role mapping is unusable. Names the file, column and row at fault."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: int | None = None,
        hint: str | None = None,
    ):
        super().__init__(message, hint=hint)
        self.file, self.column, self.row = file, column, row


class ExportError(StudioError):
    """torch.onnx could not export the model. `details` holds the exporter's own diagnosis; `attempts` what was
    tried (studio.report.model.ExportAttempt), when the export chain raised it after trying."""

    def __init__(self, message: str, *, hint: str | None = None, details: str | None = None):
        super().__init__(message, hint=hint, details=details)
        self.attempts: list[Any] = []


class OpsetMismatchError(ExportError):
    """The file written declares another opset than the one requested."""

    def __init__(self, requested: int, written: int | None, exporter: str):
        super().__init__(
            f"Requested opset {requested} but the {exporter} exporter wrote opset {written}.",
            hint="Pick the opset the exporter supports (the new exporter writes >= 18), "
            "or choose --exporter torchscript for older opsets.",
        )
        self.requested, self.written, self.exporter = requested, written, exporter


class DiskFullError(StudioError):
    """The disk, a quota or a file-size limit ran out while the studio wrote its files (artifacts.disk_full)."""


class UnsafePathError(StudioError):
    """An archive member or external-data reference points outside the allowed directory."""


def first_line(e: BaseException, limit: int = 300, *, with_type: bool = False) -> str:
    """The first line of an exception's text, cut to `limit` characters (its type's name when it has no
    text). `with_type` prefixes the type, as in "ValueError: bad shape"."""
    lines = str(e).strip().splitlines()
    text = lines[0][:limit] if lines else ""
    if with_type:
        return f"{type(e).__name__}: {text}"
    return text or type(e).__name__
