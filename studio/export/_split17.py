"""The opset-17 Split rewrite: torch 2.13's new exporter, asked for opset 17, down-converts its opset-18
graph but leaves `Split(num_outputs=n)` (an opset-18 form) in GPT-2, GPT-NeoX, GPT-J, MPT, ModernBERT and
RoFormer; the checker then rejects the file. `split_to_opset17` writes those nodes in the opset-13 form
with explicit sizes, from the shapes the exporter recorded."""

from __future__ import annotations

from pathlib import Path

import onnx


def _along(shape: list[int | None] | None, axis: int) -> int | None:
    """A recorded shape's size along `axis` (negative counts from the end); None when unknown."""
    return shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None


def _split_sizes(node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> list[int] | None:
    """Explicit sizes for an opset-18 Split that names only num_outputs, from the shapes the exporter
    recorded: each output's size along the axis, else the input's (ceil-sized chunks, last one smaller,
    as opset 18 defines). None when the sizes are not static."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    n, axis = int(attrs["num_outputs"]), int(attrs.get("axis", 0))
    outs = [_along(shapes.get(o), axis) for o in node.output]
    known = [int(s) for s in outs if s is not None]
    if len(known) == len(outs):
        return known
    total = _along(shapes.get(node.input[0]), axis)
    if total is None:
        return None
    chunk = -(-total // n)
    sizes = [chunk] * (n - 1) + [total - chunk * (n - 1)]
    return sizes if sizes[-1] >= 0 else None


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    out: dict[str, list[int | None]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = [int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim]
    return out


def split_to_opset17(path: Path) -> tuple[int, list[str]]:
    """Rewrite each opset-18 `Split(num_outputs=n)` that the new exporter's down-conversion leaves in
    an opset-17 file into the opset-13 form, `Split(x, split=sizes)`, where the sizes are static.

    Returns (nodes rewritten, names of the nodes whose sizes are unknown: left as they are, so the
    checker rejects the file). Only the graph is rewritten; external weights are not read."""
    model = onnx.load(str(path), load_external_data=False)
    shapes = _shapes(model)
    fixed, unknown = 0, []

    def rewrite(nodes) -> list[onnx.NodeProto]:
        nonlocal fixed
        new = []
        for node in nodes:
            for a in node.attribute:  # subgraphs (If / Loop / Scan bodies)
                if a.type == onnx.AttributeProto.GRAPH:
                    _replace(a.g.node, rewrite(a.g.node))
                for g in a.graphs if a.type == onnx.AttributeProto.GRAPHS else []:
                    _replace(g.node, rewrite(g.node))
            if (
                node.op_type == "Split"
                and node.domain in ("", "ai.onnx")
                and any(a.name == "num_outputs" for a in node.attribute)
            ):
                sizes = _split_sizes(node, shapes)
                if sizes is None:
                    unknown.append(node.name or node.output[0])
                else:
                    name = f"{node.name or node.output[0]}__split_sizes"
                    new.append(
                        onnx.helper.make_node(
                            "Constant",
                            [],
                            [name],
                            name=name,
                            value=onnx.helper.make_tensor(name, onnx.TensorProto.INT64, [len(sizes)], sizes),
                        )
                    )
                    _replace(node.attribute, [a for a in node.attribute if a.name != "num_outputs"])
                    del node.input[1:]
                    node.input.append(name)
                    fixed += 1
            new.append(node)
        return new

    _replace(model.graph.node, rewrite(model.graph.node))
    for f in model.functions:
        _replace(f.node, rewrite(f.node))
    if fixed:
        onnx.save(model, str(path))
    return fixed, unknown


def _replace(field, items) -> None:
    items = list(items)
    del field[:]
    field.extend(items)
