"""Shared fixtures: tiny Hugging Face folders and a sample CSV, built once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "studio" / "demo"


@pytest.fixture(scope="session")
def hf_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {arch: tiny.make_hf_folder(root / arch, arch) for arch in ("bert", "distilbert", "roberta", "deberta-v2")}


@pytest.fixture(scope="session")
def sample_csv(tmp_path_factory) -> Path:
    return tiny.write_sample(tmp_path_factory.mktemp("sample") / "sample.csv")
