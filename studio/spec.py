"""ConvertSpec: the one options object that flows from CLI flags / UI controls to the pipeline."""

from __future__ import annotations

import re
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Protocol

from studio.errors import StudioError

ROLES = ("text", "tabular", "ignore")
EXPORTERS = ("auto", "dynamo", "torchscript", "compare")  # compare: run both, keep the better file
DYNAMIC_AXES = ("batch", "sequence")
ID_DTYPES = ("int64", "int32")
OPSET_MIN, OPSET_MAX, OPSET_DEFAULT = 14, 23, 18
VARIANTS = ("optimized", "int8", "int8-static", "fp16")
HEAD_NAMES = ("sequence", "pooled", "token")
# what the graph computes (--task), as optimum-cli's; auto: modules.json -> sentence-embedding, else the
# config's architectures (docs/cli.md, `--task`)
TASKS = (
    "auto",
    "sentence-embedding",
    "feature-extraction",
    "sequence-classification",
    "token-classification",
    "question-answering",
    "text-generation",  # decoders (*ForCausalLM, *LMHeadModel): exported with their cache (docs/generation.md)
    "text2text-generation",  # encoder-decoders (seq2seq *ForConditionalGeneration): encoder + decoder with cache
)
MAX_NEW_TOKENS_MAX = 4096  # --max-new-tokens: the most tokens the generation check decodes per prompt

# Default --max-params (the most parameters a config may declare; counted on the meta device before
# anything is allocated, see sources.sizing). The studio loads and exports every model in float32 (4 bytes
# a parameter) and an export holds about twice the weights at its peak, so 5e9 parameters already need
# ~40 GB of memory, more than the machines it runs on, while the encoders it converts are far below 1e9.
# It is also about what the largest zip the studio unpacks (20 GiB) can carry as float32.
MAX_PARAMS_DEFAULT = 5_000_000_000

# Documented defaults for the parity verdict (float32 export of float32 weights).
ATOL_DEFAULT = 1e-4
RTOL_DEFAULT = 1e-3

SAMPLE_LIMITS_OPTION = "--sample-limits"


@dataclass  # not frozen: the app's worker maps over dataclasses in place
class SampleLimits:
    """What a sample file ("a few real rows") may hold, checked while it is read (studio/inputs/batch.py).

    The defaults are far beyond a real sample; an operator raises one with `--sample-limits KEY=N,...`
    (e.g. `rows=50000,size=200mb`) or `ConvertSpec(sample_limits=SampleLimits(rows=50_000))`.
    """

    size: int = 64 * 1024**2  # bytes in the file
    rows: int = 10_000  # data rows (records)
    columns: int = 10_000  # columns (distinct keys of the records)
    cell: int = 1_000_000  # characters in one cell, column name or JSON string
    depth: int = 32  # JSON nesting: arrays / objects inside each other
    keys: int = 100_000  # keys in one JSON object (a column object keyed by row needs one per row)
    cells: int = 1_000_000  # rows x columns: every cell is typed one by one (1M took ~40 s on 2 busy cores)

    def hint(self, key: str) -> str:
        return f"{SAMPLE_LIMITS_OPTION} {key}={'SIZE (e.g. 200mb)' if key == 'size' else 'N'}"

    def validated(self) -> SampleLimits:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise StudioError(f"{SAMPLE_LIMITS_OPTION} {f.name}={v!r}: must be a whole number >= 1.")
        return self


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}


def parse_sample_limits(value: str | dict | SampleLimits | None) -> SampleLimits:
    """`rows=50000,size=200mb` (CLI), a dict, or SampleLimits -> SampleLimits; unknown keys are an error."""
    if value is None or value == "":
        return SampleLimits()
    if isinstance(value, SampleLimits):
        return value.validated()
    names = [f.name for f in fields(SampleLimits)]
    items = (
        value.items()
        if isinstance(value, dict)
        else [item.partition("=")[::2] for item in str(value).split(",") if item.strip()]
    )
    out: dict[str, int] = {}
    for key, raw in items:
        key = str(key).strip().lower()
        if key not in names:
            raise StudioError(f"{SAMPLE_LIMITS_OPTION}: unknown limit {key!r}; known: {', '.join(names)}.")
        m = re.fullmatch(r"\s*([0-9][0-9_,]*)\s*([a-z]*)\s*", str(raw).lower())
        if isinstance(raw, int) and not isinstance(raw, bool):
            out[key] = raw
        elif m and m.group(2) in _SIZE_UNITS and (key == "size" or not m.group(2)):
            out[key] = int(m.group(1).replace("_", "").replace(",", "")) * _SIZE_UNITS[m.group(2)]
        else:
            raise StudioError(
                f"{SAMPLE_LIMITS_OPTION} {key}={raw!r} is not a whole number"
                + (" (a size may end in kb, mb, gb)." if key == "size" else ".")
            )
    return SampleLimits(**out).validated()


@dataclass
class ConvertSpec:
    """Everything a conversion needs. Construct it, call `.validated()`, hand it to `convert`."""

    checkpoint: str
    data: str
    out: str = "studio-out"
    roles: dict[str, str] = field(default_factory=dict)  # column -> role; others get the suggestion
    # tabular input -> the columns feeding it, in order (names or "first..last" ranges in file order);
    # inputs left out are fed by the columns mapped tabular (see studio.inputs.batch)
    tabular: dict[str, tuple[str, ...]] = field(default_factory=dict)
    opset: int = OPSET_DEFAULT
    exporter: str = "auto"
    dynamic: tuple[str, ...] = DYNAMIC_AXES  # axes made dynamic on every input; () = static
    # advanced: per-input override, e.g. {"input_ids": ("batch",), "price": ()}
    dynamic_per_input: dict[str, tuple[str, ...]] = field(default_factory=dict)
    max_length: int = 128
    id_dtype: str = "int64"
    atol: float = ATOL_DEFAULT
    rtol: float = RTOL_DEFAULT
    fill_value: float | None = None  # fill NaN / empty tabular cells; None = error (default)
    latency_budget_s: float = 1.0  # time budget per latency measurement
    threads: int | None = None  # intra-op threads for PyTorch and ORT; None = physical cores
    cuda: bool = True  # measure CUDA when it is truly usable
    variants: tuple[str, ...] = ()  # extra artifacts: optimized, int8, int8-static, fp16
    repair: bool = True  # a variant that fails its verdict is repaired: its worst nodes kept in float (--no-repair)
    # checkpoints that are a bare state dict of a HF backbone (+ head): see docs/checkpoints.md
    config: str | None = None  # config.json / model folder to pair with a state dict
    head: str | None = None  # built-in head for a state-dict backbone: sequence | token
    task: str = "auto"  # one of TASKS: what a Hugging Face / sentence-transformers folder is exported as
    trust_code: bool = False  # operator-only: allow TorchScript / .pt2 / pickled modules
    max_params: int = MAX_PARAMS_DEFAULT  # operator limit: parameters a checkpoint's config may declare
    sample_limits: SampleLimits = field(default_factory=SampleLimits)  # what the sample file may hold
    # the app: server paths (uploads, the job's out folder) that report.json / report.md name without their
    # folders, as the person who uploaded them knows them (studio.artifacts.write_report); () = as given
    display_paths: tuple[str, ...] = ()
    locate: bool = False  # run the divergence locator even when every check passes (studio.checks.locate)
    # generators (text-generation, text2text-generation): the key/value cache is an input and an output of the
    # decoder file (False, --no-cache: the plain forward, logits only); new tokens each prompt is continued by
    cache: bool = True
    max_new_tokens: int = 20
    debug: bool = False

    def validated(self) -> ConvertSpec:
        """Return self after checking every option; raise StudioError naming the bad one."""
        if not str(self.checkpoint):
            raise StudioError("No checkpoint given.")
        if not str(self.data):
            raise StudioError("No sample file given (--data).")
        for col, role in self.roles.items():
            if role not in ROLES:
                raise StudioError(f"Role {role!r} for column {col!r} is not one of {', '.join(ROLES)}.")
        tabular = {}
        for name, cols in (self.tabular or {}).items():
            cols = (cols,) if isinstance(cols, str) else tuple(cols or ())
            if not str(name).strip() or not cols or not all(isinstance(c, str) and c.strip() for c in cols):
                raise StudioError(
                    f"--tabular {name}={','.join(map(str, cols))!s} is not INPUT=COL1,COL2,... "
                    "(an input name and at least one column or FIRST..LAST range)."
                )
            tabular[str(name).strip()] = tuple(c.strip() for c in cols)
        _check_export(
            self.opset, self.exporter, list(self.dynamic) + [a for v in self.dynamic_per_input.values() for a in v]
        )
        if self.id_dtype not in ID_DTYPES:
            raise StudioError(f"Id dtype {self.id_dtype!r} is not one of {', '.join(ID_DTYPES)}.")
        if int(self.max_length) < 2:
            raise StudioError(f"--max-length must be at least 2, got {self.max_length}.")
        _check_measuring(self.atol, self.rtol, self.latency_budget_s, self.threads)
        for v in self.variants:
            if v not in VARIANTS:
                raise StudioError(f"Variant {v!r} is not one of {', '.join(VARIANTS)}.")
        if (
            isinstance(self.max_params, bool)
            or not isinstance(self.max_params, (int, float))
            or not 1 <= self.max_params < float("inf")
        ):
            raise StudioError(f"--max-params must be a number >= 1, got {self.max_params!r}.")
        if self.head is not None and self.head not in HEAD_NAMES:
            raise StudioError(f"Head {self.head!r} is not one of {', '.join(HEAD_NAMES)}.")
        if self.task not in TASKS:
            raise StudioError(f"Task {self.task!r} is not one of {', '.join(TASKS)}.")
        if not isinstance(self.locate, bool):
            raise StudioError(f"--locate must be true or false, got {self.locate!r}.")
        if not isinstance(self.repair, bool):
            raise StudioError(f"--repair must be true or false, got {self.repair!r}.")
        if not isinstance(self.cache, bool):
            raise StudioError(f"cache (--no-cache) must be true or false, got {self.cache!r}.")
        if (
            isinstance(self.max_new_tokens, bool)
            or not isinstance(self.max_new_tokens, int)
            or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_MAX
        ):
            raise StudioError(
                f"--max-new-tokens must be a whole number from 1 to {MAX_NEW_TOKENS_MAX}, got {self.max_new_tokens!r}."
            )
        return replace(
            self,
            tabular=tabular,
            opset=int(self.opset),
            max_length=int(self.max_length),
            max_params=int(self.max_params),
            dynamic=tuple(self.dynamic),
            variants=tuple(self.variants),
            sample_limits=parse_sample_limits(self.sample_limits),
        )

    def axes_for(self, input_name: str) -> tuple[str, ...]:
        """Dynamic axes for one graph input (per-input override, else the global choice)."""
        return tuple(self.dynamic_per_input.get(input_name, self.dynamic))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["checkpoint"], d["data"], d["out"] = str(self.checkpoint), str(self.data), str(self.out)
        return d


def default(name: str) -> Any:
    """The default of one ConvertSpec option: the one place the CLI, the app and the API read it from."""
    f = {f.name: f for f in fields(ConvertSpec)}[name]
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise TypeError(f"ConvertSpec.{name} has no default: it must be given.")


def _check_export(opset, exporter, axes) -> None:
    """The export options' rules (ConvertSpec.validated and ExportDefaults)."""
    if not (OPSET_MIN <= int(opset) <= OPSET_MAX):
        raise StudioError(f"Opset {opset} is outside the supported range {OPSET_MIN}-{OPSET_MAX}.")
    if exporter not in EXPORTERS:
        raise StudioError(f"Exporter {exporter!r} is not one of {', '.join(EXPORTERS)}.")
    for axis in axes:
        if axis not in DYNAMIC_AXES:
            raise StudioError(f"Dynamic axis {axis!r} is not one of {', '.join(DYNAMIC_AXES)}.")


def _check_measuring(atol, rtol, latency_budget_s, threads) -> None:
    """The rules of the parity tolerances and the timing options (ConvertSpec.validated and CompareDefaults)."""
    if atol < 0 or rtol < 0:
        raise StudioError("--atol and --rtol must be >= 0.")
    if (
        isinstance(latency_budget_s, bool)
        or not isinstance(latency_budget_s, (int, float))
        or not 0 < latency_budget_s < float("inf")
    ):
        raise StudioError(f"--latency-budget must be more than 0 s, got {latency_budget_s!r}.")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise StudioError(f"--threads must be a whole number >= 1, got {threads!r}.")


class ExportOptions(Protocol):
    """The options studio.export.exporters reads; a ConvertSpec is one. Read-only (properties), so a frozen
    dataclass or an attribute of a narrower type (an `int` where `int | None` is read) is one too."""

    @property
    def exporter(self) -> str: ...  # one of EXPORTERS
    @property
    def opset(self) -> int: ...

    def axes_for(self, input_name: str) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class ExportDefaults:
    """ExportOptions for exporting a model already in memory, with no checkpoint or sample file (as the
    tests do): the ConvertSpec defaults, checked by ConvertSpec's rules."""

    exporter: str = default("exporter")
    opset: int = default("opset")
    dynamic: tuple[str, ...] = default("dynamic")  # axes made dynamic on every input; () = static

    def __post_init__(self) -> None:
        _check_export(self.opset, self.exporter, self.dynamic)

    def axes_for(self, input_name: str) -> tuple[str, ...]:
        return tuple(self.dynamic)


class CompareOptions(ExportOptions, Protocol):
    """The options studio.export.compare reads (--exporter compare); a ConvertSpec is one."""

    @property
    def atol(self) -> float: ...
    @property
    def rtol(self) -> float: ...
    @property
    def threads(self) -> int | None: ...  # None: runtime.default_threads()
    @property
    def latency_budget_s(self) -> float: ...


@dataclass(frozen=True)
class CompareDefaults(ExportDefaults):
    """CompareOptions for comparing the exporters on a model already in memory: the ConvertSpec defaults,
    checked by ConvertSpec's rules."""

    atol: float = default("atol")
    rtol: float = default("rtol")
    threads: int | None = default("threads")
    latency_budget_s: float = default("latency_budget_s")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_measuring(self.atol, self.rtol, self.latency_budget_s, self.threads)


class LocateOptions(Protocol):
    """The options studio.checks.locate reads (the parity tolerances, ORT's threads); a ConvertSpec is one."""

    @property
    def atol(self) -> float: ...
    @property
    def rtol(self) -> float: ...
    @property
    def threads(self) -> int | None: ...  # None: runtime.default_threads()


class VariantOptions(LocateOptions, Protocol):
    """The options studio.variants reads (which variants, the tolerances they scale, threads, CUDA); a
    ConvertSpec is one."""

    @property
    def variants(self) -> tuple[str, ...]: ...  # of VARIANTS
    @property
    def cuda(self) -> bool: ...  # check and time a CUDA variant on CUDA when it is truly usable
    @property
    def repair(self) -> bool: ...  # repair a variant that fails its verdict (studio/variants/_repair.py)


def parse_roles(items: list[str] | None) -> dict[str, str]:
    """Parse CLI `COL=ROLE` items (a column name may itself contain '=': split on the last one)."""
    roles: dict[str, str] = {}
    for item in items or []:
        col, sep, role = item.rpartition("=")
        if not sep or not col:
            raise StudioError(f"--role {item!r} is not COLUMN=ROLE (ROLE is one of {', '.join(ROLES)}).")
        roles[col] = role.strip().lower()
    return roles


def parse_tabular(items: list[str] | None) -> dict[str, tuple[str, ...]]:
    """Parse CLI `INPUT=COL1,COL2,...` items (columns or FIRST..LAST ranges; split on the first '=')."""
    out: dict[str, tuple[str, ...]] = {}
    for item in items or []:
        name, sep, cols = item.partition("=")
        columns = tuple(c.strip() for c in cols.split(",") if c.strip())
        if not sep or not name.strip() or not columns:
            raise StudioError(f"--tabular {item!r} is not INPUT=COL1,COL2,... (ranges: FIRST..LAST).")
        if name.strip() in out:
            raise StudioError(f"--tabular {name.strip()} is given twice; list all its columns in one.")
        out[name.strip()] = columns
    return out
