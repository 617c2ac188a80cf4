"""ConvertSpec: the one options object that flows from CLI flags / UI controls to the pipeline."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import StudioError

ROLES = ("text", "tabular", "ignore")
EXPORTERS = ("auto", "dynamo", "torchscript")
DYNAMIC_AXES = ("batch", "sequence")
ID_DTYPES = ("int64", "int32")
OPSET_MIN, OPSET_MAX, OPSET_DEFAULT = 14, 23, 18
VARIANTS = ("optimized", "int8", "fp16")
HEADS = ("sequence", "pooled", "token")
# what the graph computes (--task), as optimum-cli's; auto: modules.json -> sentence-embedding, else the
# config's architectures (see README "Tasks")
TASKS = ("auto", "sentence-embedding", "feature-extraction", "sequence-classification", "token-classification",
         "question-answering")

# Documented defaults for the parity verdict (float32 export of float32 weights).
ATOL_DEFAULT = 1e-4
RTOL_DEFAULT = 1e-3


@dataclass
class ConvertSpec:
    """Everything a conversion needs. Construct it, call `.validated()`, hand it to `convert`."""

    checkpoint: str
    data: str
    out: str = "studio-out"
    roles: dict[str, str] = field(default_factory=dict)  # column -> role; others get the suggestion
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
    variants: tuple[str, ...] = ()  # extra artifacts: optimized, int8, fp16
    # checkpoints that are a bare state dict of a HF backbone (+ head): see README
    config: str | None = None  # config.json / model folder to pair with a state dict
    head: str | None = None  # built-in head for a state-dict backbone: sequence | token
    task: str = "auto"  # one of TASKS: what a Hugging Face / sentence-transformers folder is exported as
    trust_code: bool = False  # operator-only: allow TorchScript / .pt2 / pickled modules
    debug: bool = False

    def validated(self) -> "ConvertSpec":
        """Return self after checking every option; raise StudioError naming the bad one."""
        if not str(self.checkpoint):
            raise StudioError("No checkpoint given.")
        if not str(self.data):
            raise StudioError("No sample file given (--data).")
        for col, role in self.roles.items():
            if role not in ROLES:
                raise StudioError(f"Role {role!r} for column {col!r} is not one of {', '.join(ROLES)}.")
        if not (OPSET_MIN <= int(self.opset) <= OPSET_MAX):
            raise StudioError(f"Opset {self.opset} is outside the supported range {OPSET_MIN}-{OPSET_MAX}.")
        if self.exporter not in EXPORTERS:
            raise StudioError(f"Exporter {self.exporter!r} is not one of {', '.join(EXPORTERS)}.")
        for axis in list(self.dynamic) + [a for v in self.dynamic_per_input.values() for a in v]:
            if axis not in DYNAMIC_AXES:
                raise StudioError(f"Dynamic axis {axis!r} is not one of {', '.join(DYNAMIC_AXES)}.")
        if self.id_dtype not in ID_DTYPES:
            raise StudioError(f"Id dtype {self.id_dtype!r} is not one of {', '.join(ID_DTYPES)}.")
        if int(self.max_length) < 2:
            raise StudioError(f"--max-length must be at least 2, got {self.max_length}.")
        if self.atol < 0 or self.rtol < 0:
            raise StudioError("--atol and --rtol must be >= 0.")
        for v in self.variants:
            if v not in VARIANTS:
                raise StudioError(f"Variant {v!r} is not one of {', '.join(VARIANTS)}.")
        if self.head is not None and self.head not in HEADS:
            raise StudioError(f"Head {self.head!r} is not one of {', '.join(HEADS)}.")
        if self.task not in TASKS:
            raise StudioError(f"Task {self.task!r} is not one of {', '.join(TASKS)}.")
        return replace(self, opset=int(self.opset), max_length=int(self.max_length),
                       dynamic=tuple(self.dynamic), variants=tuple(self.variants))

    def axes_for(self, input_name: str) -> tuple[str, ...]:
        """Dynamic axes for one graph input (per-input override, else the global choice)."""
        return tuple(self.dynamic_per_input.get(input_name, self.dynamic))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["checkpoint"], d["data"], d["out"] = str(self.checkpoint), str(self.data), str(self.out)
        return d


def parse_roles(items: list[str] | None) -> dict[str, str]:
    """Parse CLI `COL=ROLE` items (a column name may itself contain '=': split on the last one)."""
    roles: dict[str, str] = {}
    for item in items or []:
        col, sep, role = item.rpartition("=")
        if not sep or not col:
            raise StudioError(f"--role {item!r} is not COLUMN=ROLE (ROLE is one of {', '.join(ROLES)}).")
        roles[col] = role.strip().lower()
    return roles


def as_path(p: str | Path) -> Path:
    return Path(p).expanduser()
