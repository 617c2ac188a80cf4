"""Checkpoint loaders. `load(path, spec)` finds the kind and returns a LoadedModel.

Supported kinds are listed in SUPPORTED; each loader lives in its own module.
"""
from __future__ import annotations

import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UnsafeCheckpointError
from .base import LoadedModel

SUPPORTED = (
    "a Hugging Face model folder (config.json + model.safetensors or pytorch_model.bin + tokenizer files), "
    "or a .zip of one",
    "an ONNX Studio multimodal checkpoint (.pt/.pth/.ckpt, see README), Lightning-style dicts accepted",
)
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


def _supported() -> str:
    return "Supported: " + "; ".join(SUPPORTED) + "."


def load(path: str | Path, spec: Any = None) -> LoadedModel:
    """Load any supported checkpoint from a file or folder. Raises CheckpointError otherwise."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"Checkpoint {p} does not exist.")
    if p.is_dir():
        return _load_dir(p, str(path), spec)
    if p.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {p.name} is an empty file.")
    if p.suffix.lower() == ".zip" and not _is_torch_zip(p):
        with tempfile.TemporaryDirectory(prefix="studio-ckpt-") as tmp:
            from .archive import extract_zip
            root = extract_zip(p, Path(tmp))
            loaded = _load_dir(root, str(path), spec)
            loaded.path = str(path)
            return loaded
    return _load_file(p, str(path), spec)


def _load_dir(folder: Path, shown: str, spec: Any) -> LoadedModel:
    from . import hf
    if hf.is_hf_folder(folder):
        return hf.load_folder(folder, shown)
    candidates = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in TORCH_SUFFIXES]
    if len(candidates) == 1:
        loaded = _load_file(candidates[0], shown, spec)
        return loaded
    found = ", ".join(sorted(f.name for f in folder.iterdir())[:20]) or "nothing"
    raise CheckpointError(f"{shown}: no checkpoint recognised in this folder (found: {found}). " + _supported())


def _is_torch_zip(p: Path) -> bool:
    """torch.save writes zip files too: tell them apart from a zipped model folder."""
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.endswith("/data.pkl") or n == "data.pkl" for n in names)


def _torchscript_or_program(p: Path) -> str | None:
    """Kinds that execute code when loaded: TorchScript archives and torch.export programs."""
    if p.suffix.lower() == ".pt2":
        return "a torch.export program (.pt2)"
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        return None
    if any("/code/" in n or n.startswith("code/") for n in names) or any(n.endswith("constants.pkl") for n in names):
        return "a TorchScript archive"
    return None


def read_weights_only(p: Path, shown: str) -> Any:
    """torch.load with weights_only=True; anything else in the file is refused, not executed."""
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{shown} holds Python objects other than tensors and plain containers, so loading it could run "
            f"code; refused. ({str(e).splitlines()[0][:300]})",
            hint="Save the state_dict (torch.save(model.state_dict(), ...)) or a Hugging Face folder instead.") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{shown} is not a readable PyTorch checkpoint (truncated or corrupted?): "
                              f"{str(e).splitlines()[0][:300]}") from e


def _load_file(p: Path, shown: str, spec: Any) -> LoadedModel:
    kind = _torchscript_or_program(p)
    if kind:
        raise UnsafeCheckpointError(f"{shown} is {kind}; loading it can execute code, so it is refused.",
                                    hint="Upload a state_dict, a Hugging Face folder or a multimodal checkpoint.")
    if p.suffix.lower() == ".safetensors":
        raise CheckpointError(f"{shown} is a bare .safetensors file; it needs the model's config.json beside it. "
                              + _supported())
    obj = read_weights_only(p, shown)
    from . import multimodal
    if multimodal.looks_like(obj):
        return multimodal.load(obj, shown)
    what = f"a dict with keys {', '.join(list(map(str, obj))[:8])}" if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{shown} holds {what}, which is not a checkpoint kind the studio knows. " + _supported())
