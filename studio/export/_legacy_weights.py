"""The legacy (TorchScript) exporter with its weights written straight to external data.

torch.onnx's legacy path serialises every initializer inside the protobuf, and the weights are then held
several times over beside PyTorch's own copy: the C++ proto, its serialised string, Python's bytes, and
onnx's parsed copy (torch re-reads the file to add onnxscript functions). bert-base (0.44 GB of weights)
peaks at 2.2 GB that way. `weights_apart` takes the initializers out at the exporter's one seam,
`torch._C.Graph._export_onnx`, which receives the finished graph's parameters as a dict of tensors: the
graph is serialised without them (they stay graph inputs), and `write_external` streams each tensor into
`<name>.data` and turns those inputs back into initializers. Measured on bert-base (torch 2.13): peak
1.07 GB and 6.4 s, against 2.2 GB and 7.8 s. The graph is the exporter's own, node for node.

When the seam is not there (another torch), or a parameter has a dtype this module does not write, the
exporter runs unchanged and `weights_apart` yields an empty dict (the file then holds its weights and the
caller moves them out the usual way)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import TensorProto

# torch dtype -> ONNX element type, for the dtypes whose raw bytes ONNX reads as they are in memory
ONNX_TYPES = {
    torch.float32: TensorProto.FLOAT,
    torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16,
    torch.float64: TensorProto.DOUBLE,
    torch.int64: TensorProto.INT64,
    torch.int32: TensorProto.INT32,
    torch.int16: TensorProto.INT16,
    torch.int8: TensorProto.INT8,
    torch.uint8: TensorProto.UINT8,
    torch.bool: TensorProto.BOOL,
}
INLINE_BYTES = 1024  # smaller tensors stay inside the .onnx (onnx.save's default size_threshold)
ALIGN_FROM = 1024**2  # tensors of at least this size start at a page boundary, so ORT can map them
PAGE = 4096
# the class whose private `_export_onnx` is the seam: torch's stubs do not declare it (it is not API), hence Any
_GRAPH: Any = torch._C.Graph


@contextlib.contextmanager
def weights_apart() -> Iterator[dict[str, torch.Tensor]]:
    """While active, the legacy exporter writes its graph without initializers; the yielded dict then
    holds them (name -> tensor), for write_external. Empty when the exporter ran unchanged."""
    taken: dict[str, torch.Tensor] = {}
    original = getattr(_GRAPH, "_export_onnx", None)
    if original is None:
        yield taken
        return

    def without_weights(graph, params, *rest):
        if not writable(params):
            return original(graph, params, *rest)
        taken.update(params)
        return original(graph, {}, *rest)

    _GRAPH._export_onnx = without_weights
    try:
        yield taken
    finally:
        _GRAPH._export_onnx = original


@contextlib.contextmanager
def proto_rewritten(rewrite: Callable[[onnx.ModelProto], bool] | None) -> Iterator[list[bool]]:
    """While active, the model the legacy exporter serialises goes through `rewrite(model) -> changed` at the
    same seam (`_export_onnx` returns the bytes torch then writes): a change to the graph costs no second read
    and write of the file (MiniLM's embedded 90 MB: 0.67 s). Inside weights_apart it sees the graph without
    its weights. Yields a list that holds True once the rewrite ran; empty (the seam is not there, or the
    bytes are not a proto this can parse): the caller rewrites the file instead."""
    ran: list[bool] = []
    original = getattr(_GRAPH, "_export_onnx", None)
    if rewrite is None or original is None:
        yield ran
        return

    def rewritten(graph, *rest):
        out = original(graph, *rest)
        if not (isinstance(out, tuple) and out and isinstance(out[0], bytes) and len(out[0]) < 2**31):
            return out
        model = onnx.ModelProto.FromString(out[0])
        ran.append(True)
        return (model.SerializeToString(), *out[1:]) if rewrite(model) else out

    _GRAPH._export_onnx = rewritten
    try:
        yield ran
    finally:
        _GRAPH._export_onnx = original


def writable(params: dict[str, torch.Tensor]) -> bool:
    """Whether write_external can write every one of these tensors (and there is at least one)."""
    return bool(params) and all(t.dtype in ONNX_TYPES for t in params.values())


def _raw(tensor: torch.Tensor):
    """The tensor's bytes as a buffer, without a copy when it is contiguous on the CPU."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def write_external(path: Path, taken: dict[str, torch.Tensor]) -> None:
    """Move the graph inputs named in `taken` into initializers: tensors of INLINE_BYTES or more go into
    `<path>.data` (one file, in order), smaller ones inside the graph. Empties `taken` as it goes."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    location = path.name + ".data"
    kept_inputs = [i for i in model.graph.input if i.name not in taken]
    offset = 0
    with open(path.with_name(location), "wb") as data:
        for name in list(taken):
            tensor = taken.pop(name)
            proto = TensorProto(name=name, data_type=ONNX_TYPES[tensor.dtype], dims=list(tensor.shape))
            raw = _raw(tensor)
            size = raw.nbytes
            if size < INLINE_BYTES:
                proto.raw_data = raw.tobytes()
            else:
                if size >= ALIGN_FROM and offset % PAGE:
                    data.write(b"\0" * (PAGE - offset % PAGE))
                    offset += PAGE - offset % PAGE
                data.write(raw.data)
                proto.data_location = TensorProto.EXTERNAL
                for key, value in (("location", location), ("offset", offset), ("length", size)):
                    proto.external_data.add(key=key, value=str(value))
                offset += size
            model.graph.initializer.append(proto)
            del tensor, raw
    if not offset:
        path.with_name(location).unlink()
    del model.graph.input[:]
    model.graph.input.extend(kept_inputs)
    onnx.save(model, str(path))
