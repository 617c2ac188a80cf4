"""The contract of studio.generate: what a greedy decode produces, and what an exported generator can do.

Both engines (transformers' `generate`, the reference; ONNX Runtime through the exported files) produce `Steps`,
so one comparison (studio.generate.verify) judges every kind of generator the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

TEXT_GENERATION = "text-generation"  # decoders: *ForCausalLM, *LMHeadModel
TEXT2TEXT_GENERATION = "text2text-generation"  # encoder-decoders: *ForConditionalGeneration (seq2seq LMs)
GENERATION_TASKS = (TEXT_GENERATION, TEXT2TEXT_GENERATION)


@dataclass
class CacheLayout:
    """The key/value cache the decoder file takes and returns, as the graph metadata records it."""

    layers: int
    kv_heads: int  # GQA / MQA models keep their own count (not the attention heads)
    head_dim: int
    layout: str = "batch, kv_heads, past_sequence, head_dim"
    cross_attention: bool = False  # encoder-decoders: past_key_values.{i}.encoder.* as well


@dataclass
class GeneratorFiles:
    """The files one export wrote, relative to its folder, and their graph input / output names."""

    task: str  # TEXT_GENERATION | TEXT2TEXT_GENERATION
    folder: Path
    files: dict[str, str]  # role -> file name: "model" (decoder), or "encoder", "decoder", "decoder_with_past"
    io: dict[str, list[str]] = field(default_factory=dict)  # role -> input names then output names
    cache: CacheLayout | None = None  # None: exported without the cache (--no-cache)
    external_data: bool = False
    exporter: str = "torchscript"  # the torch.onnx exporter that wrote the file(s): "torchscript" | "dynamo"
    warnings: list[str] = field(default_factory=list)  # what the export changed or fell back on, in words


@dataclass
class Steps:
    """One greedy decode of a batch: `ids[b, t]` is the t-th new token of sequence b; `logits[t]` the scores of
    every vocabulary entry at step t ([batch, vocab], float32), from which each token was the argmax.
    A sequence that ended (EOS) keeps its last steps as the engine produced them; `lengths[b]` says how many of
    its new tokens count."""

    ids: np.ndarray  # int64 [batch, new_tokens]
    logits: list[np.ndarray]  # new_tokens arrays of [batch, vocab]
    lengths: list[int]
    seconds_first: float | None = None  # time to the first new token (prefill + one step)
    seconds_total: float | None = None  # the whole decode


class OrtGenerator(Protocol):
    """Greedy decoding through exported files with ONNX Runtime, the cache fed back step by step."""

    files: GeneratorFiles

    def providers(self) -> list[str]:
        """The providers the sessions really use (session.get_providers())."""
        ...

    def greedy(self, input_ids: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int) -> Steps:
        """Decode `max_new_tokens` tokens greedily for a batch (decoders: left-padded prompts)."""
        ...
