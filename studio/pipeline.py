"""convert(spec) -> Report: the only orchestration, used by the CLI, the app and the Python API.

Stages: loading, batch, export, checker, parity, shape probe, variants, latency, writing. Latency comes
last so that PyTorch, model.onnx and every variant are timed side by side (`latency.measure_all`).
Everything is built in a private folder beside `spec.out` and moved in only when complete, so a
failed conversion leaves no half-written artifact behind.
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import asdict
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import batch as batch_mod
from . import export as export_mod
from . import inspect as inspect_mod
from . import latency as latency_mod
from . import parity as parity_mod
from . import roles as roles_mod
from . import runtime, sources
from . import sample as sample_mod
from .errors import StudioError
from .report import ExportInfo, Report
from .sources import scratch
from .sources.base import TABULAR
from .spec import ConvertSpec

STAGES = ("loading", "batch", "export", "checker", "parity", "shape probe", "variants", "latency", "writing")
_FRACTION = {"loading": 0.02, "batch": 0.1, "export": 0.15, "checker": 0.6, "parity": 0.65,
             "shape probe": 0.72, "variants": 0.78, "latency": 0.85, "writing": 0.97}
Progress = Callable[[str, float], None]

# Files a conversion owns inside the output folder (replaced on every run, nothing else touched).
OWNED = ("model.onnx", "model.onnx.data", "report.json", "report.md", "inference_example.py",
         "sample_inputs.npz", "tokenizer", "diagnostics", "variants")


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers
    from . import __version__
    return {"studio": __version__, "torch": str(torch.__version__), "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__}


def preview(checkpoint: str | None, data: str | None, spec: ConvertSpec | None = None) -> dict[str, Any]:
    """What the app shows after upload: the model's kind and inputs, the sample's columns and rows."""
    out: dict[str, Any] = {"model": None, "columns": [], "rows": []}
    if checkpoint:
        out["model"] = sources.load(checkpoint, spec).describe()
    if data:
        df = sample_mod.read_sample(data, spec.sample_limits if spec is not None else None)
        out["columns"] = [asdict(c) for c in roles_mod.describe_columns(df)]
        out["rows"] = json.loads(df.head(5).to_json(orient="records", default_handler=str))
    return out


def convert(spec: ConvertSpec, progress: Progress | None = None) -> Report:
    """Load, batch, export, check, compare, probe, time, write. Raises StudioError on bad input.

    The returned Report says which checks passed (`report.ok`); files are in `spec.out`.
    """
    spec = spec.validated()
    say = progress or (lambda stage, fraction: None)
    started = time.perf_counter()
    out = Path(spec.out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise StudioError(f"--out {out} exists and is not a folder.")
    remove_stale(out)
    work = out.parent / f".{out.name}.partial-{scratch.name_tail()}{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    try:
        report = _run(spec, work, say)
        say("writing", _FRACTION["writing"])
        report.seconds = round(time.perf_counter() - started, 2)
        report.options["out"] = str(out)
        _write_report(report, work)
        _move_into(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say("done", 1.0)
    return report


def remove_stale(out: str | Path) -> list[Path]:
    """Remove the build folders (`.OUT.partial-PID-HOST-*`) that conversions into `out` left behind when they
    were killed (a memory or time limit, SIGKILL): those of this machine whose process is gone (see
    sources.scratch). Returns what was removed."""
    out = Path(out).expanduser().resolve()
    removed = []
    if out.parent.is_dir():
        for p in out.parent.glob(f".{glob_escape(out.name)}.partial-*"):
            if p.is_dir() and not p.is_symlink() and scratch.is_stale(p.name.rpartition(".partial-")[2]):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def _run(spec: ConvertSpec, work: Path, say: Progress) -> Report:
    say("loading", _FRACTION["loading"])
    loaded = sources.load(spec.checkpoint, spec, workdir=work)  # an uploaded zip is unpacked inside the job

    say("batch", _FRACTION["batch"])
    df = sample_mod.read_sample(spec.data, spec.sample_limits)
    batch = batch_mod.build_batch(df, loaded, spec.roles, spec, file=str(spec.data))
    tensors = batch.tensors

    say("export", _FRACTION["export"])
    model_path = work / "model.onnx"
    export_info: ExportInfo = export_mod.export(loaded, tensors, spec, model_path)
    axes = export_mod.dynamic_axes_for(loaded, tensors, spec)
    export_mod.annotate(model_path, _metadata(spec, loaded, batch, export_info))

    runtime.release_memory()  # the exporter's intermediate graphs are garbage now

    say("checker", _FRACTION["checker"])
    checker = inspect_mod.check(model_path)
    graph = inspect_mod.graph_info(model_path)

    say("parity", _FRACTION["parity"])
    threads = spec.threads or runtime.default_threads()
    # checks run without ORT's memory arena (it never shrinks); latency gets its own default session
    session = runtime.cpu_session(model_path, threads, arena=False)
    parity, onnx_outputs = parity_mod.parity(loaded, session, tensors, spec.atol, spec.rtol)

    say("shape probe", _FRACTION["shape probe"])
    dynamic = parity_mod.probes(loaded, session, tensors, axes, spec.atol, spec.rtol)
    del session
    runtime.release_memory()

    variant_infos, timed = [], {"model": latency_mod.Target(model_path)}
    if spec.variants:
        say("variants", _FRACTION["variants"])
        from . import variants  # optimized / int8 / fp16 artifacts, each checked like model.onnx
        variant_infos, variant_targets = variants.build(spec, loaded, tensors, model_path, axes, work)
        timed.update(variant_targets)

    say("latency", _FRACTION["latency"])
    span = _FRACTION["writing"] - _FRACTION["latency"]  # slow models take a while here: move the bar per round
    measured = latency_mod.measure_all(loaded, timed, tensors, threads=threads, budget_s=spec.latency_budget_s,
                                       cuda=spec.cuda,
                                       progress=lambda f: say("latency", _FRACTION["latency"] + span * f))
    latency = measured["model"]
    if variant_infos:
        variants.attach_latency(variant_infos, measured, latency)

    report = Report(
        source=loaded.describe(),
        roles=batch.roles,
        export=export_info,
        graph=graph,
        checker=checker,
        parity=parity,
        dynamic=dynamic,
        latency=latency,
        options=spec.to_dict(),
        predictions=_predictions(batch, loaded, onnx_outputs),
        versions=_versions(),
        variants=variant_infos,
        warnings=list(batch.warnings) + list(loaded.info.get("warnings") or []),
        feeds={n: [dict(f) for f in parts] for n, parts in batch.features.items()},
    )

    np.savez(work / "sample_inputs.npz", **{n: t.detach().cpu().numpy() for n, t in tensors.items()})
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(str(work / "tokenizer"))
    sample_copy = "sample" + Path(spec.data).suffix.lower()
    shutil.copyfile(spec.data, work / sample_copy)
    (work / "inference_example.py").write_text(_example_script(loaded, batch, sample_copy, spec.fill_value,
                                                                       work / sample_copy))
    report.files = {"model": "model.onnx", "report_json": "report.json", "report_md": "report.md",
                    "example": "inference_example.py", "sample_inputs": "sample_inputs.npz",
                    "sample": sample_copy}
    if (work / "model.onnx.data").exists():
        report.files["data"] = "model.onnx.data"
    if loaded.tokenizer is not None:
        report.files["tokenizer"] = "tokenizer"
    return report


def _metadata(spec: ConvertSpec, loaded, batch, info: ExportInfo) -> dict[str, str]:
    from . import __version__
    return {
        "studio.version": __version__,
        "studio.source_kind": loaded.kind,
        "studio.roles": json.dumps(batch.roles),
        "studio.inputs": json.dumps({i.name: _input_meta(i, batch) for i in loaded.inputs if i.name in batch.tensors}),
        "studio.tokenizer": json.dumps(batch.tokenizer_settings),
        "studio.opset": str(info.opset),
        "studio.exporter": str(info.exporter),
        "studio.outputs": json.dumps({n: loaded.output_kinds.get(n, "other") for n in loaded.output_names}),
        "studio.labels": json.dumps(loaded.info.get("labels")),
    }


def _input_meta(inp, batch) -> dict[str, Any]:
    """What feeds one graph input: a tabular input's columns in order and the feature indices of each."""
    if inp.kind != TABULAR:
        return {"kind": inp.kind, "column": None}
    cols = batch.tabular.get(inp.name) or []
    return {"kind": inp.kind, "column": cols[0] if len(cols) == 1 else None, "columns": list(cols),
            "width": batch.widths.get(inp.name), "features": batch.features.get(inp.name, [])}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _predictions(batch, loaded, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per row: the ignored columns beside the ONNX model's prediction (class outputs only)."""
    rows = [{col: values[i] for col, values in batch.ignored.items()} for i in range(batch.rows)]
    labels = loaded.info.get("labels") or None
    name = next((n for n in loaded.output_names if loaded.output_kinds.get(n) in ("probs", "logits")), None)
    if name is None or outputs.get(name) is None or outputs[name].ndim != 2:
        return rows
    scores = outputs[name].astype(np.float64)
    probs = scores if loaded.output_kinds[name] == "probs" else _softmax(scores)
    for i, row in enumerate(rows):
        k = int(probs[i].argmax())
        row["prediction"] = labels[k] if labels and k < len(labels) else k
        row["confidence"] = round(float(probs[i, k]), 4)
    return rows


def _write_report(report: Report, work: Path) -> None:
    (work / "report.json").write_text(report.to_json())
    (work / "report.md").write_text(report.to_markdown())


def _move_into(work: Path, out: Path) -> None:
    """Replace the conversion's own files in `out`; leave anything else the user keeps there."""
    out.mkdir(parents=True, exist_ok=True)
    for name in OWNED + tuple(p.name for p in out.glob("sample.*")):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for item in work.iterdir():
        shutil.move(str(item), str(out / item.name))


EXAMPLE = '''"""Run model.onnx on the sample rows with onnxruntime. Generated by ONNX Studio {version}.

Needs: onnxruntime, numpy, pandas{tok_need}. Run from anywhere: python inference_example.py
"""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / {sample!r}
TEXT_COLUMNS = {text_columns!r}        # tokenized together (a pair when there are two)
TABULAR = {tabular!r}                  # graph input -> sample columns, concatenated in this order
CATEGORIES = {categories!r}            # categorical graph input -> its categories, one-hot in this order
TEXT_INPUTS = {text_inputs!r}          # graph input -> tokenizer output
TOKENIZER = {tokenizer!r}              # tokenizer call settings used at export
ID_DTYPE = np.{id_dtype}
LABELS = {labels!r}
SEP = {sep!r}                          # the delimiter of a CSV / TSV / TXT sample
EMBEDDING = {embedding!r}              # the sentence-embedding output, for embedding models


def read_json_table(data):
    """The JSON layouts the studio reads: records, {{"data": records}}, and pandas' to_json orients."""
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        if isinstance(data.get("columns"), list):  # orient="split"
            return pd.DataFrame(data["data"], columns=data["columns"])
        return pd.DataFrame(data["data"])  # {{"data": records}}, orient="table"
    if isinstance(data, list):
        if data and isinstance(data[0], list):  # orient="values": columns are named 0, 1, ...
            return pd.DataFrame(data, columns=[str(i) for i in range(len(data[0]))])
        return pd.DataFrame(data)  # records
    values = list(data.values())
    if values and all(isinstance(v, dict) for v in values):
        digits = lambda keys: all(str(k).lstrip("+-").isdigit() for k in keys)  # noqa: E731
        if digits(data) and not digits({{k for v in values for k in v}}):  # orient="index"
            return pd.DataFrame(values)
        return pd.DataFrame({{c: list(v.values()) for c, v in data.items()}})  # orient="columns"
    if values and all(isinstance(v, list) for v in values):
        return pd.DataFrame(data)
    return pd.DataFrame([data])


def read_sample(path):
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(path, lines=True, dtype=False)
    if suffix == ".json":
        return read_json_table(json.loads(path.read_text(encoding="utf-8-sig")))
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            return pd.read_csv(path, sep=SEP, dtype=str, keep_default_na=False, encoding=encoding)
        except UnicodeDecodeError:
            continue


def tabular(values, fill=None):
    rows = []
    for v in values:
        if isinstance(v, str):
            s = v.strip()
            v = json.loads(s) if s.startswith("[") else {{"true": 1.0, "false": 0.0}}.get(s.lower(), s)
            if v == "" and fill is not None:
                v = fill
        rows.append(np.atleast_1d(np.asarray(v, dtype=np.float32)))
    return np.stack(rows).astype(np.float32)


def build_inputs(df):
    feeds = {{}}
    if TEXT_COLUMNS:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(HERE / "tokenizer")
        texts = [["" if v is None or v != v else str(v) for v in df[c].tolist()] for c in TEXT_COLUMNS]
        enc = tok(*texts, padding=True, truncation=True, max_length=TOKENIZER["max_length"], return_tensors="np")
        for name, key in TEXT_INPUTS.items():
            value = enc[key] if key in enc else np.zeros_like(enc["input_ids"])
            feeds[name] = value.astype(ID_DTYPE)
    for name, columns in TABULAR.items():
        if name in CATEGORIES:
            cats = CATEGORIES[name]
            values = [str(v).strip() for v in df[columns[0]].tolist()]
            feeds[name] = np.array([[1.0 if v == c else 0.0 for c in cats] for v in values], dtype=np.float32)
            continue
        parts = [tabular(df[c].tolist(), TOKENIZER.get("fill_value")) for c in columns]
        feeds[name] = np.concatenate(parts, axis=1).astype(np.float32)
    return feeds


def show_embeddings(emb):
    """Each row's embedding (first values, size, length) and the cosine similarity of every pair of rows."""
    emb = emb.astype(np.float64)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    for i, row in enumerate(emb):
        head = ", ".join(f"{{x:.4f}}" for x in row[:6])
        print(f"row {{i + 1}}: embedding [{{head}}, ...] ({{row.shape[0]}} values, L2 norm {{norms[i, 0]:.4f}})")
    unit = emb / np.maximum(norms, 1e-12)
    sims = unit @ unit.T
    print("cosine similarity (rows x rows):")
    print("       " + " ".join(f"{{'row ' + str(j + 1):>7}}" for j in range(len(emb))))
    for i in range(len(emb)):
        print(f"{{'row ' + str(i + 1):>6}} " + " ".join(f"{{x:7.4f}}" for x in sims[i]))


def main():
    df = read_sample(SAMPLE)
    feeds = build_inputs(df)
    session = ort.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = session.run(None, {{n: feeds[n] for n in names}})
    expected = np.load(HERE / "sample_inputs.npz")
    same = all(np.array_equal(feeds[n], expected[n]) for n in names)
    print("inputs match sample_inputs.npz:", same)
    if EMBEDDING is not None:
        show_embeddings(outputs[[o.name for o in session.get_outputs()].index(EMBEDDING)])
        return 0 if same else 1
    first = outputs[0]
    for i in range(first.shape[0]):
        if first.ndim == 2:
            k = int(first[i].argmax())
            print(f"row {{i + 1}}: class {{LABELS[k] if LABELS else k}} scores {{[round(float(x), 4) for x in first[i]]}}")
        else:
            print(f"row {{i + 1}}: output shape {{first[i].shape}}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
'''


def _example_script(loaded, batch, sample_name: str, fill_value: float | None,
                    sample_path: Path | None = None) -> str:
    from . import __version__
    # text input kinds are the tokenizer's output names
    text_map = {i.name: i.kind for i in loaded.inputs if i.name in batch.tensors and i.kind != TABULAR}
    settings = {**batch.tokenizer_settings, "fill_value": fill_value}
    sep = ","
    if sample_path is not None and sample_path.suffix.lower() in sample_mod.CSV_SUFFIXES:
        raw = sample_path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        sep = sample_mod.pick_delimiter(text, sample_mod.CSV_SUFFIXES[sample_path.suffix.lower()])
    return EXAMPLE.format(version=__version__, sample=sample_name, text_columns=list(batch.text_columns),
                          tabular={n: list(c) for n, c in batch.tabular.items()}, text_inputs=text_map,
                          categories={i.name: list(i.vocab) for i in loaded.tabular_inputs
                                      if i.vocab and i.name in batch.tabular},
                          tokenizer=settings,
                          id_dtype=batch.tokenizer_settings.get("id_dtype", "int64"),
                          labels=loaded.info.get("labels"), sep=sep,
                          embedding=next((n for n in loaded.output_names if loaded.output_kinds.get(n) == "embedding"),
                                         None),
                          tok_need=", transformers" if batch.text_columns else "")
