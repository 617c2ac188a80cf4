"""Report dataclasses -> JSON. Results live here, never only in log lines; studio.report.render turns them into
table rows and report.md."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = "onnx-studio/report"
SCHEMA_VERSION = 1


@dataclass
class ExportAttempt:
    exporter: str  # "dynamo" | "torchscript"
    ok: bool
    error: str | None = None
    seconds: float | None = None
    opset_written: int | None = None
    diagnosis_path: str | None = None  # the exporter's own markdown report, when it wrote one
    skipped: bool = False  # not run: known to fail for this model and opset (the reason is in `error`)
    note: str | None = None  # what the studio did to the exporter's file (e.g. a rewrite of leftover ops)


@dataclass
class ExportInfo:
    exporter: str | None  # the exporter whose file was kept
    opset_requested: int
    opset: int | None  # read back from the file
    seconds: float
    attempts: list[ExportAttempt] = field(default_factory=list)
    external_data: bool = False
    # why this exporter's file was kept, e.g. "dynamo succeeded first", "dynamo failed: ...; fell back to
    # torchscript", or the comparison's verdict (--exporter compare)
    reason: str = ""
    # [batch, sequence] the exporter traced along the dynamic axes (studio/export/_example.py); None: static
    traced: list[int | None] | None = None


@dataclass
class CandidateRow:
    """One exporter's file, checked and timed beside the other's (--exporter compare, studio/export/compare.py)."""

    exporter: str
    exported: bool  # a usable file was written (else `error` says why, or that it was skipped)
    error: str | None = None
    skipped: bool = False
    opset: int | None = None  # read back from the file
    producer: str = ""
    checker: bool | None = None
    parity: bool | None = None
    parity_max_abs_diff: float | None = None
    dynamic: bool | None = None  # the shape probes; None when no dynamic axes were asked for
    failed_checks: list[str] = field(default_factory=list)
    nodes: int | None = None
    op_counts: dict[str, int] = field(default_factory=dict)
    size_bytes: int | None = None
    export_seconds: float | None = None
    ort_cpu: Timing | None = None  # timed side by side with the other file (latency.side_by_side)
    round_p50_ms: list[float] = field(default_factory=list)  # ORT CPU p50 of each alternating round
    latency_error: str | None = None
    # its file, relative to the output folder: "model.onnx" for the winner, "candidates/model.<exporter>.onnx"
    # for the other usable file; None when it wrote none (or a report from before the files were kept)
    file: str | None = None

    @property
    def passes(self) -> bool:
        """Exported, and every check passed."""
        return self.exported and not self.failed_checks


@dataclass
class Comparison:
    rows: list[CandidateRow]
    winner: str
    reason: str  # how the winner was decided, with the numbers
    margin: float  # ORT CPU p50: the faster file wins only when it is this fraction below the other's
    threads: int | None = None
    budget_s: float | None = None


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int | str]  # ints for fixed dims, names for symbolic ones


@dataclass
class GraphInfo:
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    op_counts: dict[str, int]
    size_bytes: int
    opset: int | None
    producer: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class CheckerInfo:
    ok: bool
    message: str


@dataclass
class OutputDiff:
    name: str
    max_abs_diff: float
    max_rel_diff: float
    ok: bool
    argmax_agreement: float | None = None  # fraction of rows whose argmax agrees; None if n/a
    shape: list[int] = field(default_factory=list)
    # what a row is for argmax_agreement: "rows" (classes), "real tokens" (token classification, padding
    # left out), "rows, over real tokens" (question answering start / end positions)
    agreement_over: str | None = None
    topk: int | None = None  # k of topk_agreement (class outputs with >= 3 classes)
    topk_agreement: float | None = None  # fraction of rows whose top-k class sets are equal
    min_cosine: float | None = None  # embeddings: lowest cosine similarity ORT vs PyTorch over rows / real tokens
    # non-finite values, counted in each runtime (never replaced by numbers in a difference)
    torch_nan: int = 0
    torch_inf: int = 0
    ort_nan: int = 0
    ort_inf: int = 0
    same_nonfinite: int = 0  # elements non-finite alike in both (NaN and NaN, +inf and +inf): not differences
    nonfinite_rows: list[int] = field(default_factory=list)  # 1-based rows where they disagree on one
    note: str = ""  # what the counts mean, in words (empty when every value is finite)


@dataclass
class ParityInfo:
    ok: bool
    atol: float
    rtol: float
    outputs: list[OutputDiff]
    rows: int = 0
    provider: str = "CPUExecutionProvider"
    error: str | None = None  # why there is no difference to show (ONNX Runtime could not run the rows)


@dataclass
class Probe:
    batch: int
    sequence: int | None
    ok: bool
    max_abs_diff: float | None
    message: str
    changed: str = ""  # which axis this probe varies: "batch" | "sequence" | ""


@dataclass
class DynamicInfo:
    ok: bool | None  # None = not requested (static export)
    probes: list[Probe] = field(default_factory=list)
    requested: dict[str, list[str]] = field(default_factory=dict)  # input -> dynamic axes asked


@dataclass
class Timing:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    iterations: int
    batch: int
    sequence: int | None
    threads: int | None
    provider: str  # what really ran, e.g. "CPUExecutionProvider", "CUDAExecutionProvider", "torch-cpu"
    warmup: int = 0  # untimed calls made first
    io_binding: bool = False  # ORT CUDA: inputs and outputs bound on the device (no host copies timed)
    ci95_pct: float | None = None  # the median's 95% confidence interval, +- this % of p50 (None: < 6 calls)
    stopped: str | None = None  # why timing stopped: "precision" (CI within target), "budget", "max_iters"


@dataclass
class LatencyInfo:
    torch_cpu: Timing | None = None
    ort_cpu: Timing | None = None
    ort_cuda: Timing | None = None
    torch_cuda: Timing | None = None
    cuda_unavailable_reason: str | None = None
    threads: int | None = None
    budget_s: float | None = None
    errors: dict[str, str] = field(default_factory=dict)  # measurement -> why it could not run
    # the same measurements at batch 1 (key as above -> Timing); empty when the sample has one row
    batch1: dict[str, Timing] = field(default_factory=dict)
    seconds: float | None = None  # wall time spent measuring
    # what else the machine was doing: {"cpu", "logical_cpus", "load_avg_before", "load_avg_after"};
    # a load average above the core count means other processes competed for the CPU while timing
    machine: dict[str, Any] = field(default_factory=dict)
    # how PyTorch was run for its timings, e.g. "sdpa attention (transformers' default; the export traced eager)";
    # None: no transformers model inside (timed as loaded)
    torch_attention: str | None = None


@dataclass
class VariantInfo:
    """An extra artifact (optimized / int8 / fp16) with its own checks."""

    name: str
    file: str | None
    ok: bool
    size_bytes: int | None = None
    parity: ParityInfo | None = None
    dynamic: DynamicInfo | None = None
    latency: LatencyInfo | None = None
    error: str | None = None
    notes: str = ""
    method: str = ""  # how it was built, e.g. "onnxscript ORT fusions", "onnxruntime dynamic quantization"
    source: str = ""  # the file it was built from, relative to the output folder
    files: list[str] = field(default_factory=list)  # every file of the artifact (.onnx + .data), relative
    tolerance: dict[str, Any] = field(default_factory=dict)  # {atol, rtol, min_argmax_agreement, rule}
    provider: str | None = None  # the execution provider its parity was checked on
    seconds: float | None = None  # time to build it
    speedup_vs_torch: float | None = None  # PyTorch CPU p50 / this variant's ORT CPU p50, timed as a pair, sample batch
    # over fp32 model.onnx through PyTorch: speedup_vs_torch / model.onnx's (each file was timed beside PyTorch)
    speedup_vs_fp32: float | None = None
    quantized: int | None = None  # operators quantized (int8 variants); None: not a quantized variant
    cast: int | None = None  # tensors made fp16 (weights + casts; fp16); None: not an fp16 variant
    kept_float: list[str] = field(default_factory=list)  # nodes kept in float by the repair (names in `source`)
    # the repair of a variant that failed (studio/variants/_repair.py); {} when none was tried: tried, passed,
    # rounds, kept, before / after (verdicts), stopped (why), seconds, size_bytes_before, history (per round:
    # kept, verdict, scores), and after timing: p50_ms_before / p50_ms (ORT CPU, sample batch), slowdown
    repair: dict[str, Any] = field(default_factory=dict)
    take: bool = False  # the one to take on this CPU: passing, timed on CPU, the fastest (studio/variants/table.py)


@dataclass
class TokenDiff:
    """Where one prompt's ONNX Runtime continuation first leaves transformers' `generate` (studio.generate)."""

    prompt: int  # index of the prompt in the sample's text column
    step: int  # 0 = the first new token
    expected: int  # transformers' token id at that step
    got: int  # ONNX Runtime's token id
    expected_text: str = ""
    got_text: str = ""
    margin: float | None = None  # transformers' top-1 minus top-2 logit at that step
    near_tie: bool = False  # margin within the logits' tolerance: a tie broken the other way, not a failure


@dataclass
class PromptResult:
    """One prompt, greedily continued by both engines."""

    prompt: int
    text: str  # the prompt (cut for the report)
    reference_ids: list[int] = field(default_factory=list)  # new tokens from transformers' generate
    onnx_ids: list[int] = field(default_factory=list)  # new tokens from ONNX Runtime through the file(s)
    reference_text: str = ""
    onnx_text: str = ""
    same: bool = False
    max_logits_diff: float | None = None  # max |difference| of the per-step logits (NaN stays NaN)
    divergence: TokenDiff | None = None
    # each new token decoded alone (the page marks the differing ones); empty: only the ids are known
    reference_tokens: list[str] = field(default_factory=list)
    onnx_tokens: list[str] = field(default_factory=list)


@dataclass
class GenerationRun:
    """One way of generating the prompts (one at a time, or batched with padding) and its verdict."""

    mode: str  # "one by one" | "batched"
    ok: bool
    prompts: list[PromptResult] = field(default_factory=list)
    padding_side: str | None = None  # batched: "left" for decoders
    identical_share: float | None = None  # share of new tokens identical to transformers'
    error: str | None = None


@dataclass
class GenerationSpeed:
    """Time to first token and decoding speed of one engine at one batch size."""

    engine: str  # "torch" | "onnxruntime"
    provider: str  # what really ran: "torch-cpu", "CPUExecutionProvider", "CUDAExecutionProvider"
    batch: int
    new_tokens: int
    ttft_ms: float | None = None
    tokens_per_s: float | None = None  # new tokens per second, all sequences of the batch counted
    io_binding: bool = False
    error: str | None = None
    threads: int | None = None  # intra-op threads of both engines (ORT CUDA: None)
    iterations: int | None = None  # timed whole decodes behind tokens_per_s (their median)
    sequence: int | None = None  # prompt length (the longest, padding included)
    note: str | None = None  # how it ran, e.g. PyTorch's attention, or what was bound on the device


@dataclass
class GenerationInfo:
    """A generator's export (decoder with its cache, or encoder + decoder), judged by generating the prompts."""

    task: str  # "text-generation" | "text2text-generation"
    with_past: bool  # the cache is an input and an output of the decoder file
    ok: bool
    files: dict[str, str] = field(default_factory=dict)  # role ("model", "encoder", "decoder", ...) -> file name
    io: dict[str, list[str]] = field(default_factory=dict)  # file role -> its input and output names
    cache: dict[str, Any] = field(default_factory=dict)  # layers, kv heads, head dim, layout
    max_new_tokens: int = 20
    runs: list[GenerationRun] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)  # {batch, sequence, past, max_abs_diff, ok}
    speed: list[GenerationSpeed] = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)  # {name, identical_share, first divergence}
    can: str = ""  # what the file can do, in words
    error: str | None = None


@dataclass
class Report:
    source: dict[str, Any]  # {kind, path, ...describe()}
    roles: dict[str, str]
    export: ExportInfo
    graph: GraphInfo | None
    checker: CheckerInfo | None
    parity: ParityInfo | None
    dynamic: DynamicInfo | None
    latency: LatencyInfo | None
    options: dict[str, Any] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)  # per row: ignored cols + outputs
    files: dict[str, str] = field(default_factory=dict)  # role -> file name inside the out dir
    variants: list[VariantInfo] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # tabular graph input -> [{"column", "start", "width"}]: the columns filling its feature indices, in order
    feeds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    comparison: Comparison | None = None  # --exporter compare: both exporters' files side by side
    # where ONNX Runtime first leaves PyTorch (studio.checks.locate's Divergence.to_dict()): when parity or a probe
    # failed, or on request (--locate); None when the locator did not run. It does not change `ok`.
    divergence: dict[str, Any] | None = None
    generation: GenerationInfo | None = None  # text-generation / text2text-generation: the generation check
    profile: dict[str, Any] | None = None  # ONNX Runtime's per-node profile on the sample (top nodes by time)
    # where the time went: {"stages": {stage: s}, "export_attempts": [{exporter, ok, skipped, seconds}], "total": s}
    timings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        """Every check that ran passed: checker, parity, dynamic probes (when requested), variants."""
        checks = [self.checker.ok if self.checker else False, self.parity.ok if self.parity else False]
        if self.dynamic is not None and self.dynamic.ok is not None:
            checks.append(self.dynamic.ok)
        checks += [v.ok for v in self.variants]
        if self.generation is not None:
            checks.append(self.generation.ok)
        return all(checks)

    @property
    def failed_checks(self) -> list[str]:
        failed = []
        if not (self.checker and self.checker.ok):
            failed.append("checker")
        if not (self.parity and self.parity.ok):
            failed.append("parity")
        if self.dynamic is not None and self.dynamic.ok is False:
            failed.append("dynamic")
        failed += [f"variant:{v.name}" for v in self.variants if not v.ok]
        if self.generation is not None and not self.generation.ok:
            failed.append("generation")
        return failed

    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema": self.schema,
            "schema_version": self.schema_version,
            "ok": self.ok,
            "failed_checks": self.failed_checks,
        }
        body = asdict(self)
        body.pop("schema"), body.pop("schema_version")
        d.update(body)
        return _finite(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so the file stays valid and honest."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def worst_diff(diffs: list[OutputDiff]) -> float | None:
    """Largest max abs diff; NaN (unknown) when any is NaN, never a smaller number in its place."""
    values = [d.max_abs_diff for d in diffs]
    return None if not values else (math.nan if any(math.isnan(v) for v in values) else max(values))


def map_leaves(obj: Any, leaf) -> Any:
    """`leaf` applied to every value (and dict key) inside dataclasses (changed in place), dicts, lists and
    tuples (a subclass of list or tuple comes back as a list)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            setattr(obj, f.name, map_leaves(getattr(obj, f.name), leaf))
        return obj
    if isinstance(obj, dict):
        return {map_leaves(k, leaf): map_leaves(v, leaf) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = (map_leaves(v, leaf) for v in obj)
        return type(obj)(items) if type(obj) in (list, tuple) else list(items)
    return leaf(obj)
