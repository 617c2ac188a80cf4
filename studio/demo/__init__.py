"""The built-in demo, shipped inside the package (package data), so an installed studio has it too:
`studio convert --demo`, the web studio's *Load demo*, `studio.demo.checkpoint()`.

    demo_model.pt   onnx-studio/multimodal v1 checkpoint (text "review"; tabular "price", "quantity")
    sample.csv      8 held-out rows: order_id, review, price, quantity, label
    sample.json     the same rows as JSON records

Rebuilt by `python assets/demo/make_demo.py` in a checkout. Files are found with importlib.resources;
when the package is not on the file system (a zip import) they are extracted to a temporary folder once.
"""

from __future__ import annotations

import atexit
import contextlib
from importlib import resources
from pathlib import Path

CHECKPOINT, SAMPLE, SAMPLE_JSON = "demo_model.pt", "sample.csv", "sample.json"
_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


def path(name: str) -> Path:
    """A demo file as a real path on disk."""
    ref = resources.files(__name__) / name
    if isinstance(ref, Path):
        return ref
    return _extracted.enter_context(resources.as_file(ref))


def folder() -> Path:
    return checkpoint().parent


def checkpoint() -> Path:
    return path(CHECKPOINT)


def sample(kind: str = "csv") -> Path:
    return path(SAMPLE_JSON if kind == "json" else SAMPLE)
