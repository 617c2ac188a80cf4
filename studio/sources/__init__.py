"""Checkpoint loaders. `load(path, spec)` finds the kind and returns a LoadedModel.

What a file is, is told from its bytes (sources.sniff), not from its extension. Order of dispatch:
  1. operator plugins (sources.plugins) — asked with the path, and again with the weights-only object;
  2. folders: a sentence-transformers folder (sbert: modules.json, exported with its pooling / dense /
     normalize modules unless --task says otherwise), a Hugging Face folder (hf, --task picks the head),
     a torch.distributed.checkpoint folder (dcp), or a folder with one
     weights file (+ config.json / tokenizer files beside it); a .zip of a folder is unpacked safely first
     (archive) and read the same way;
  3. files: torch.save checkpoints read with weights_only=True — the multimodal format (multimodal),
     Lightning / DDP / FSDP / plain state dicts of a Hugging Face backbone (+ Linear head) with a
     config.json (statedict); single .safetensors files (statedict);
  4. TorchScript, torch.export (.pt2) and pickled nn.Modules run code when loaded: refused unless the
     operator set ConvertSpec.trust_code (--trust-code), then loaded by `trusted`.
Supported kinds are listed in SUPPORTED; each loader lives in its own module.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from studio.errors import CheckpointError, UnsafeCheckpointError, first_line
from studio.sources import contain, plugins, scratch
from studio.sources import sniff as sniffing
from studio.sources.base import LoadDefaults, LoadedModel, LoadOptions

SUPPORTED = (
    "a Hugging Face model folder (config.json + model.safetensors or pytorch_model.bin + tokenizer files), "
    "or a .zip of one",
    "a sentence-transformers folder (modules.json: Transformer, Pooling, Dense, Normalize), or a .zip of one",
    "an ONNX Studio multimodal checkpoint (.pt/.pth/.ckpt, see README), Lightning-style dicts accepted",
    "a state dict (.pt/.pth/.bin/.ckpt, Lightning/DDP/FSDP prefixes accepted) or a single .safetensors file of "
    "a Hugging Face backbone, optionally with a Linear head (--head), with its config.json beside it or via "
    "--config",
    "a torch.distributed.checkpoint folder (.metadata + *.distcp), zipped, with config.json",
    "TorchScript / torch.export .pt2 / pickled nn.Module only when the operator allows trusted code",
)
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")
WEIGHT_SUFFIXES = TORCH_SUFFIXES + (".safetensors", ".pt2", ".ts", ".jit", ".torchscript", ".pkl")


def _supported() -> str:
    return "Supported: " + "; ".join(SUPPORTED) + "."


def load(path: str | Path, spec: LoadOptions | None = None, *, workdir: str | Path | None = None) -> LoadedModel:
    """Load any supported checkpoint from a file or folder. Raises CheckpointError otherwise.

    spec: a validated ConvertSpec, or any LoadOptions; None: LoadDefaults (the checkpoint alone).
    workdir: where an uploaded .zip is unpacked (in a private sub-folder removed before returning);
    default: the system's temporary folder. Pass the job's folder to keep every write inside it."""
    p = Path(path).expanduser()
    shown = str(path)
    spec = spec if spec is not None else LoadDefaults()
    if not p.exists():
        raise CheckpointError(f"Checkpoint {p} does not exist.")
    _contain(p, shown, spec.config)
    plugin = plugins.claim(p)
    if plugin is not None:
        return plugins.load_with(plugin, p, shown, spec)
    if p.is_dir():
        return _checked_task(_load_dir(p, shown, spec), spec)
    if p.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {p.name} is an empty file.")
    sn = sniffing.sniff(p)
    if sn.kind == sniffing.ARCHIVE:
        with scratch.temp_dir("studio-ckpt-", workdir) as tmp:  # named by pid: a killed run's is swept later
            from studio.sources.archive import extract_zip

            root = extract_zip(p, tmp)
            contain.check_folder(root, shown)
            loaded = _load_dir(root, shown, spec)
            loaded.path = shown
            return _checked_task(loaded, spec)
    return _checked_task(_load_file(p, shown, spec, sn, [p.parent]), spec)


def _checked_task(loaded: LoadedModel, spec: LoadOptions) -> LoadedModel:
    """An explicit --task must be the task the graph computes; only model folders can be told one."""
    task = spec.task
    if task != "auto" and loaded.info.get("task") != task:
        raise CheckpointError(
            f"--task {task} does not apply to {loaded.path} ({loaded.kind}): --task chooses what a "
            "Hugging Face or sentence-transformers model folder is exported as.",
            hint="Leave --task auto; a state dict's head is chosen with --head.",
        )
    return loaded


def _contain(p: Path, shown: str, config: str | None) -> None:
    """Every folder the loaders read for this upload keeps its links and named paths inside itself
    (studio.sources.contain): the given folder's tree, the top of a single file's folder and of --config's."""
    if p.is_dir():
        contain.check_folder(p, shown)
    elif p.stat().st_size and sniffing.sniff(p).kind != sniffing.ARCHIVE:  # a zip is checked once unpacked
        contain.check_folder(p.parent, shown, tree=False)
    if config:
        c = Path(str(config)).expanduser()
        if c.exists():
            contain.check_folder(c if c.is_dir() else c.parent, f"--config {config}", tree=False)


def _weight_files(folder: Path) -> list[Path]:
    return sorted(
        f
        for f in folder.iterdir()
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in WEIGHT_SUFFIXES
    )


def _load_dir(folder: Path, shown: str, spec: LoadOptions) -> LoadedModel:
    from studio.sources import dcp, hf, sbert

    if sbert.is_sbert_folder(folder):  # a sentence-transformers folder: the pipeline modules.json declares
        return sbert.load_for_task(folder, shown, spec.task, spec.max_length, max_params=spec.max_params)
    if spec.task == "sentence-embedding":
        raise CheckpointError(
            f"--task sentence-embedding needs a sentence-transformers folder, and {shown} has no {sbert.MODULES_FILE}.",
            hint="Use --task feature-extraction for the token embeddings.",
        )
    if hf.is_hf_folder(folder) and any((folder / f).exists() for f in hf.WEIGHT_FILES):
        try:
            return hf.load_folder(folder, shown, task=spec.task, max_params=spec.max_params)
        except hf.WeightsMismatchError as e:
            # a state dict of the user's own class saved under a Hugging Face file name
            single = [folder / f for f in hf.WEIGHT_FILES[:2] if (folder / f).is_file()]
            if len(single) != 1 or len(_weight_files(folder)) != 1:
                raise
            try:
                return _load_file(single[0], shown, spec, sniffing.sniff(single[0]), [folder])
            except CheckpointError as again:
                raise again from e
    dcp_dir = dcp.find_dcp_dir(folder)
    if dcp_dir is not None:
        state = dcp.load_dcp(dcp_dir, shown)
        shards = len(list(dcp_dir.glob("*" + dcp.SHARD_SUFFIX)))
        return _load_object(state, shown, spec, [folder, dcp_dir], {"layout": "dcp", "shards": shards})
    candidates = _weight_files(folder)
    if len(candidates) == 1:
        return _load_file(candidates[0], shown, spec, sniffing.sniff(candidates[0]), [folder])
    found = ", ".join(sorted(f.name for f in folder.iterdir())[:20]) or "nothing"
    if len(candidates) > 1:
        raise CheckpointError(
            f"{shown} holds several weight files ({', '.join(f.name for f in candidates[:10])}); "
            "the studio converts one checkpoint at a time.",
            hint="Keep one weights file (plus config.json and tokenizer files) in the folder.",
        )
    raise CheckpointError(f"{shown}: no checkpoint recognised in this folder (found: {found}). " + _supported())


def _unsafe_globals(message: str) -> list[str]:
    return sorted(set(re.findall(r"GLOBAL ([\w.]+)", message)))


def read_weights_only(p: Path, shown: str, kind: str | None = None) -> Any:
    """torch.load with weights_only=True; anything else in the file is refused, not executed. The sizes and
    the work the file declares are checked first (sources.budget)."""
    from studio.sources.budget import check_file

    check_file(p, shown, kind or sniffing.sniff(p).kind)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about legacy / raw pickles; the error says it all
            return torch.load(p, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(str(e))
        scanned, parsed = sniffing.pickle_globals(p, kind or sniffing.sniff(p).kind)
        names = names or scanned
        if not names and not parsed:
            raise CheckpointError(
                f"{shown} is not a readable PyTorch checkpoint (truncated or corrupted?): its pickle cannot be parsed."
            ) from e
        what = f" (it refers to {', '.join(names[:5])})" if names else ""
        raise UnsafeCheckpointError(
            f"{shown} holds Python objects other than tensors and plain containers{what}, so loading it could "
            f"run code; refused.",
            hint="Save the state_dict (torch.save(model.state_dict(), ...)) or a Hugging Face folder instead; "
            "an operator who trusts the file can start the studio with --trust-code.",
        ) from e
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        OverflowError,
        LookupError,
    ) as e:  # e.g. a tensor "subclass" rebuilt from a class that is no tensor: TypeError
        raise CheckpointError(
            f"{shown} is not a readable PyTorch checkpoint (truncated or corrupted?): {first_line(e)}"
        ) from e


def _suffix_note(p: Path, kind: str) -> dict[str, str]:
    expected = sniffing.expected_suffixes(kind)
    if expected and p.suffix.lower() not in expected:
        return {
            "note": f"named {p.suffix or '(no extension)'} but holds {sniffing.DESCRIPTIONS[kind]}; "
            "read as its content says"
        }
    return {}


def _load_file(p: Path, shown: str, spec: LoadOptions, sn: sniffing.Sniffed, folders: list[Path]) -> LoadedModel:
    from studio.sources import statedict, trusted

    info = _suffix_note(p, sn.kind)
    if sn.kind in (sniffing.TORCHSCRIPT, sniffing.PROGRAM):
        what = "torchscript" if sn.kind == sniffing.TORCHSCRIPT else "program"
        if not spec.trust_code:
            raise trusted.refusal(shown, what)
        load_fn = trusted.load_torchscript if what == "torchscript" else trusted.load_program
        return _with_info(load_fn(p, shown, spec, folders), info)
    if sn.kind == sniffing.SAFETENSORS:
        state = statedict.read_safetensors(p, shown)
        return _load_object(state, shown, spec, folders, {**info, "layout": "safetensors"})
    if sn.kind in (sniffing.TORCH_ZIP, sniffing.TORCH_LEGACY, sniffing.PICKLE):
        try:
            obj = read_weights_only(p, shown, sn.kind)
        except UnsafeCheckpointError as e:
            if not spec.trust_code:
                raise trusted.refusal(shown, "pickle", _detail(e)) from e
            return _with_info(trusted.load_pickled(p, shown, spec, folders), info)
        return _load_object(obj, shown, spec, folders, info)
    if sn.kind == sniffing.BROKEN_ZIP:
        raise CheckpointError(f"{shown} is {sn.description}.", hint="Upload the file again; check its size.")
    if sn.kind == sniffing.ARCHIVE:
        raise CheckpointError(f"{shown} is a zip archive inside the upload; upload the model folder zipped once.")
    raise CheckpointError(f"{shown} is {sn.description}, not a checkpoint the studio can read. " + _supported())


def _detail(e: UnsafeCheckpointError) -> str:
    m = re.search(r"\(it refers to ([^)]*)\)", e.message)
    return f" (it refers to {m.group(1)})" if m else ""


def _with_info(loaded: LoadedModel, info: dict[str, Any]) -> LoadedModel:
    for k, v in info.items():
        loaded.info.setdefault(k, v)
    return loaded


def _load_object(obj: Any, shown: str, spec: LoadOptions, folders: list[Path], info: dict[str, Any]) -> LoadedModel:
    """A weights-only object (dict of tensors / training checkpoint dict) -> the loader that claims it."""
    from studio.sources import multimodal, statedict

    plugin = plugins.claim(obj)
    if plugin is not None:
        return _with_info(plugins.load_with(plugin, obj, shown, spec), info)
    if multimodal.looks_like(obj):
        return _with_info(multimodal.load(obj, shown, max_params=spec.max_params), info)
    if statedict.find_state_dict(obj) is None:
        raise CheckpointError(
            f"{shown} holds {statedict.describe_object(obj)}, which is not a checkpoint kind the "
            "studio knows. " + _supported()
        )
    return statedict.load(obj, shown, spec, folders, info)
