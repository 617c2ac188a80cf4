"""The app's jobs: preview, mapping check and conversion, each run in its own process by studio.jobs.isolate.

A crash, segfault or out-of-memory in torch / onnxruntime ends that job's process, never the server.
Importing this module registers the tasks ("preview", "check", "convert") and the fork server's warm-up
(studio.app._warm); the runner itself (Job, Limits, JobError, run_job) is studio.jobs.isolate's.

This module must not import gradio (the child imports it) and imports torch only inside the child.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.jobs import isolate

DIAGNOSIS_CHARS = 20_000

isolate.preload("studio.app._warm")


def _mapping(loaded, df, roles: dict[str, str], spec, data: str) -> dict[str, Any]:
    """Build the batch with this mapping: the final role of every column, the tensors it makes, or why
    the mapping cannot work (the same BatchError text a conversion would stop with)."""
    from studio.inputs import batch as batch_mod
    from studio.inputs import roles as roles_mod

    try:
        b = batch_mod.build_batch(df, loaded, roles, spec, file=os.path.basename(data))
    except StudioError as e:
        roles_out = dict(roles)
        try:  # still show the model-aware suggestions for the columns the user did not set
            roles_out = {**roles_mod.suggest_roles(df, loaded), **roles}
        except Exception:  # noqa: BLE001, S110 - only suggestions: the mapping's own error is what is shown
            pass
        return {"ok": False, "error": str(e), "roles": roles_out, "tensors": {}}
    return {
        "ok": True,
        "error": None,
        "roles": dict(b.roles),
        "tensors": {
            n: {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")} for n, t in b.tensors.items()
        },
        "feeds": {n: [dict(f) for f in parts] for n, parts in b.features.items()},
    }


def task_preview(payload: dict[str, Any], progress) -> dict[str, Any]:
    """What was uploaded: the model (kind, inputs, tokenizer), the sample's columns and first rows and,
    when both are there, the model-aware role suggestions checked against the model."""
    from studio import pipeline, sources
    from studio.inputs import sample as sample_mod

    ckpt, data, spec = payload.get("checkpoint"), payload.get("data"), payload.get("spec")
    out: dict[str, Any] = {
        "model": None,
        "model_error": None,
        "columns": [],
        "rows": [],
        "data_error": None,
        "mapping": None,
    }
    loaded = df = None
    if data:
        progress("reading sample", 0.1)
        try:
            out.update({k: v for k, v in pipeline.preview(None, data, spec).items() if k != "model"})
            df = sample_mod.read_sample(data, getattr(spec, "sample_limits", None))
        except Exception as e:  # noqa: BLE001 - shown next to the upload
            out["data_error"] = isolate.error_text(e)
    if ckpt:
        progress("loading checkpoint", 0.4)
        try:
            loaded = sources.load(ckpt, spec, workdir=payload.get("workdir"))
            out["model"] = loaded.describe()
        except Exception as e:  # shown next to the upload (running out of memory ends the job)
            if isolate.is_oom(e):
                raise
            out["model_error"] = isolate.error_text(e)
    if loaded is not None and df is not None and data:  # df is read only from a sample
        progress("checking mapping", 0.8)
        out["mapping"] = _mapping(loaded, df, dict(payload.get("roles") or {}), spec, data)
    return out


def task_check(payload: dict[str, Any], progress) -> dict[str, Any]:
    """Check a role mapping against the model before export."""
    from studio import sources
    from studio.inputs import sample as sample_mod

    spec, data = payload["spec"], payload["data"]
    loaded = sources.load(payload["checkpoint"], spec, workdir=payload.get("workdir"))
    df = sample_mod.read_sample(data, getattr(spec, "sample_limits", None))
    return _mapping(loaded, df, dict(payload.get("roles") or {}), spec, data)


def _diagnoses(report, out: Path) -> str:
    """The exporter's own markdown diagnosis of every failed attempt (the new exporter writes one)."""
    parts = []
    for a in report.export.attempts:
        if a.ok or not a.diagnosis_path:
            continue
        for base in (out / "diagnostics", out):
            p = base / a.diagnosis_path
            if p.is_file():
                parts.append(f"### {a.exporter} exporter\n\n" + p.read_text(errors="replace"))
                break
    text = "\n\n".join(parts)
    return text[:DIAGNOSIS_CHARS] + (
        "\n\n…(truncated: see the diagnostics folder in the zip)" if len(text) > DIAGNOSIS_CHARS else ""
    )


def task_convert(payload: dict[str, Any], progress) -> dict[str, Any]:
    """pipeline.convert(spec) with progress, then one zip of every artifact beside the out folder. The report
    names the uploads and `out`, not the server's job folders (which mean nothing to the person downloading
    them): ConvertSpec.display_paths."""
    from studio import artifacts, pipeline

    spec = payload["spec"]
    spec = replace(spec, display_paths=tuple(str(p) for p in (spec.checkpoint, spec.data, spec.config, spec.out) if p))
    progress("starting", 0.0)
    report = pipeline.convert(spec, progress)
    out = Path(spec.out)
    zip_path = artifacts.zip_folder(out, out.parent / f"{payload.get('zip_stem') or 'onnx-studio'}.zip")
    return {"report": report, "zip": str(zip_path), "diagnosis": _diagnoses(report, out)}


isolate.register("preview", task_preview)
isolate.register("check", task_check)
isolate.register("convert", task_convert)
