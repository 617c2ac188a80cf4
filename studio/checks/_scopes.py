"""ONNX nodes and the PyTorch module calls they came from: the two sides of the divergence locator's tie.

The graph side: the TorchScript exporter names each node by its module scope
(`/model/encoder/layer.0/attention/self/MatMul`; a repeated call of a module gets `act_1`), the new exporter
records the module stack in node metadata (`pkg.torch.onnx.name_scopes`: `['', 'model', 'model.encoder', ...,
fx node]`); a module call's exits are the values its nodes hand to the rest of the graph. The PyTorch side:
forward hooks keep each module call's output tensors. Module paths are those of the export wrapper
(studio.sources.wrap), which holds the user's module as `model`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

from studio.quiet import quiet

WRAPPER = "model"  # the export wrapper holds the user's module as `self.model` (studio.sources.wrap)
MAX_BYTES = 1024**3  # PyTorch module outputs kept at most


# --- the graph: nodes tied to module calls ------------------------------------------------------------


@dataclass
class Scope:
    """One module call as the graph shows it."""

    module: str  # wrapper path ("model.encoder.layer.0")
    call: int
    nodes: set[int] = field(default_factory=set)
    depth: int = 0
    shared: int = 1  # calls whose nodes share this scope (the new exporter: every call of a module)


def exporter_of(model: onnx.ModelProto) -> str:
    """ "dynamo" when nodes carry the new exporter's module metadata, "torchscript" when they carry scope
    names, else "unknown"."""
    nodes = list(model.graph.node)
    if any(p.key == "pkg.torch.onnx.name_scopes" for n in nodes for p in n.metadata_props):
        return "dynamo"
    if any(n.name.startswith(f"/{WRAPPER}/") for n in nodes):
        return "torchscript"
    return "unknown"


def _torchscript_chain(name: str) -> list[str]:
    """Scope strings of a TorchScript node name, outermost first: `/model/act_1/Tanh` -> ["/model", "/model/act_1"]."""
    parts = name.split("/")[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _torchscript_module(scope: str, modules: set[str]) -> str | None:
    """The module a TorchScript scope string stands for: its parts joined by dots, a repeated call's `_N`
    suffix dropped where the plain name is the module."""
    path = ""
    for part in scope.strip("/").split("/"):
        full = f"{path}.{part}" if path else part
        if full not in modules:
            m = re.fullmatch(r"(.+)_(\d+)", part)
            base = f"{path}.{m.group(1)}" if (m and path) else (m.group(1) if m else None)
            if base is None or base not in modules:
                return None
            full = base
        path = full
    return path


def _dynamo_chain(node: onnx.NodeProto) -> list[str]:
    meta = {p.key: p.value for p in node.metadata_props}
    raw = meta.get("pkg.torch.onnx.name_scopes")
    if not raw:
        return []
    try:
        scopes = ast.literal_eval(raw)  # a repr()'d list of strings: literal_eval never runs code
    except (ValueError, SyntaxError):
        return []
    return [s for s in scopes[1:-1] if isinstance(s, str) and s]  # drop the root "" and the fx node name


def scopes_of(model: onnx.ModelProto, kind: str, modules: set[str]) -> tuple[dict[str, Scope], list[list[str]]]:
    """Scope key -> Scope, and per node the keys of the scopes it lies in (outermost first).

    TorchScript: one key per scope string, the k-th string of a module (graph order) is its call k. Dynamo:
    every call of a module shares one key (its path), call 0."""
    scopes: dict[str, Scope] = {}
    chains: list[list[str]] = []
    calls: dict[str, int] = {}
    for i, node in enumerate(model.graph.node):
        keys = (
            _torchscript_chain(node.name)
            if kind == "torchscript" and node.name.startswith("/")
            else _dynamo_chain(node)
            if kind == "dynamo"
            else []
        )
        chain = []
        for depth, key in enumerate(keys):
            if key not in scopes:
                module = _torchscript_module(key, modules) if kind == "torchscript" else key
                if module is None or module not in modules:
                    continue
                call = calls.get(module, 0)
                calls[module] = call + 1
                scopes[key] = Scope(module, call if kind == "torchscript" else 0, depth=depth)
            scopes[key].nodes.add(i)
            chain.append(key)
        chains.append(chain)
    return scopes, chains


def exits_and_entries(model: onnx.ModelProto, scopes: dict[str, Scope], chains: list[list[str]]):
    """Per scope key: the values its nodes hand to nodes outside it (or to the graph's outputs), in graph
    order, and the values its nodes take from outside it (initializers and Constant outputs left out)."""
    nodes = list(model.graph.node)
    producer: dict[str, int] = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for v in n.input:
            if v:
                consumers.setdefault(v, []).append(i)
    graph_outputs = {o.name for o in model.graph.output}
    constant = {i for i, n in enumerate(nodes) if n.op_type == "Constant"}
    exits: dict[str, list[str]] = {k: [] for k in scopes}
    entries: dict[str, list[str]] = {k: [] for k in scopes}
    for value, i in producer.items():
        inside = set(chains[i])
        for key in inside:
            users = consumers.get(value, [])
            if value in graph_outputs or any(key not in chains[u] for u in users):
                exits[key].append(value)
    initializers = {t.name for t in model.graph.initializer}
    for i, n in enumerate(nodes):
        for key in chains[i]:
            for v in n.input:
                src = producer.get(v)
                if not v or v in initializers or (src is not None and src in constant):
                    continue
                if (src is None or key not in chains[src]) and v not in entries[key]:
                    entries[key].append(v)
    for values in exits.values():
        values.sort(key=lambda v: producer[v])
    return exits, entries, producer


# --- PyTorch: every module call's output tensors ------------------------------------------------------


def _flat_tensors(out: Any) -> list[torch.Tensor]:
    """A module's output as a flat list of tensors: tuples, lists, dicts and ModelOutputs in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat_tensors(o)]
    return []


def torch_calls(
    model: torch.nn.Module, args: tuple[torch.Tensor, ...], wanted: set[str], max_bytes: int = MAX_BYTES
) -> tuple[dict[str, list[list[np.ndarray]]], dict[str, int], bool, list]:
    """Run `model(*args)` with forward hooks: per wanted module, each call's output tensors (numpy copies:
    a later in-place op must not change them), every module's call count, whether `max_bytes` cut the
    recording short (calls past it are counted, not kept), and the model's own outputs."""
    outputs: dict[str, list[list[np.ndarray]]] = {}
    counts: dict[str, int] = {}
    kept = [0, False]

    def hook(name):
        def record(_module, _inputs, out):
            counts[name] = counts.get(name, 0) + 1
            if name not in wanted:
                return
            tensors = [t.detach().cpu().numpy().copy() for t in _flat_tensors(out)]
            size = sum(t.nbytes for t in tensors)
            if kept[0] + size > max_bytes:
                kept[1] = True
                tensors = []
            kept[0] += size if tensors else 0
            outputs.setdefault(name, []).append(tensors)

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if name]
    try:
        with torch.no_grad(), quiet(("", "transformers")):
            final = [t.detach().cpu().numpy() for t in _flat_tensors(model(*args))]
    finally:
        for h in handles:
            h.remove()
    return outputs, counts, bool(kept[1]), final
