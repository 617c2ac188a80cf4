"""Reading a torch.save file weights-only: tensors and plain containers, nothing that runs code."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from studio.errors import CheckpointError, UnsafeCheckpointError, first_line
from studio.sources import sniff as sniffing


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
