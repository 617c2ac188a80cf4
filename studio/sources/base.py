"""What every checkpoint loader returns: a LoadedModel, the contract between sources and the rest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from studio.spec import default

# Roles a model input can have. Text columns feed the first three; tabular columns feed "tabular".
INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS, TABULAR = "input_ids", "attention_mask", "token_type_ids", "tabular"

# An adapter calls the model with named tensors and returns its outputs in `output_names` order.
# It runs inside the export wrapper's forward, so it must be traceable (plain tensor code).
Adapter = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, ...]]


class LoadOptions(Protocol):
    """The options the loaders read; a ConvertSpec is one."""

    config: str | None  # --config: config.json / model folder for a state dict or a trusted module
    head: str | None  # --head: built-in head for a state-dict backbone
    task: str  # --task: what a model folder is exported as
    trust_code: bool  # --trust-code: TorchScript / .pt2 / pickled modules may be loaded
    max_params: int  # --max-params: parameters a checkpoint's config may declare
    max_length: int | None  # --max-length, compared with a sentence-transformers folder's (None: not compared)


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
    info:         free-form facts for the user (architecture, parameters, task, ...).
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
        """Plain facts for the UI's "detected" panel and the report."""
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
            **self.info,
        }
