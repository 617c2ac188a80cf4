"""The output folder: report.json / report.md, the example script and the sample rows it reads, the zips.

pipeline.convert writes every file here through this module (into its private build folder, moved into
place when complete); the app zips the folder with `zip_folder`. Server paths are scrubbed once, when the
report is written (`write_report(..., display=spec.display_paths)`): the app's downloads name `sample.csv`
and `out`, not the job folders they came from.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO

from studio.errors import DiskFullError, StudioError
from studio.report.model import Report, map_leaves
from studio.report.render import render_markdown

# Files a conversion owns inside the output folder (replaced on every run, nothing else touched), besides
# the copy of the sample (`sample.<suffix>`).
OWNED = (
    "model.onnx",
    "model.onnx.data",
    "report.json",
    "report.md",
    "inference_example.py",
    "sample_inputs.npz",
    "sample_rows.json",
    "tokenizer",
    "diagnostics",
    "variants",
    "candidates",  # --exporter compare: the other exporter's file (studio.export.compare)
    # a generator's (studio.generate.run): the encoder-decoder files, and what is saved beside them at the root
    "encoder_model.onnx",
    "encoder_model.onnx.data",
    "decoder_model.onnx",
    "decoder_model.onnx.data",
    "decoder_with_past_model.onnx",
    "decoder_with_past_model.onnx.data",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "source.spm",
    "target.spm",
)
SAMPLE_ROWS = "sample_rows.json"  # the sample as read (typed cells), what inference_example.py reads

# The folder a zipped upload is unpacked into (studio.sources.load: "studio-ckpt-" + random), wherever it
# lies: messages about its files name them from the archive's root ("model/config.json").
# Found in time linear in the text (a message may quote megabytes of an upload's names): the marker, then
# a walk back to the start of the path it ends.
_UNPACK_DIR = re.compile(r"[\\/]studio-ckpt-[A-Za-z0-9_-]+(?P<sep>[\\/])?")
_PATH_RUN = re.compile(r"[^\s'\"`()\[\]{}<>,;=]*")  # a path's characters, matched on the reversed text


def _drop_unpack_dirs(text: str) -> str:
    """Each path into an unpack folder: the folder dropped when a file of it follows, else "(the unpacked
    upload)"."""
    out, done = [], 0
    for m in _UNPACK_DIR.finditer(text):
        run = _PATH_RUN.match(text[done : m.start()][::-1])  # always matches (maybe empty)
        start = m.start() - (len(run.group()) if run else 0)
        out += [text[done:start], "" if m.group("sep") else "(the unpacked upload)"]
        done = m.end()
    return "".join(out) + text[done:]


# --- the report ---------------------------------------------------------------------------------------


def scrub_paths(text: str, paths: list[str | Path | None]) -> str:
    """Say `sample.csv`, not the server's upload folder: drop the folders of the given paths, and the
    temporary folders zipped uploads are unpacked in."""
    for p in sorted({str(Path(p).parent) for p in paths if p}, key=len, reverse=True):
        if p not in ("", ".", "/"):
            text = text.replace(p + os.sep, "")
    text = text.replace(os.path.join(tempfile.gettempdir(), "studio-ckpt-"), "/studio-ckpt-")  # even with spaces
    return _drop_unpack_dirs(text)


def write_report(report: Report, folder: Path, display: tuple[str, ...] | list[str] = ()) -> None:
    """report.json and report.md in `folder`. display: server paths that the report (and the Report object
    itself, changed in place) names without their folders (`scrub_paths`); empty: every path as given."""
    if display:
        map_leaves(report, lambda v: scrub_paths(v, list(display)) if isinstance(v, str) else v)
    (folder / "report.json").write_text(report.to_json())
    (folder / "report.md").write_text(render_markdown(report))


# --- the example script and the sample it reads -------------------------------------------------------


def write_example(folder: Path, loaded, batch, df, data: str | Path, fill_value: float | None) -> dict[str, str]:
    """inference_example.py, the rows it reads (sample_rows.json: `df` as read_sample typed it, so the
    example cannot read the file differently from the studio) and a copy of the sample file as uploaded.
    Returns their report.files entries."""
    sample_copy = "sample" + Path(data).suffix.lower()
    shutil.copyfile(data, folder / sample_copy)
    write_rows(df, folder / SAMPLE_ROWS)
    (folder / "inference_example.py").write_text(example_script(loaded, batch, fill_value))
    return {"example": "inference_example.py", "sample": sample_copy, "sample_rows": SAMPLE_ROWS}


def write_rows(df, path: Path) -> None:
    """`{"columns": [...], "rows": [[cell, ...], ...]}`: every cell as the studio read it, in standard JSON
    (a missing cell is null; an infinite number is its text, as the studio tokenizes it)."""
    from studio.inputs.cells import jsonable

    rows = [[jsonable(v) for v in row] for row in df.itertuples(index=False, name=None)]
    path.write_text(
        json.dumps({"columns": [str(c) for c in df.columns], "rows": rows}, ensure_ascii=False, allow_nan=False),
        encoding="utf-8",
    )


def example_script(loaded, batch, fill_value: float | None) -> str:
    """The text of inference_example.py for this model and batch (see EXAMPLE)."""
    from studio._version import __version__
    from studio.inputs.cells import NA_TOKENS
    from studio.sources.base import TABULAR

    # text input kinds are the tokenizer's output names
    text_map = {i.name: i.kind for i in loaded.inputs if i.name in batch.tensors and i.kind != TABULAR}
    return EXAMPLE.format(
        version=__version__,
        sample=SAMPLE_ROWS,
        text_columns=list(batch.text_columns),
        tabular={n: list(c) for n, c in batch.tabular.items()},
        text_inputs=text_map,
        categories={i.name: list(i.vocab) for i in loaded.tabular_inputs if i.vocab and i.name in batch.tabular},
        tokenizer={**batch.tokenizer_settings, "fill_value": fill_value},
        id_dtype=batch.tokenizer_settings.get("id_dtype", "int64"),
        labels=loaded.info.get("labels"),
        missing=sorted({"", *NA_TOKENS}),
        embedding=next((n for n in loaded.output_names if loaded.output_kinds.get(n) == "embedding"), None),
        tok_need=", transformers" if batch.text_columns else "",
    )


# --- moving into place, zips, removing ----------------------------------------------------------------


def move_into(work: Path, out: Path) -> None:
    """Replace the conversion's own files in `out` with those built in `work`; leave anything else the user
    keeps there. Beside `work` (the same disk) each move is a rename; should one fail all the same (`out` a
    mount of its own, copied into, and full), what was moved is taken out again: never half a set of files."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    for name in OWNED + tuple(p.name for p in out.glob("sample.*")):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    moved: list[Path] = []
    try:
        for item in work.iterdir():
            moved.append(out / item.name)
            shutil.move(str(item), str(out / item.name))
    except BaseException:
        for target in moved:
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


# --- a full disk -------------------------------------------------------------------------------------

DISK_FULL_ERRNOS = frozenset(n for n in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None)) if n)
# what C++ writers (protobuf, ONNX Runtime, torch) put in the RuntimeError they raise instead of an OSError
_DISK_FULL_WORDS = tuple(dict.fromkeys(os.strerror(n) for n in DISK_FULL_ERRNOS)) + (
    "No space left on device",
    "File too large",
    "Disk quota exceeded",
)


def disk_full(e: BaseException | None) -> BaseException | None:
    """The error in `e`'s chain (itself, its causes) that says a disk, a quota or a file-size limit ran out
    (ENOSPC, EFBIG, EDQUOT), or None."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return e
        if not isinstance(e, StudioError) and any(w in str(e)[:10_000] for w in _DISK_FULL_WORDS):
            return e
        e = e.__cause__ or e.__context__
    return None


def reraise_disk_full(e: BaseException) -> None:
    """For a handler that would note a failure and go on (the next exporter, the next variant): a full disk
    ends the conversion instead (pipeline.convert says so), the next attempt would only fill it again."""
    if disk_full(e) is not None:
        raise e


# what a conversion writes at each stage (pipeline's progress names), for a write error that names no file
_WRITTEN_AT = {
    "loading": "the unpacked upload",
    "export": "model.onnx",
    "variants": "the variants (model.<variant>.onnx)",
    "writing": "the report and the files beside it",
    "zip": "the download (zip)",
}


def disk_full_error(
    e: BaseException,
    work: Path,
    out: Path,
    stage: str,
    after: str = "nothing was written there and the build folder was removed",
) -> DiskFullError:
    """The message for a full disk met while building `out` in `work`, at `stage`."""
    where = _WRITTEN_AT.get(stage, "its files")
    for name in (getattr(e, "filename2", None), getattr(e, "filename", None)):  # a copy's: (source, dest)
        if isinstance(name, (str, os.PathLike)) and Path(name).is_relative_to(work):
            where = Path(name).relative_to(work).as_posix()
            break
    code = getattr(e, "errno", None)
    why = os.strerror(code) if code in DISK_FULL_ERRNOS else next(w for w in _DISK_FULL_WORDS if w in str(e))
    return DiskFullError(
        f"The disk is full (or a disk quota or file-size limit was reached: {why}) while writing {where} for "
        f"{out} ({stage} stage); {after}.",
        hint="Free some space on that disk (or raise the quota / `ulimit -f`), or point --out at another disk, "
        "and run again.",
    )


def _zip_into(folder: Path, target: Path | BinaryIO, top: str = "") -> None:
    """Every file under `folder` into a zip written to `target`, named `top` + its path in the folder
    (weights stored: they barely compress; the rest deflated, fast)."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                stored = path.suffix in (".onnx", ".data", ".npz")
                zf.write(
                    path,
                    f"{top}{path.relative_to(folder)}",
                    compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED,
                )


def zip_bytes(folder: Path) -> bytes:
    """A whole folder as zip bytes, its files named by their path in it (as zip_folder, without the top
    folder): an output folder sent back over the wire (a Ray worker's, studio.jobs.ray_fleet)."""
    buf = io.BytesIO()
    _zip_into(folder, buf)
    return buf.getvalue()


def zip_folder(folder: Path, dest: Path) -> Path:
    """One download of a whole output folder, under a top folder named like the zip (weights stored, the
    rest deflated). Written beside `dest` and renamed when complete: a full disk leaves no half zip, and
    says so (DiskFullError)."""
    partial = dest.with_name(f".{dest.name}.partial")
    try:
        _zip_into(folder, partial, f"{dest.stem}/")
        os.replace(partial, dest)
    except BaseException as e:
        partial.unlink(missing_ok=True)
        full = disk_full(e) if isinstance(e, Exception) else None
        if full is None:
            raise
        raise disk_full_error(full, dest.parent, dest, "zip", "no zip was left there") from e
    return dest


def artifact_files(path: Path) -> list[Path]:
    """The .onnx file and every external-data file it refers to (all inside its folder)."""
    from studio.checks.graph_info import external_files

    return [Path(path)] + [f for f in external_files(Path(path)) if f.exists()]


def zip_artifact(path: Path, dest: Path) -> Path:
    """One download for a model whose weights live beside it: a .zip of the .onnx and its .data files
    (stored, not deflated: weights barely compress). Unzipped into one folder, it loads as it is."""
    path, dest = Path(path), Path(dest)
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for f in artifact_files(path):
            zf.write(f, arcname=f.relative_to(path.parent).as_posix())
    return dest


def remove_model(path: Path) -> None:
    """Delete an .onnx file and the `<name>.data` beside it, where they exist."""
    for p in (Path(path), Path(str(path) + ".data")):
        p.unlink(missing_ok=True)


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
MISSING = {missing!r}  # cells read as empty (like a blank cell)
EMBEDDING = {embedding!r}              # the sentence-embedding output, for embedding models


def read_sample(path):
    """The sample as the studio read it: {{"columns": [...], "rows": [[cell, ...], ...]}}, cells as typed."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return pd.DataFrame(data["rows"], columns=data["columns"], dtype=object)


def text(v):
    """A text cell as the tokenizer gets it: empty for a missing cell, lists and objects as JSON."""
    if v is None or v != v:
        return ""
    return v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def cell(v, fill=None):
    """A tabular cell -> its numbers; a missing cell (or list element) gets the fill value."""
    if isinstance(v, str):
        s = v.strip()
        if s.lower() in MISSING:
            v = None
        elif s.lower() in ("true", "false"):
            v = s.lower() == "true"
        else:
            v = json.loads(s) if s.startswith("[") else float(s)
    if isinstance(v, list):
        return [fill if x is None or x != x else x for x in v]
    return None if v is None or v != v else [v]


def tabular(values, fill=None):
    """One tabular column -> float32 [rows, width]."""
    rows = [cell(v, fill) for v in values]
    width = max((len(r) for r in rows if r is not None), default=1)
    return np.array([r if r is not None else [fill] * width for r in rows], dtype=np.float32).reshape(-1, width)


def build_inputs(df):
    feeds = {{}}
    if TEXT_COLUMNS:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(HERE / "tokenizer")
        texts = [[text(v) for v in df[c].tolist()] for c in TEXT_COLUMNS]
        enc = tok(*texts, padding=True, truncation=True, max_length=TOKENIZER["max_length"], return_tensors="np")
        for name, key in TEXT_INPUTS.items():
            value = enc[key] if key in enc else np.zeros_like(enc["input_ids"])
            feeds[name] = value.astype(ID_DTYPE)
    for name, columns in TABULAR.items():
        if name in CATEGORIES:
            cats = CATEGORIES[name]
            values = [text(v).strip() for v in df[columns[0]].tolist()]
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
            scores = [round(float(x), 4) for x in first[i]]
            print(f"row {{i + 1}}: class {{LABELS[k] if LABELS else k}} scores {{scores}}")
        else:
            print(f"row {{i + 1}}: output shape {{first[i].shape}}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
'''


def annotate(path: Path, metadata: dict[str, str]) -> None:
    """Write `metadata_props` so the artifact describes itself (roles, tokenizer settings, opset). New keys are
    appended to the file as a ModelProto holding only them: protobuf parses concatenated messages as one, merged
    (repeated fields appended), so a graph with embedded weights is not rewritten (MiniLM's 90 MB: 0.5-1 s)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    existing = {p.key: p for p in model.metadata_props}
    if not existing.keys() & metadata.keys():
        with open(path, "ab") as f:
            entries = [onnx.StringStringEntryProto(key=k, value=str(v)) for k, v in metadata.items()]
            f.write(onnx.ModelProto(metadata_props=entries).SerializeToString())
        return
    for k, v in metadata.items():
        if k in existing:
            existing[k].value = str(v)
        else:
            model.metadata_props.add(key=k, value=str(v))
    onnx.save(model, str(path))
