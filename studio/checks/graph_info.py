"""Read an .onnx file: graph inputs/outputs with symbolic dims, opset written, op counts, checker, and the
external-data files it refers to. (Named graph_info, not inspect: that would shadow the standard library's.)"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import onnx

from studio.errors import StudioError, UnsafePathError
from studio.report.model import CheckerInfo, GraphInfo, TensorInfo
from studio.sources.contain import resolve_inside


def _dtype(elem_type: int) -> str:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, ValueError, TypeError):  # no numpy twin (bfloat16, float8, string, undefined): onnx's name
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _tensor(vi: onnx.ValueInfoProto) -> TensorInfo:
    tt = vi.type.tensor_type
    shape: list[int | str] = []
    if tt.HasField("shape"):
        for d in tt.shape.dim:
            shape.append(
                d.dim_param if d.HasField("dim_param") else (int(d.dim_value) if d.HasField("dim_value") else "?")
            )
    return TensorInfo(vi.name, _dtype(tt.elem_type), shape)


def tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto the model holds: initializers and node-attribute tensors (Constant values), in
    subgraphs (If / Loop / Scan bodies) and functions too; what onnx's external-data code walks."""
    for graph in [model.graph, *model.functions]:
        yield from _graph_tensors(graph)


def _graph_tensors(graph: onnx.GraphProto | onnx.FunctionProto) -> Iterator[onnx.TensorProto]:
    yield from getattr(graph, "initializer", ())  # a FunctionProto has none
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            subgraphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sub in subgraphs:
                yield from _graph_tensors(sub)


def external_files(path: Path, model: onnx.ModelProto | None = None) -> list[Path]:
    """Files the graph's external data refers to. Refuses references outside the model's folder."""
    model = model or onnx.load(str(path), load_external_data=False)
    folder = path.resolve().parent
    files: set[Path] = set()
    for t in tensors(model):
        if not onnx.external_data_helper.uses_external_data(t):
            continue
        loc = {e.key: e.value for e in t.external_data}.get("location", "")
        target = resolve_inside(folder, folder, loc) if loc and not Path(loc).is_absolute() else None
        if target is None or target == folder:
            raise UnsafePathError(
                f"{path.name}: tensor {t.name!r} points its external data at {loc!r}, "
                "outside the model's folder; refused."
            )
        files.add(target)
    return sorted(files)


def graph_info(path: Path) -> GraphInfo:
    """Inputs, outputs, op counts, size (model + external data) and opset of the file at `path`."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise StudioError(f"{path.name} is not a readable ONNX file: {e}") from e
    initializers = {i.name for i in model.graph.initializer}
    ops = Counter(
        f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in _all_nodes(model.graph)
    )
    size = path.stat().st_size + sum(f.stat().st_size for f in external_files(path, model) if f.exists())
    opset = next((int(i.version) for i in model.opset_import if i.domain in ("", "ai.onnx")), None)
    return GraphInfo(
        inputs=[_tensor(i) for i in model.graph.input if i.name not in initializers],
        outputs=[_tensor(o) for o in model.graph.output],
        op_counts=dict(sorted(ops.items())),
        size_bytes=size,
        opset=opset,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        metadata={p.key: p.value for p in model.metadata_props},
    )


def _all_nodes(graph: onnx.GraphProto):
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _all_nodes(g)


def check(path: Path, model: onnx.ModelProto | None = None) -> CheckerInfo:
    """onnx.checker with full_check (shape inference too) on the saved path: works past 2 GB. `model`: the
    file's graph already read (without external data), for the external-data check."""
    try:
        external_files(Path(path), model)
        onnx.checker.check_model(str(path), full_check=True)
    except UnsafePathError:
        raise
    except Exception as e:
        return CheckerInfo(False, f"{type(e).__name__}: {str(e).strip()[:2000]}")
    return CheckerInfo(True, "onnx.checker.check_model(full_check=True) passed")
