"""Static int8 (`int8-static`): weights and activations int8 in QDQ form (QuantizeLinear / DequantizeLinear pairs
around each matrix product), the activations' scales calibrated on the user's own sample rows.

ONNX Runtime's `quantize_static` (MinMax calibration: the range each activation reaches on the sample) with a
calibration reader that feeds the sample's tensors, the whole sample as one batch. Activations uint8, weights
int8 per output channel (U8S8, ONNX Runtime's default for x86 CPUs), matrix products with a constant weight only
(MatMulConstBOnly: products of two activations stay fp32, as in dynamic int8), Gemm and Conv too. ONNX Runtime
fuses the QDQ pairs into integer kernels when it loads the file. GELUs are fused first, as for dynamic int8.

Calibrated on the very rows parity then checks: the verdict there flatters the calibration (the shape probes run
other sizes, padded and cycled rows); an activation that reaches further in production is clipped to the
calibrated range, which dynamic int8 never does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from studio.artifacts import remove_model
from studio.errors import first_line
from studio.variants._builders import Built, Context, NothingChanged, gelu_notes, weight_products, with_fused_gelu

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")


def _reader(feeds: dict[str, np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class SampleReader(CalibrationDataReader):
        """The sample's tensors, once, as one batch."""

        def __init__(self) -> None:
            self.items = iter([dict(feeds)])

        def get_next(self):
            return next(self.items, None)

    return SampleReader()


def _qdq_products(path: Path) -> int:
    """Matrix products whose constant weight comes through a DequantizeLinear (what the quantizer made int8)."""
    model = onnx.load(str(path), load_external_data=False)
    consts = {t.name for t in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    dq = {o: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(
        n.op_type in QUANTIZED_OPS and len(n.input) > 1 and dq.get(n.input[1]) in consts for n in model.graph.node
    )


def build_int8_static(ctx: Context, src: Path, dest: Path, keep: tuple[str, ...] = ()) -> Built:
    """quantize_static on src (GELUs fused first), calibrated on ctx.feeds; keep: src's nodes left fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not ctx.feeds:
        raise NothingChanged("static int8 needs the sample's tensors to calibrate on, and there are none")
    try:
        fused, gelus, why = *with_fused_gelu(src, lift=True), None
    except Exception as e:  # a speed-up only: quantize the graph as exported
        fused, gelus, why = None, 0, first_line(e, with_type=True)
    graph = onnx.load(str(fused or src), load_external_data=False).graph
    names = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    weights = {c.name for c in weight_products(fused or src)}
    # products of two activations (attention scores) stay fp32: MatMulConstBOnly is not honoured in QDQ form
    # (bert-base: its 24 attention MatMuls were quantized with it)
    two_activations = [n.name for n in graph.node if n.op_type == "MatMul" and n.name and n.name not in weights]
    feeds = {n: a for n, a in ctx.feeds.items() if n in names}
    rows = next(iter(feeds.values())).shape[0] if feeds else 0
    try:
        quantize_static(
            str(fused or src),
            str(dest),
            _reader(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(keep) + two_activations,
            use_external_data_format=ctx.external,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        if fused is not None:
            fused.unlink(missing_ok=True)
    n = _qdq_products(dest)
    if not n:
        remove_model(dest)
        raise NothingChanged(
            "no operator was quantized (no matrix product or convolution with a constant weight"
            + (", or every one was kept in float" if keep else "")
            + "), so the int8-static file would be the fp32 one under a new name; none is written"
        )
    notes = [
        f"Weights int8 per channel and activations uint8 with scales calibrated on the sample's {rows} row(s) "
        f"(MinMax; QDQ format, ONNX Runtime's quantize_static): {n} matrix products quantized; products of two "
        "activations stay fp32. Calibrated on the rows its parity is checked on, so that check flatters it; "
        "activations beyond the calibrated range are clipped. Meant for CPU."
    ]
    if keep:
        notes.append(f"{len(keep)} node(s) kept in fp32 by the repair: {', '.join(keep)}.")
    return Built(
        dest,
        "onnxruntime static quantization (int8, QDQ, calibrated on the sample)",
        src,
        notes + gelu_notes(gelus, why),
        quantized=n,
        kept=list(keep),
        candidates=weight_products(src),
    )
