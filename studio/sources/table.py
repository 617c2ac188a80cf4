"""The loader table: what a checkpoint is and which loader reads it, as data.

`LOADERS` rows (studio.sources.base.Loader: kind, sniff, load) are tried in order and the first whose sniff
says yes loads the source; operator plugins (sources.plugins) are rows too, tried before these. A row either
loads a model, refuses with the message the user sees, or unwraps a container (a zipped folder, a folder's
one weights file, a file read weights-only, a DCP folder consolidated) and asks the table again about what
it found. What a file is, is told from its bytes (sources.sniff), not from its extension.
"""

from __future__ import annotations

import re
from pathlib import Path

from studio.errors import CheckpointError, UnsafeCheckpointError
from studio.sources import contain, dcp, hf, multimodal, plugins, sbert, scratch, statedict, trusted
from studio.sources import sniff as sniffing
from studio.sources.base import FILE, FOLDER, OBJECT, UPLOAD, LoadedModel, Loader, LoadOptions, Sniff, Source
from studio.sources.weights import read_weights_only

# What the studio tells a user it reads (the "Supported: ..." sentence of every refusal below).
SUPPORTED = (
    "a Hugging Face model folder (config.json + model.safetensors or pytorch_model.bin + tokenizer files), "
    "or a .zip of one",
    "a sentence-transformers folder (modules.json: Transformer, Pooling, Dense, Normalize), or a .zip of one",
    "an ONNX Studio multimodal checkpoint (.pt/.pth/.ckpt, docs/checkpoints.md), Lightning-style dicts accepted",
    "a state dict (.pt/.pth/.bin/.ckpt, Lightning/DDP/FSDP prefixes accepted) or a single .safetensors file of "
    "a Hugging Face backbone, optionally with a Linear head (--head), with its config.json beside it or via "
    "--config",
    "a torch.distributed.checkpoint folder (.metadata + *.distcp), zipped, with config.json",
    "TorchScript / torch.export .pt2 / pickled nn.Module only when the operator allows trusted code",
)
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")
WEIGHT_SUFFIXES = TORCH_SUFFIXES + (".safetensors", ".pt2", ".ts", ".jit", ".torchscript", ".pkl")


def supported() -> str:
    return "Supported: " + "; ".join(SUPPORTED) + "."


def table() -> tuple[Loader, ...]:
    """Every row in the order it is asked: the operator's plugins, then the built-in loaders."""
    return plugins.loaders() + LOADERS


def dispatch(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    """The model of the first row that claims `source`; the facts found on the way join its info."""
    for row in table():
        if row.sniff(source, options):
            loaded = row.load(source, shown, options)
            for k, v in source.info.items():
                loaded.info.setdefault(k, v)
            return loaded
    raise AssertionError(f"no row of the loader table answers a {source.form}")  # each form ends in a refusal


def file_source(path: Path, folders: list[Path]) -> Source:
    """A file read by its bytes, noting when its name says otherwise."""
    source = Source(FILE, path, folders)
    expected = sniffing.expected_suffixes(source.sniffed.kind)
    if expected and path.suffix.lower() not in expected:
        source.info["note"] = (
            f"named {path.suffix or '(no extension)'} but holds {sniffing.DESCRIPTIONS[source.sniffed.kind]}; "
            "read as its content says"
        )
    return source


def checked_task(loaded: LoadedModel, options: LoadOptions) -> LoadedModel:
    """An explicit --task must be the task the graph computes; only model folders can be told one."""
    task = options.task
    if task != "auto" and loaded.task != task:
        raise CheckpointError(
            f"--task {task} does not apply to {loaded.path} ({loaded.kind}): --task chooses what a "
            "Hugging Face or sentence-transformers model folder is exported as.",
            hint="Leave --task auto; a state dict's head is chosen with --head.",
        )
    return loaded


# ------------------------------------------------------------------------------------------ the upload


def _is(form: str) -> Sniff:
    return lambda source, options: source.form == form


def _empty_upload(source: Source, options: LoadOptions) -> bool:
    return source.form == UPLOAD and source.path.is_file() and source.path.stat().st_size == 0


def _refuse_empty(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    raise CheckpointError(f"Checkpoint {source.path.name} is an empty file.")


def _zipped_upload(source: Source, options: LoadOptions) -> bool:
    return source.form == UPLOAD and source.holds(sniffing.ARCHIVE)


def _unzip(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    """A .zip of a model folder: unpacked safely (sources.archive), its tree checked, read as the folder."""
    from studio.sources.archive import extract_zip

    with scratch.temp_dir("studio-ckpt-", source.workdir) as tmp:  # named by pid: a killed run's is swept later
        root = extract_zip(source.path, tmp)
        contain.check_folder(root, shown)
        loaded = dispatch(Source(FOLDER, root), shown, options)
        loaded.path = shown
        return checked_task(loaded, options)


def _upload(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    """The upload as the folder or file it is; an explicit --task is checked against the result."""
    p = source.path
    inner = Source(FOLDER, p) if p.is_dir() else file_source(p, [p.parent])
    return checked_task(dispatch(inner, shown, options), options)


# ------------------------------------------------------------------------------------------ folders


def _wants_sentence_embedding(source: Source, options: LoadOptions) -> bool:
    return source.form == FOLDER and options.task == "sentence-embedding"


def _refuse_sentence_embedding(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    raise CheckpointError(
        f"--task sentence-embedding needs a sentence-transformers folder, and {shown} has no {sbert.MODULES_FILE}.",
        hint="Use --task feature-extraction for the token embeddings.",
    )


def _hf_or_own(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    """A Hugging Face folder; weights that do not fit its config may be a state dict of the user's own
    class saved under a Hugging Face file name: then that one file is read as a state dict."""
    folder = source.path
    try:
        return hf.load(source, shown, options)
    except hf.WeightsMismatchError as e:
        single = [folder / f for f in hf.WEIGHT_FILES[:2] if (folder / f).is_file()]
        if len(single) != 1 or len(weight_files(folder)) != 1:
            raise
        try:
            return dispatch(file_source(single[0], [folder]), shown, options)
        except CheckpointError as again:
            raise again from e


def _dcp(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    """A torch.distributed.checkpoint folder (or a folder holding one): consolidated, then read as its state."""
    dcp_dir = dcp.find_dcp_dir(source.path)
    assert dcp_dir is not None  # the row's sniff found it
    state = dcp.load_dcp(dcp_dir, shown)
    shards = len(list(dcp_dir.glob("*" + dcp.SHARD_SUFFIX)))
    held = Source(OBJECT, source.path, [source.path, dcp_dir], {"layout": "dcp", "shards": shards}, obj=state)
    return dispatch(held, shown, options)


def weight_files(folder: Path) -> list[Path]:
    return sorted(
        f
        for f in folder.iterdir()
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in WEIGHT_SUFFIXES
    )


def _one_weight_file(source: Source, options: LoadOptions) -> bool:
    return source.form == FOLDER and len(weight_files(source.path)) == 1


def _the_weight_file(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    (only,) = weight_files(source.path)
    return dispatch(file_source(only, [source.path]), shown, options)


def _several_weight_files(source: Source, options: LoadOptions) -> bool:
    return source.form == FOLDER and len(weight_files(source.path)) > 1


def _refuse_several(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    candidates = weight_files(source.path)
    raise CheckpointError(
        f"{shown} holds several weight files ({', '.join(f.name for f in candidates[:10])}); "
        "the studio converts one checkpoint at a time.",
        hint="Keep one weights file (plus config.json and tokenizer files) in the folder.",
    )


def _refuse_folder(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    found = ", ".join(sorted(f.name for f in source.path.iterdir())[:20]) or "nothing"
    raise CheckpointError(f"{shown}: no checkpoint recognised in this folder (found: {found}). " + supported())


# ------------------------------------------------------------------------------------------ files


def _holds(*kinds: str) -> Sniff:
    return lambda source, options: source.form == FILE and source.holds(*kinds)


def _safetensors(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    state = statedict.read_safetensors(source.path, shown)
    return dispatch(_held(source, state, layout="safetensors"), shown, options)


def _torch_save(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    """torch.load(weights_only=True); a pickle of other objects is refused, or unpickled when code is trusted."""
    try:
        obj = read_weights_only(source.path, shown, source.sniffed.kind)
    except UnsafeCheckpointError as e:
        if not options.trust_code:
            m = re.search(r"\(it refers to ([^)]*)\)", e.message)
            raise trusted.refusal(shown, "pickle", f" (it refers to {m.group(1)})" if m else "") from e
        return trusted.load_pickled(source, shown, options)
    return dispatch(_held(source, obj), shown, options)


def _held(source: Source, obj: object, **facts: object) -> Source:
    return Source(OBJECT, source.path, source.folders, {**source.info, **facts}, obj=obj)


def _refuse_broken_zip(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    raise CheckpointError(f"{shown} is {source.sniffed.description}.", hint="Upload the file again; check its size.")


def _refuse_nested_zip(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    raise CheckpointError(f"{shown} is a zip archive inside the upload; upload the model folder zipped once.")


def _refuse_file(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    raise CheckpointError(
        f"{shown} is {source.sniffed.description}, not a checkpoint the studio can read. " + supported()
    )


# ------------------------------------------------------------------------------------------ objects


def _refuse_object(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    raise CheckpointError(
        f"{shown} holds {statedict.describe_object(source.obj)}, which is not a checkpoint kind the "
        "studio knows. " + supported()
    )


LOADERS: tuple[Loader, ...] = (
    # the upload as given (plugins were asked first)
    Loader("empty file", _empty_upload, _refuse_empty),
    Loader("zipped folder", _zipped_upload, _unzip),
    Loader("upload", _is(UPLOAD), _upload),
    # folders
    Loader(sbert.KIND, sbert.sniff, sbert.load),
    Loader("no sentence-transformers folder", _wants_sentence_embedding, _refuse_sentence_embedding),
    Loader(hf.KIND, hf.sniff, _hf_or_own),
    Loader("dcp", dcp.sniff, _dcp),
    Loader("folder of one weights file", _one_weight_file, _the_weight_file),
    Loader("folder of several weights files", _several_weight_files, _refuse_several),
    Loader("folder", _is(FOLDER), _refuse_folder),
    # files, by their bytes
    Loader("torchscript", _holds(sniffing.TORCHSCRIPT), trusted.load_torchscript),
    Loader("torch-export", _holds(sniffing.PROGRAM), trusted.load_program),
    Loader("safetensors", _holds(sniffing.SAFETENSORS), _safetensors),
    Loader("torch.save", _holds(sniffing.TORCH_ZIP, sniffing.TORCH_LEGACY, sniffing.PICKLE), _torch_save),
    Loader("broken zip", _holds(sniffing.BROKEN_ZIP), _refuse_broken_zip),
    Loader("zip in the upload", _holds(sniffing.ARCHIVE), _refuse_nested_zip),
    Loader("file", _is(FILE), _refuse_file),
    # what a file held, read weights-only
    Loader(multimodal.KIND, multimodal.sniff, multimodal.load),
    Loader(statedict.KIND, statedict.sniff, statedict.load),
    Loader("object", _is(OBJECT), _refuse_object),
)
