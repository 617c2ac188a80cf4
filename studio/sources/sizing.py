"""How big is the model a config declares? Decided before a single weight is allocated.

A config.json is a few bytes that can declare a million layers or a hidden size of a million; building
that model for real allocates until the machine gives out. So every loader first builds the model on
the `meta` device (structure only, no storage) and counts the parameters as they are registered:

- more parameters than the upload's weights can hold (at least MIN_BYTES_PER_PARAM byte each) means the
  weights cannot belong to this config: refused, naming the config and both numbers;
- more than the operator's limit (ConvertSpec.max_params, `--max-params`) is refused too.

Counting stops as soon as either bound is passed, so an absurd config costs a few layers' worth of
Python, not the whole structure; a structure with more than MAX_MODULES modules or that takes longer
than META_BUILD_S seconds to lay out is refused as well (a meta build costs ~10 ms per BERT layer).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from studio.errors import CheckpointError
from studio.spec import MAX_PARAMS_DEFAULT  # noqa: F401 - the default lives with the option; loaders read it here

MIN_BYTES_PER_PARAM = 1  # int8 / float8 weights; float16 takes 2, float32 4
MAX_MODULES = 100_000
META_BUILD_S = 60.0
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


class _Stop(BaseException):  # not an Exception: no library's `except Exception` may swallow it
    def __init__(self, why: str):
        self.why = why


def _human(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def count_on_meta(build: Callable[[], torch.nn.Module], stop_above: int) -> tuple[int, str | None]:
    """Parameters of the module `build()` makes on the meta device: (count, None), or, when the count
    passes `stop_above` (or the structure passes MAX_MODULES / META_BUILD_S), (count so far, why it
    stopped). Parameters registered twice (tied weights) count once."""
    from torch.nn.modules import module as nn_module

    seen: set[int] = set()
    total = [0]
    modules = [0]
    deadline = time.monotonic() + META_BUILD_S

    def on_param(_mod, _name, param):
        if param is not None and id(param) not in seen:
            seen.add(id(param))
            total[0] += param.numel()
            if total[0] > stop_above:
                raise _Stop("params")

    def on_module(_mod, _name, _sub):
        modules[0] += 1
        if modules[0] > MAX_MODULES:
            raise _Stop("modules")
        if modules[0] % 256 == 0 and time.monotonic() > deadline:
            raise _Stop("time")

    hooks = [
        nn_module.register_module_parameter_registration_hook(on_param),
        nn_module.register_module_module_registration_hook(on_module),
    ]
    try:
        with torch.device("meta"):
            model = build()
    except _Stop as s:
        return total[0], s.why
    finally:
        for h in hooks:
            h.remove()
    count = sum(p.numel() for p in model.parameters())
    del model
    return count, ("params" if count > stop_above else None)


SIZE_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "max_position_embeddings",
)


def config_sizes(config: Any) -> str:
    """The size settings of a config (object or dict), for messages: 'num_hidden_layers=1000000, ...'."""
    get = config.get if isinstance(config, Mapping) else (lambda k: getattr(config, k, None))
    return ", ".join(f"{k}={get(k)}" for k in SIZE_KEYS if get(k) is not None)


def check_declared(
    build: Callable[[], torch.nn.Module],
    *,
    config_name: str,
    held_bytes: int,
    held_name: str,
    max_params: int,
    sizes: str = "",
) -> int:
    """Count the parameters `build()` declares (on meta) and refuse, with CheckpointError, a model the
    weights cannot fill or one above `max_params`. Returns the count. Errors of `build` itself (an
    invalid config) propagate to the caller, which words them."""
    room = held_bytes // MIN_BYTES_PER_PARAM
    count, why = count_on_meta(build, min(room, max_params))
    at_least = "at least " if why else ""
    says = f" ({sizes})" if sizes else ""
    if why in ("modules", "time"):
        what = (
            f"more than {MAX_MODULES:,} modules"
            if why == "modules"
            else f"a structure that takes longer than {META_BUILD_S:g} s to lay out"
        )
        raise CheckpointError(
            f"{config_name}{says} declares {what} ({at_least}{count:,} parameters counted); refused before "
            "building the model.",
            hint="Use the config.json the weights were saved with.",
        )
    if count > room:
        raise CheckpointError(
            f"{config_name}{says} declares {at_least}{count:,} parameters, but only {held_bytes:,} bytes of weights "
            f"({_human(held_bytes)}) are in {held_name}, and each parameter takes at least {MIN_BYTES_PER_PARAM} "
            "byte: the weights cannot belong to this config; refused before building the model.",
            hint="Use the config.json the weights were saved with.",
        )
    if count > max_params:
        raise CheckpointError(
            f"{config_name}{says} declares {at_least}{count:,} parameters, more than the limit of {max_params:,} "
            "(--max-params); refused before building the model.",
            hint="An operator who has the memory for it can raise the limit: studio convert / studio app "
            "--max-params N, or ConvertSpec(max_params=N).",
        )
    return count


def folder_weight_bytes(folder: Path) -> int:
    """Bytes of the weight files in a model folder (what a Hugging Face loader can read weights from)."""
    total = 0
    for f in folder.iterdir():
        if f.suffix.lower() in WEIGHT_SUFFIXES and f.is_file():
            total += f.stat().st_size
    return total


def state_dict_bytes(sd: Mapping[str, Any], shown: str) -> int:
    """Bytes the tensors of a state dict really hold (each storage once). A tensor that claims more
    elements than its storage holds (a stride-0 or overlapping view: never what a model saves) is refused,
    since copying it into a model would allocate what the upload never carried."""
    storages: dict[tuple[int, int], int] = {}
    for key, t in sd.items():
        if not isinstance(t, torch.Tensor):
            continue
        if t.is_meta or t.layout != torch.strided:
            what = "a meta tensor (a shape without data)" if t.is_meta else f"a {t.layout} tensor"
            raise CheckpointError(
                f"{shown}: tensor {key!r} is {what}, which declares {t.numel():,} elements the "
                "file does not hold as such; refused.",
                hint="Save the model's own state_dict (torch.save(model.state_dict(), ...)).",
            )
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        if t.numel() and t.numel() * t.element_size() > nbytes - t.storage_offset() * t.element_size():
            raise CheckpointError(
                f"{shown}: tensor {key!r} declares {t.numel():,} elements of {t.element_size()} bytes over a "
                f"storage of {nbytes:,} bytes (a stride-0 or overlapping view); refused.",
                hint="Save the model's own state_dict (torch.save(model.state_dict(), ...)).",
            )
        storages[(storage.data_ptr(), nbytes)] = nbytes
    return sum(storages.values())
