"""Export a causal LM (*ForCausalLM, *LMHeadModel) as one `model.onnx` with its key/value cache.

    export_decoder(module, config, out_dir, opset=18, with_past=True) -> GeneratorFiles

The file takes and returns what optimum's `text-generation-with-past` writes (the layout transformers.js,
ONNX Runtime GenAI and optimum's ORTModelForCausalLM load):

- inputs  `input_ids` [batch, sequence], `attention_mask` [batch, past_sequence + sequence], `position_ids`
  [batch, sequence] (only where the architecture takes them: not the ALiBi ones, see studio.generate.facts),
  `past_key_values.{i}.key` / `.value` [batch, kv_heads, past_sequence, head_dim] (past length 0 on the first step)
- outputs `logits` [batch, sequence, vocab], `present.{i}.key` / `.value` [batch, kv_heads, past_sequence +
  sequence, head_dim]

GQA / MQA models keep their key/value head count. The graph's metadata_props record the cache layout
(`studio.cache`: JSON with layers, kv_heads, head_dim, layout, position_ids, task). `with_past=False` writes the plain
forward: input_ids, attention_mask (, position_ids) -> logits.

The export is TorchScript's (torch.onnx.export(..., dynamo=False), as optimum's): a wrapper fills a
transformers `DynamicCache` from the flat past tensors with `cache.update(k, v, i)`, calls the model with
`cache=..., use_cache=True` and returns the logits and every layer's keys and values. The cache holds full-attention
layers only (sliding-window models keep every past key; their attention mask still hides what lies past the window,
as transformers' own sliding mask does). Weights above studio.export.exporters.EXTERNAL_DATA_BYTES go to one
`model.onnx.data` beside the graph.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx
import torch

from studio.artifacts import reraise_disk_full
from studio.errors import ExportError, first_line
from studio.export.exporters import EXTERNAL_DATA_BYTES, weights_apart, write_external
from studio.generate.base import TEXT_GENERATION, GeneratorFiles
from studio.generate.facts import Facts, decoder_facts
from studio.quiet import quiet

FILE = "model.onnx"
METADATA_KEY = "studio.cache"


def past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def present_names(layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def input_names(facts: Facts, with_past: bool = True) -> list[str]:
    names = ["input_ids", "attention_mask"] + (["position_ids"] if facts.position_ids else [])
    return names + (past_names(facts.layers) if with_past else [])


def output_names(facts: Facts, with_past: bool = True) -> list[str]:
    return ["logits"] + (present_names(facts.layers) if with_past else [])


def takes_position_ids(module: torch.nn.Module, facts: Facts) -> bool:
    """The facts' answer, and the forward really has the parameter."""
    return facts.position_ids and "position_ids" in inspect.signature(module.forward).parameters


def make_cache(past: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> Any:
    """A transformers DynamicCache of full-attention layers holding `past` (key, value, key, value, ...)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i in range(len(past) // 2):
        cache.update(past[2 * i], past[2 * i + 1], i)
    return cache


def cache_tensors(cache: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for layer in cache.layers:
        out += [layer.keys, layer.values]
    return out


class DecoderWithPast(torch.nn.Module):
    """(input_ids, attention_mask[, position_ids], *past) -> (logits, *present), through the model's own forward."""

    def __init__(self, model: torch.nn.Module, layers: int, position_ids: bool, with_past: bool = True):
        super().__init__()
        self.model, self.layers, self.position_ids, self.with_past = model, layers, position_ids, with_past

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *rest: torch.Tensor) -> Any:
        kwargs: dict[str, Any] = {}
        if self.position_ids:
            kwargs["position_ids"], rest = rest[0], rest[1:]
        if not self.with_past:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
            return out.logits
        cache = make_cache(rest)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True, **kwargs)
        return (out.logits, *cache_tensors(out.cache))


def dummy_inputs(
    facts: Facts, position_ids: bool, with_past: bool, vocab: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, ...]:
    """batch 2, sequence 3, past 2: every dynamic axis > 1 and distinct, so the trace keeps them symbolic. The
    past in the model's floating dtype."""
    batch, seq, past = 2, 3, 2 if with_past else 0
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, max(2, vocab), (batch, seq), generator=g)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    tensors: list[torch.Tensor] = [ids, mask]
    if position_ids:
        tensors.append(torch.arange(past, past + seq).unsqueeze(0).expand(batch, seq).contiguous())
    if with_past:
        shape = (batch, facts.kv_heads, past, facts.head_dim)
        tensors += [torch.randn(shape, generator=g).to(dtype) for _ in range(2 * facts.layers)]
    return tuple(tensors)


def dynamic_axes(facts: Facts, position_ids: bool, with_past: bool) -> dict[str, dict[int, str]]:
    total = "past_sequence + sequence" if with_past else "sequence"
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: total},
        "logits": {0: "batch", 1: "sequence"},
    }
    if position_ids:
        axes["position_ids"] = {0: "batch", 1: "sequence"}
    if with_past:
        for name in past_names(facts.layers):
            axes[name] = {0: "batch", 2: "past_sequence"}
        for name in present_names(facts.layers):
            axes[name] = {0: "batch", 2: "past_sequence + sequence"}
    return axes


@contextlib.contextmanager
def _eval(module: torch.nn.Module) -> Iterator[None]:
    """The module in eval mode for the export, its mode restored after (a wrapper in train mode would turn the
    model's dropout on when torch.onnx.export restores the wrapper's mode)."""
    was = {m: m.training for m in module.modules()}  # each submodule's own mode: a wrapper built in train mode
    module.eval()  # (nn.Module's default) must not hand the model back with its dropout on
    try:
        yield
    finally:
        for m, training in was.items():
            m.training = training


def _check_layout(facts: Facts, present: list[torch.Tensor]) -> None:
    """The cache the model really returns has the layout the facts say, or the export stops naming both."""
    if len(present) != 2 * facts.layers:
        raise ExportError(
            f"{facts.model_type}: the model returned {len(present) // 2} cache layers, the config says {facts.layers}"
        )
    want = (facts.kv_heads, facts.head_dim)
    for i, t in enumerate(present):
        if t.dim() != 4 or (t.shape[1], t.shape[3]) != want:
            raise ExportError(
                f"{facts.model_type}: cache layer {i // 2} has shape {list(t.shape)}; the facts say "
                f"[batch, {facts.kv_heads} kv heads, sequence, {facts.head_dim} head dim]",
                hint="studio/generate/facts.py reads this architecture's layout; add or fix its entry",
            )


def float_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of the module's first floating parameter (its cache's dtype), float32 when it has none."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def weight_bytes(module: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def metadata(facts: Facts, position_ids: bool, with_past: bool) -> dict[str, str]:
    cache: dict[str, Any] = {"task": TEXT_GENERATION, "with_past": with_past, "position_ids": position_ids}
    if with_past:
        c = facts.cache
        cache.update(layers=c.layers, kv_heads=c.kv_heads, head_dim=c.head_dim, layout=c.layout)
        cache.update(inputs="past_key_values.{i}.key/.value", outputs="present.{i}.key/.value")
    return {METADATA_KEY: json.dumps(cache), "studio.model_type": facts.model_type}


INLINE_BYTES = 1024  # smaller tensors stay inside the .onnx (onnx.save's default size_threshold)
PAGE = 4096  # tensors in the .data file start at a page boundary, so ONNX Runtime can map them


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """The graph's initializers and the tensors of its Constant nodes (where TorchScript leaves some weights)."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def _tensor_bytes(t: onnx.TensorProto, folder: Path) -> bytes | None:
    """The raw bytes of a tensor worth moving out (external already, or inline raw_data >= INLINE_BYTES)."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        with open(folder / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            return f.read(int(info["length"])) if "length" in info else f.read()
    if t.HasField("raw_data") and len(t.raw_data) >= INLINE_BYTES:
        raw = t.raw_data
        t.ClearField("raw_data")
        return raw
    return None


# the dynamo exporter's names for the dims (dynamic_shapes takes no sum) -> the names TorchScript / optimum write
DIM_NAMES = {"total_sequence": "past_sequence + sequence"}


def _same_dim_names(model: onnx.ModelProto) -> None:
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in DIM_NAMES:
                dim.dim_param = DIM_NAMES[dim.dim_param]


def _save(tmp: Path, dest: Path, props: dict[str, str], external: bool) -> bool:
    """The exported graph from `tmp` to `dest` with `props` in its metadata; its weights streamed into one
    `<dest>.data` file (a tensor at a time) when `external`, or when the exporter already wrote them apart (one
    file per tensor, above 2 GiB). Returns whether the weights are external."""
    model = onnx.load(str(tmp), load_external_data=False)
    for k, v in props.items():
        entry = next((p for p in model.metadata_props if p.key == k), None) or model.metadata_props.add()
        entry.key, entry.value = k, v
    _same_dim_names(model)
    apart = [t for t in _tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    if not (external or apart):
        onnx.save(model, str(dest))
        return False
    location = dest.name + ".data"
    places = {e.value for t in apart for e in t.external_data if e.key == "location"}
    inline = any(t.HasField("raw_data") and len(t.raw_data) >= INLINE_BYTES for t in _tensors(model))
    if places == {location} and not inline:  # already one file of that name (weights_apart): moved, not copied
        shutil.move(str(tmp.parent / location), str(dest.parent / location))
        onnx.save(model, str(dest))
        return True
    with open(dest.parent / location, "wb") as data:
        for t in _tensors(model):
            raw = _tensor_bytes(t, tmp.parent)
            if raw is None:
                continue
            offset = -(-data.tell() // PAGE) * PAGE
            data.seek(offset)
            data.write(raw)
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
    onnx.save(model, str(dest))
    return True


@contextlib.contextmanager
def _traceable_experts(module: torch.nn.Module, notes: list[str]) -> Iterator[None]:
    """Mixture-of-experts models run their experts through "batched_mm" for the export (each token's experts
    gathered by index: one graph for any routing), their own implementation restored after. The eager loop over the
    experts a batch hits would be frozen by the trace to those of the dummy input; grouped_mm uses ops (histc)
    that torch.onnx cannot export."""
    prev = getattr(getattr(module, "config", None), "_experts_implementation", None)
    can = getattr(module, "_can_set_experts_implementation", None)
    if prev in (None, "batched_mm") or not callable(can) or not can():
        yield
        return
    module.set_experts_implementation("batched_mm")  # type: ignore[operator]
    notes.append(f"mixture of experts exported through experts_implementation='batched_mm' (the model's: {prev})")
    try:
        yield
    finally:
        module.set_experts_implementation(prev)  # type: ignore[operator]


def _dynamic_shapes(facts: Facts, position_ids: bool, with_past: bool) -> tuple[Any, ...]:
    """The dynamo exporter's dynamic_shapes for (input_ids, attention_mask, *rest)."""
    from torch.export import Dim

    batch, seq, total, past = Dim("batch"), Dim("sequence"), Dim("total_sequence"), Dim("past_sequence")
    rest: list[dict[int, Any]] = [{0: batch, 1: seq}] if position_ids else []
    if with_past:
        rest += [{0: batch, 2: past} for _ in range(2 * facts.layers)]
    return ({0: batch, 1: seq}, {0: batch, 1: total if with_past else seq}, tuple(rest))


def _torch_export(
    exporter: str,
    wrapper: DecoderWithPast,
    args: tuple[torch.Tensor, ...],
    path: Path,
    facts: Facts,
    opset: int,
    external: bool = False,
    on_exported: Callable[[], object] | None = None,
) -> None:
    ins, outs = input_names(facts, wrapper.with_past), output_names(facts, wrapper.with_past)
    if exporter == "dynamo":
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=ins,
            output_names=outs,
            dynamic_shapes=_dynamic_shapes(facts, wrapper.position_ids, wrapper.with_past),
            opset_version=opset,
            dynamo=True,
            external_data=external,
            verbose=False,
        )
        return
    # above the threshold the weights never enter the protobuf: they are streamed into <path>.data (the house's
    # seam, studio.export.exporters), so the peak is the PyTorch weights and the constants the exporter folds
    apart: contextlib.AbstractContextManager[dict[str, torch.Tensor]] = (
        weights_apart() if external else contextlib.nullcontext({})
    )
    with apart as taken:
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=ins,
            output_names=outs,
            dynamic_axes=dynamic_axes(facts, wrapper.position_ids, wrapper.with_past),
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    if on_exported is not None:  # the model is no longer traced (is_in_onnx_export() is process-wide)
        on_exported()
    if taken:
        write_external(path, taken)


EXPORTERS = {"auto": ("torchscript", "dynamo"), "torchscript": ("torchscript",), "dynamo": ("dynamo",)}


def export_decoder(
    module: torch.nn.Module,
    config: Any,
    out_dir: str | Path,
    opset: int = 18,
    with_past: bool = True,
    external_data: bool | None = None,
    file_name: str = FILE,
    exporter: str = "auto",
    on_exported: Callable[[], object] | None = None,
) -> GeneratorFiles:
    """Write `out_dir/model.onnx` (and `model.onnx.data` above EXTERNAL_DATA_BYTES of weights, or when
    `external_data` says so) for the causal LM `module`. `exporter`: "torchscript" (optimum's, ~1 s for a tiny
    model), "dynamo" (torch.export-based, ~20-30 s), or "auto": TorchScript, then dynamo when TorchScript fails
    (cohere's tiny model needs it). Raises GenerationRefused for an architecture without a key/value cache,
    ExportError when no exporter can export it or its cache is not the layout the facts say. `on_exported`: called
    once TorchScript's torch.onnx.export has returned (the weights' writing and the file's saving follow), so
    work on the PyTorch module can run beside them; never during a trace, never for dynamo."""
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r} for a decoder (one of: {', '.join(EXPORTERS)})")
    facts = decoder_facts(config)
    position_ids = takes_position_ids(module, facts)
    if not position_ids and facts.position_ids:
        facts = Facts(**{**facts.__dict__, "position_ids": False})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = int(getattr(config.get_text_config(decoder=True), "vocab_size", 0) or 0)
    wrapper = DecoderWithPast(module, facts.layers, position_ids, with_past)
    args = dummy_inputs(facts, position_ids, with_past, vocab, float_dtype(module))
    external = weight_bytes(module) > EXTERNAL_DATA_BYTES if external_data is None else external_data
    notes: list[str] = []
    failures: list[str] = []
    used, is_external = "", False
    with _eval(wrapper), torch.no_grad(), warnings.catch_warnings(), _traceable_experts(module, notes):
        warnings.simplefilter("ignore")
        if with_past:
            _check_layout(facts, list(wrapper(*args)[1:]))
        for name in EXPORTERS[exporter]:
            tmp_dir = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
            try:
                with quiet():
                    hook = on_exported if name == "torchscript" else None
                    _torch_export(name, wrapper, args, tmp_dir / file_name, facts, opset, external, hook)
                is_external = _save(
                    tmp_dir / file_name, out / file_name, metadata(facts, position_ids, with_past), external
                )
                used = name
                break
            except Exception as e:  # noqa: BLE001 - each exporter's failure is recorded; the next one is tried
                reraise_disk_full(e)
                failures.append(f"{name}: {first_line(e, with_type=True)}")
            finally:
                shutil.rmtree(tmp_dir, ignore_errors=True)
    if not used:
        raise ExportError(
            f"torch.onnx could not export {facts.model_type} with its cache: " + "; ".join(failures),
            hint="--exporter dynamo or torchscript picks one exporter; studio/generate/facts.py holds the "
            "architecture's facts",
        )
    notes += [f"{f} (then {used} was used)" for f in failures]
    return GeneratorFiles(
        task=TEXT_GENERATION,
        folder=out,
        files={"model": file_name},
        io={"model": input_names(facts, with_past) + output_names(facts, with_past)},
        cache=facts.cache if with_past else None,
        external_data=is_external,
        exporter=used,
        warnings=notes,
    )


def read_layout(path: str | Path) -> dict[str, Any]:
    """The cache layout a decoder file records in its metadata ({} when it records none)."""
    model = onnx.load(str(path), load_external_data=False)
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            return dict(json.loads(p.value))
    return {}
