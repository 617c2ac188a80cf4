"""Checkpoint loaders. `load(path, spec)` finds the kind and returns a LoadedModel.

What a file is, is told from its bytes (sources.sniff), not from its extension. The kinds, and the order in
which they are recognised, are one table: `studio.sources.table.LOADERS` (rows of kind, sniff, load; operator
plugins are rows too, asked first). In that order:
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
Supported kinds are listed in SUPPORTED; each loader lives in its own module, with the signature
`load(source: Source, shown: str, options: LoadOptions) -> LoadedModel` (studio.sources.base).
"""

from __future__ import annotations

from pathlib import Path

from studio.errors import CheckpointError
from studio.sources import contain
from studio.sources import sniff as sniffing
from studio.sources.base import UPLOAD, LoadDefaults, LoadedModel, Loader, LoadOptions, Source
from studio.sources.table import LOADERS, SUPPORTED, TORCH_SUFFIXES, WEIGHT_SUFFIXES, dispatch, table
from studio.sources.weights import read_weights_only

__all__ = [
    "LOADERS",
    "SUPPORTED",
    "TORCH_SUFFIXES",
    "WEIGHT_SUFFIXES",
    "LoadDefaults",
    "LoadOptions",
    "LoadedModel",
    "Loader",
    "Source",
    "load",
    "read_weights_only",
    "table",
]


def load(path: str | Path, spec: LoadOptions | None = None, *, workdir: str | Path | None = None) -> LoadedModel:
    """Load any supported checkpoint from a file or folder. Raises CheckpointError otherwise.

    spec: a validated ConvertSpec, or any LoadOptions; None: LoadDefaults (the checkpoint alone).
    workdir: where an uploaded .zip is unpacked (in a private sub-folder removed before returning);
    default: the system's temporary folder. Pass the job's folder to keep every write inside it."""
    p = Path(path).expanduser()
    shown = str(path)
    options = spec if spec is not None else LoadDefaults()
    if not p.exists():
        raise CheckpointError(f"Checkpoint {p} does not exist.")
    _contain(p, shown, options.config)
    return dispatch(Source(UPLOAD, p, workdir=workdir), shown, options)


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
