"""The loaders' contract: what a loader is asked about (Source), what it returns (LoadedModel), the options it
reads (LoadOptions) and the row that names it in the loader table (Loader, see studio.sources.table)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from studio.sources import sniff as sniffing
from studio.spec import default

# Roles a model input can have. Text columns feed the first three; tabular columns feed "tabular".
INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS, TABULAR = "input_ids", "attention_mask", "token_type_ids", "tabular"

# An adapter calls the model with named tensors and returns its outputs in `output_names` order.
# It runs inside the export wrapper's forward, so it must be traceable (plain tensor code).
Adapter = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, ...]]


class LoadOptions(Protocol):
    """The options the loaders read (read-only: a ConvertSpec is one, so is the frozen LoadDefaults)."""

    @property
    def config(self) -> str | None: ...  # --config: config.json / model folder for a state dict or a trusted module
    @property
    def head(self) -> str | None: ...  # --head: built-in head for a state-dict backbone
    @property
    def task(self) -> str: ...  # --task: what a model folder is exported as
    @property
    def trust_code(self) -> bool: ...  # --trust-code: TorchScript / .pt2 / pickled modules may be loaded
    @property
    def max_params(self) -> int: ...  # --max-params: parameters a checkpoint's config may declare
    @property
    def max_length(self) -> int | None: ...  # --max-length, against a sentence-transformers folder's (None: not)


@dataclass(frozen=True)
class LoadDefaults:
    """LoadOptions for loading a checkpoint alone (no conversion): the ConvertSpec defaults, no max length."""

    config: str | None = default("config")
    head: str | None = default("head")
    task: str = default("task")
    trust_code: bool = default("trust_code")
    max_params: int = default("max_params")
    max_length: int | None = None


@dataclass
class ModelInput:
    """One tensor the model takes.

    name:  graph input name and key in the named-tensor dict (a valid Python identifier).
    kind:  INPUT_IDS | ATTENTION_MASK | TOKEN_TYPE_IDS | TABULAR.
    column: for TABULAR, the sample column that must feed it (None = any tabular column, by order).
    width: for TABULAR, features per row (tensor shape [batch, width]); None = taken from the data.
    required: the model cannot run without it.
    vocab: for a categorical TABULAR input, its categories in one-hot order: the column's strings are
           encoded as a one-hot block of width len(vocab).
    """

    name: str
    kind: str
    column: str | None = None
    width: int | None = None
    required: bool = True
    vocab: list[str] | None = None


@dataclass
class LoadedModel:
    """A checkpoint turned into an eval-mode CPU module plus the facts export needs.

    kind:         short name of the loader ("hf", "multimodal", ...), shown to the user.
    path:         what the user gave.
    module:       the torch module, eval mode, on CPU.
    adapter:      how to call `module` with named tensors (see Adapter).
    inputs:       the tensors the model takes, in graph order.
    output_names: graph output names, in adapter order.
    output_kinds: output name -> "logits" | "probs" | "hidden" | "other"
                  (argmax agreement is checked for logits and probs).
    tokenizer:    a transformers tokenizer, or None when the checkpoint carries none.
    task:         what the graph computes, in the loader's words ("sequence-classification",
                  "sentence-embedding", "encoder", ...); None when the loader does not say. An explicit
                  --task must equal it (sources.load checks).
    trusted_code: the module is code the operator trusted (TorchScript, .pt2, a pickled module): its shapes
                  may be fixed inside it, so the auto exporter does not trace it first.
    info:         free-form facts for the user (architecture, task_reason, labels, ...); code reads the
                  typed fields above, never a key of info.
    """

    kind: str
    path: str
    module: torch.nn.Module
    adapter: Adapter
    inputs: list[ModelInput]
    output_names: list[str]
    output_kinds: dict[str, str] = field(default_factory=dict)
    tokenizer: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    trusted_code: bool = False

    @property
    def text_inputs(self) -> list[ModelInput]:
        return [i for i in self.inputs if i.kind != TABULAR]

    @property
    def tabular_inputs(self) -> list[ModelInput]:
        return [i for i in self.inputs if i.kind == TABULAR]

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def describe(self) -> dict[str, Any]:
        """Plain facts for the UI's "detected" panel and the report. The typed fields show among the facts where
        the loaders always listed them: the task after the architecture / model type, trusted_code after the
        module's own facts (so report.json reads as it did when they were keys of info)."""
        facts = dict(self.info)
        if self.task is not None:
            facts = _placed(facts, "task", self.task, after=("architecture", "model_type"))
        if self.trusted_code:
            facts = _placed(facts, "trusted_code", True, after=("architecture", "frozen", "weights"))
        return {
            "kind": self.kind,
            "path": self.path,
            "inputs": [
                {
                    "name": i.name,
                    "kind": i.kind,
                    "column": i.column,
                    "width": i.width,
                    "required": i.required,
                    **({"vocab": list(i.vocab)} if i.vocab else {}),
                }
                for i in self.inputs
            ],
            "outputs": list(self.output_names),
            "tokenizer": type(self.tokenizer).__name__ if self.tokenizer is not None else None,
            "parameters": self.num_parameters,
            **facts,
        }


def _placed(facts: dict[str, Any], key: str, value: Any, after: tuple[str, ...]) -> dict[str, Any]:
    """`facts` with key: value right after the last of `after` it holds (at the end when it holds none)."""
    items = [(k, v) for k, v in facts.items() if k != key]
    at = max((i + 1 for i, (k, _) in enumerate(items) if k in after), default=len(items))
    return dict(items[:at] + [(key, value)] + items[at:])


# ------------------------------------------------------------------------------------------ the loader table

UPLOAD, FOLDER, FILE, OBJECT = "upload", "folder", "file", "object"  # what a Source is


@dataclass
class Source:
    """What a row of the loader table is asked about, and what its loader reads.

    form:    UPLOAD (the path the user gave, file or folder), FOLDER, FILE (a file read by its bytes), or
             OBJECT (what a file or a DCP folder held, read weights-only: a dict of tensors, a training dict).
    path:    the file or folder; for an OBJECT, the file or folder it was read from.
    folders: where a config.json / studio.json / tokenizer files beside the checkpoint are looked for.
    info:    facts found on the way (layout, a "named .x but holds y" note): every loaded model gets them.
    obj:     the object an OBJECT source holds (None for the others).
    workdir: where an uploaded .zip is unpacked (None: the system's temporary folder).
    """

    form: str
    path: Path
    folders: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    obj: Any = None
    workdir: str | Path | None = None
    _sniffed: sniffing.Sniffed | None = field(default=None, repr=False, compare=False)

    @property
    def sniffed(self) -> sniffing.Sniffed:
        """What the file holds, told from its bytes (sources.sniff; read once)."""
        if self._sniffed is None:
            self._sniffed = sniffing.sniff(self.path)
        return self._sniffed

    def holds(self, *kinds: str) -> bool:
        """A file (the upload or one inside it) whose bytes are one of `kinds` (sources.sniff kinds)."""
        return self.form in (UPLOAD, FILE) and self.path.is_file() and self.sniffed.kind in kinds


Sniff = Callable[[Source, LoadOptions], bool]
Load = Callable[[Source, str, LoadOptions], LoadedModel]


@dataclass(frozen=True)
class Loader:
    """One row of the loader table: the first row whose sniff(source, options) is True loads the source
    with load(source, shown, options) (shown: the path as the user gave it, for messages and
    LoadedModel.path). A row may also refuse (its load raises the message) or unwrap a container
    (a zip, a folder's one weights file, a file read weights-only) and ask the table again."""

    kind: str
    sniff: Sniff
    load: Load
