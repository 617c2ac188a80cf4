"""Checkpoints that run code when loaded: TorchScript archives, torch.export programs (.pt2) and whole
pickled nn.Modules. Loaded only when the operator started the studio with --trust-code
(ConvertSpec.trust_code); refused otherwise (see `refusal`).

Inputs are mapped positionally, in the order of the program's forward parameters:
  * a parameter named input_ids / attention_mask / token_type_ids is a text tensor (the sample's text
    column, tokenized with the tokenizer found beside the program or in --config's folder);
  * every other parameter is a tabular float input [batch, width], fed by the columns mapped tabular,
    in file order (ModelInput.column = None).
Parameter names come from the TorchScript schema, the exported program's signature, or the module's
forward signature. A `studio.json` beside the program (or given with --config) overrides this:
    {"inputs": ["input_ids", "attention_mask", "tabular", "tabular"],   # one kind per parameter, in order
     "outputs": ["logits"],                                             # graph output names, in order
     "output_kinds": {"logits": "logits"}}                              # logits | probs | hidden | other
An entry of "inputs" may also be {"name": "price", "kind": "tabular", "column": "price", "width": 1}.
"""

from __future__ import annotations

import inspect
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from studio.errors import CheckpointError, UnsafeCheckpointError, first_line
from studio.sources.base import (
    ATTENTION_MASK,
    INPUT_IDS,
    TABULAR,
    TOKEN_TYPE_IDS,
    LoadedModel,
    LoadOptions,
    ModelInput,
    Source,
)
from studio.sources.statedict import find_tokenizer

SIDECAR = "studio.json"
TEXT_NAMES = {INPUT_IDS: INPUT_IDS, ATTENTION_MASK: ATTENTION_MASK, TOKEN_TYPE_IDS: TOKEN_TYPE_IDS}
KINDS = (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS, TABULAR)
OUTPUT_KINDS = ("logits", "probs", "hidden", "other")
TRUST_HINT = (
    "If you operate this studio and trust where the file comes from, start it with --trust-code "
    "(`studio convert --trust-code ...`, `studio app --trust-code`; ConvertSpec(trust_code=True)). "
    "Otherwise upload a state dict (torch.save(model.state_dict())), a .safetensors file, or a "
    "Hugging Face folder (save_pretrained), with the config.json."
)


def refusal(shown: str, what: str, detail: str = "") -> UnsafeCheckpointError:
    """The error for a code-carrying upload when the operator did not allow it."""
    why = {
        "torchscript": "a TorchScript archive: loading it runs the TorchScript code stored inside it",
        "program": "a torch.export program (.pt2): loading it rebuilds and runs the Python-level graph stored "
        "inside it",
        "pickle": "a pickle of Python objects (e.g. a whole nn.Module saved with torch.save(model)): "
        "unpickling it can call any Python function",
    }[what]
    return UnsafeCheckpointError(
        f"{shown} is {why}{detail}. Uploads like this can run code on the server, so "
        "the studio refuses them unless its operator allowed trusted code.",
        hint=TRUST_HINT,
    )


# ------------------------------------------------------------------------------------------ sidecar


@dataclass
class Declared:
    inputs: list[ModelInput] | None = None
    outputs: list[str] | None = None
    output_kinds: dict[str, str] | None = None
    source: str = ""


def _sidecar_path(given: str | None, folders: list[Path]) -> Path | None:
    """--config naming a sidecar .json (or a folder holding one), else the sidecar beside the checkpoint."""
    if given:
        p = Path(str(given)).expanduser()
        if p.is_file() and p.suffix.lower() == ".json" and p.name != "config.json":
            return p
        if p.is_dir() and (p / SIDECAR).is_file():
            return p / SIDECAR
    for f in folders:
        if f is not None and (f / SIDECAR).is_file():
            return f / SIDECAR
    return None


def read_declared(config: str | None, folders: list[Path], params: list[str]) -> Declared:
    path = _sidecar_path(config, folders)
    if path is None:
        return Declared()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path.name} is not readable JSON: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} must hold a JSON object with 'inputs' (and optionally 'outputs').")
    out = Declared(source=path.name)
    if "inputs" in data:
        entries = data["inputs"]
        if not isinstance(entries, list) or not entries:
            raise CheckpointError(f"{path.name}: 'inputs' must be a non-empty list, one entry per forward parameter.")
        if params and len(entries) != len(params):
            raise CheckpointError(
                f"{path.name} declares {len(entries)} inputs but the program takes {len(params)} ({', '.join(params)})."
            )
        taken: set[str] = set()
        inputs = []
        for i, entry in enumerate(entries):
            spec_e = {"kind": entry} if isinstance(entry, str) else entry
            if not isinstance(spec_e, dict) or spec_e.get("kind") not in KINDS:
                raise CheckpointError(
                    f"{path.name}: input {i + 1} ({entry!r}) needs a kind, one of {', '.join(KINDS)}."
                )
            kind = spec_e["kind"]
            default = kind if kind != TABULAR else (params[i] if i < len(params) else f"tabular_{i}")
            name = _identifier(str(spec_e.get("name") or default), taken)
            width = spec_e.get("width")
            inputs.append(
                ModelInput(name, kind, column=spec_e.get("column"), width=int(width) if width is not None else None)
            )
        out.inputs = inputs
    if "outputs" in data:
        names = data["outputs"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"{path.name}: 'outputs' must be a non-empty list of names.")
        taken = set()
        out.outputs = [_identifier(n, taken) for n in names]
    kinds = data.get("output_kinds") or {}
    if not isinstance(kinds, dict) or any(v not in OUTPUT_KINDS for v in kinds.values()):
        raise CheckpointError(f"{path.name}: 'output_kinds' maps output names to one of {', '.join(OUTPUT_KINDS)}.")
    out.output_kinds = dict(kinds)
    return out


def _identifier(name: str, taken: set[str]) -> str:
    import keyword
    import re

    n = re.sub(r"\W", "_", name).strip("_") or "x"
    if n[0].isdigit() or keyword.iskeyword(n) or n in ("self", "torch"):
        n = "f_" + n
    base, i = n, 2
    while n in taken:
        n, i = f"{base}_{i}", i + 1
    taken.add(n)
    return n


def inputs_from_params(params: list[str]) -> list[ModelInput]:
    taken: set[str] = set()
    out = []
    for p in params:
        kind = TEXT_NAMES.get(p, TABULAR)
        out.append(ModelInput(_identifier(p, taken), kind, column=None, required=kind != TOKEN_TYPE_IDS))
    return out


# ------------------------------------------------------------------------------------------ calling


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """A tensor, a tuple/list of tensors, a dict / ModelOutput -> flat list of tensors (None skipped)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        flat: list[torch.Tensor] = []
        for o in out:
            if o is not None:
                flat.extend(flatten_outputs(o))
        return flat
    raise CheckpointError(
        f"The model returned {type(out).__name__}; the studio exports models that return "
        "tensors (a tensor, a tuple/list or a dict of tensors)."
    )


@dataclass(frozen=True)
class ProgramAdapter:
    """Named graph tensors -> the program's forward, in parameter order -> a flat tuple of outputs."""

    names: tuple[str, ...]
    params: tuple[str, ...]
    keyword: bool
    n_outputs: int

    def __call__(self, module: torch.nn.Module, named: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if self.keyword:
            out = module(**{p: named[n] for p, n in zip(self.params, self.names) if n in named})
        else:
            out = module(*[named[n] for n in self.names])
        flat = flatten_outputs(out)
        if len(flat) != self.n_outputs:
            raise CheckpointError(
                f"The model returned {len(flat)} tensors but {self.n_outputs} output(s) were expected.",
                hint=f'Declare its outputs in {SIDECAR}: {{"outputs": ["name1", "name2", ...]}}.',
            )
        return tuple(flat)


def _output_count_ts(module) -> int | None:
    try:
        ret = module.forward.schema.returns
    except Exception:  # noqa: BLE001 - a scripted module without a readable schema: count unknown
        return None
    if len(ret) != 1:
        return len(ret) or None
    t = ret[0].type
    if isinstance(t, torch._C.TupleType):
        return len(t.elements())
    if isinstance(t, torch._C.TensorType):
        return 1
    return None


def _dry_run(module, inputs: list[ModelInput], keyword: bool, params: list[str]) -> Any:
    """The raw output of a text-only model on a 1x8 dummy batch; None when it cannot be run so."""
    if any(i.kind == TABULAR for i in inputs):
        return None
    ids = torch.full((1, 8), 1, dtype=torch.long)
    named = {
        i.name: (
            torch.ones_like(ids)
            if i.kind == ATTENTION_MASK
            else torch.zeros_like(ids)
            if i.kind == TOKEN_TYPE_IDS
            else ids
        )
        for i in inputs
    }
    try:
        with torch.no_grad():
            if keyword:
                return module(**{p: named[i.name] for p, i in zip(params, inputs)})
            return module(*[named[i.name] for i in inputs])
    except Exception:  # noqa: BLE001 - a trial call of the operator's trusted code: any failure means "unknown"
        return None


def _names_from(out: Any) -> list[str] | None:
    """Output names from a dict / ModelOutput result (its keys), when every value is one tensor."""
    if isinstance(out, Mapping):
        items = [(k, v) for k, v in out.items() if v is not None]
        if items and all(isinstance(v, torch.Tensor) for _, v in items):
            taken: set[str] = set()
            return [_identifier(str(k), taken) for k, _ in items]
    return None


def _build(
    kind: str,
    module: torch.nn.Module,
    params: list[str],
    keyword: bool,
    n_outputs: int | None,
    shown: str,
    config: str | None,
    folders: list[Path],
    info: dict[str, Any],
) -> LoadedModel:
    """The LoadedModel of a trusted module; config: --config (a sidecar .json, or the folder of one)."""
    declared = read_declared(config, folders, params)
    inputs = declared.inputs or inputs_from_params(params)
    params = params or [i.name for i in inputs]
    if declared.inputs and not keyword:
        for i in inputs:
            i.required = True
    if declared.outputs:
        outputs = declared.outputs
    else:
        sample = _dry_run(module, inputs, keyword, params) if n_outputs is None else None
        n = n_outputs or (len(flatten_outputs(sample)) if sample is not None else 1)
        outputs = _names_from(sample) or (["output"] if n == 1 else [f"output_{i}" for i in range(n)])
    if n_outputs is not None and len(outputs) != n_outputs:
        raise CheckpointError(
            f"{declared.source or SIDECAR} declares {len(outputs)} outputs but the program returns {n_outputs}."
        )
    kinds = {o: (declared.output_kinds or {}).get(o, o if o in ("logits", "probs") else "other") for o in outputs}
    cfg_dir = None
    if config:
        p = Path(str(config)).expanduser()
        cfg_dir = p if p.is_dir() else p.parent
    tokenizer = find_tokenizer([d for d in [cfg_dir, *folders] if d is not None])
    try:
        module.eval()
    except Exception:  # noqa: BLE001 - trusted code's object: an eval() that fails leaves it as the plugin made it
        pass
    return LoadedModel(
        kind=kind,
        path=shown,
        module=module,
        adapter=ProgramAdapter(tuple(i.name for i in inputs), tuple(params), keyword, len(outputs)),
        inputs=inputs,
        output_names=list(outputs),
        output_kinds=kinds,
        tokenizer=tokenizer,
        trusted_code=True,
        info={
            **info,
            "parameters_in_order": list(params),
            "inputs_from": declared.source if declared.inputs else "parameter names",
        },
    )


# ------------------------------------------------------------------------------------------ kinds


class FrozenScript(torch.nn.Module):
    """A TorchScript module frozen into one graph function (weights as constants).

    The legacy ONNX exporter traces the export wrapper with a tracer that cannot enter a ScriptModule
    held as a submodule ("... is not part of the active trace"); a script *function* it inlines."""

    def __init__(self, fn: Any, name: str):
        super().__init__()
        self.fn = fn
        self.original_name = name

    def forward(self, *args: torch.Tensor) -> Any:
        return self.fn(*args)


def _frozen(module: Any) -> torch.nn.Module:
    """`module` frozen into a FrozenScript, or `module` itself when it cannot be frozen so."""
    try:
        frozen = torch.jit.freeze(module.eval())
        graph = frozen.forward.graph.copy()
        self_input = next(iter(graph.inputs()))
        if self_input.uses():
            return module
        graph.eraseInput(0)
        fn = torch._C._create_function_from_graph("forward", graph)
    except Exception:  # noqa: BLE001 - torch-private calls: any failure means "not freezable", kept unfrozen
        return module
    return FrozenScript(fn, str(getattr(module, "original_name", "module")))


def load_torchscript(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    """torch.jit.load: runs the TorchScript code stored in the archive. Refused unless code is trusted."""
    if not options.trust_code:
        raise refusal(shown, "torchscript")
    p = source.path
    try:
        module = torch.jit.load(str(p), map_location="cpu")
    except Exception as e:
        raise CheckpointError(f"{shown} could not be loaded as TorchScript: {first_line(e)}") from e
    try:
        params = [a.name for a in module.forward.schema.arguments][1:]
    except Exception as e:
        raise CheckpointError(f"{shown}: the TorchScript module has no forward method.") from e
    n_outputs = _output_count_ts(module)
    parameters = sum(t.numel() for t in module.parameters())
    frozen = _frozen(module)
    loaded = _build(
        "torchscript",
        frozen,
        params,
        False,
        n_outputs,
        shown,
        options.config,
        source.folders,
        {
            "architecture": "TorchScript " + str(getattr(module, "original_name", "module")),
            "frozen": frozen is not module,
            "weights": parameters,
        },
    )
    return loaded


class ProgramModule(torch.nn.Module):
    """Holds the module of a torch.export program. Such a module refuses train()/eval() (its mode was fixed
    when it was exported; dropout / batch norm are switched to inference by `move_exported_model_to_eval`)."""

    def __init__(self, program: torch.nn.Module):
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> ProgramModule:
        self.training = mode
        return self

    def forward(self, *args: torch.Tensor) -> Any:
        return self.program(*args)


def load_program(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    """torch.export.load: rebuilds the program's Python-level graph. Refused unless code is trusted."""
    if not options.trust_code:
        raise refusal(shown, "program")
    p = source.path
    try:
        ep = torch.export.load(str(p))
    except Exception as e:
        raise CheckpointError(f"{shown} could not be loaded as a torch.export program: {first_line(e)}") from e
    sig = ep.graph_signature
    params = list(sig.user_inputs)
    module = ep.module()
    try:
        from torch.ao.quantization import move_exported_model_to_eval  # type: ignore[attr-defined]

        module = move_exported_model_to_eval(module)
    except Exception:  # older torch, or nothing to switch
        pass
    loaded = _build(
        "torch-export",
        ProgramModule(module),
        params,
        False,
        len(sig.user_outputs),
        shown,
        options.config,
        source.folders,
        {"architecture": "torch.export program"},
    )
    widths = program_widths(ep)
    for inp, param in zip(loaded.inputs, params):
        if inp.kind == TABULAR and inp.width is None and param in widths:
            inp.width = widths[param]  # the program was exported for [batch, width]: checked against the data
    return loaded


def program_widths(ep: Any) -> dict[str, int]:
    """Forward parameter -> the fixed second dimension of a 2-d input, as the program declares it."""
    user = set(ep.graph_signature.user_inputs)
    out: dict[str, int] = {}
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in user:
            continue
        shape = getattr(node.meta.get("val"), "shape", None)
        if shape is not None and len(shape) == 2 and isinstance(shape[1], int):  # a torch.SymInt is dynamic
            out[node.name] = int(shape[1])
    return out


def load_pickled(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    """torch.load(weights_only=False): runs whatever the pickle says. Trusted operators only: refused here
    too unless the operator set trust_code, whatever the caller checked."""
    if not options.trust_code:
        raise refusal(shown, "pickle")
    p, folders = source.path, source.folders
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, AttributeError, ModuleNotFoundError, ImportError) as e:
        raise CheckpointError(
            f"{shown} could not be unpickled: {type(e).__name__}: {e}",
            hint="The classes it was pickled with must be importable here (install the "
            "training code's package, or register an operator plugin).",
        ) from e
    except Exception as e:
        raise CheckpointError(f"{shown} could not be read: {type(e).__name__}: {str(e)[:300]}") from e
    module = obj
    if isinstance(obj, Mapping):
        mods = [v for v in obj.values() if isinstance(v, torch.nn.Module)]
        if len(mods) == 1:
            module = mods[0]
    if not isinstance(module, torch.nn.Module):
        raise CheckpointError(f"{shown} unpickles to {type(obj).__name__}, not an nn.Module.")
    sig = inspect.signature(module.forward)
    # required parameters, plus the optional ones named like text tensors (attention_mask, ...);
    # other optional ones (labels, head_mask, return_dict, **kwargs) keep their defaults
    params = [
        n
        for n, prm in sig.parameters.items()
        if prm.kind in (prm.POSITIONAL_ONLY, prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY)
        and (prm.default is prm.empty or n in TEXT_NAMES)
    ]
    var_positional = any(prm.kind == prm.VAR_POSITIONAL for prm in sig.parameters.values())
    if var_positional and _sidecar_path(options.config, folders) is None:
        raise CheckpointError(
            f"{shown}: {type(module).__name__}.forward takes *args, so its inputs cannot be read from its signature.",
            hint=f"Declare them in {SIDECAR} beside the file: "
            '{"inputs": ["input_ids", "attention_mask", "tabular"]}.',
        )
    keyword = not var_positional and not any(prm.kind == prm.POSITIONAL_ONLY for prm in sig.parameters.values())
    if var_positional:
        params = []  # taken from studio.json; called positionally
    module = module.to("cpu").float()
    return _build(
        "pickled-module",
        module,
        params,
        keyword,
        None,
        shown,
        options.config,
        folders,
        {"architecture": type(module).__name__},
    )
