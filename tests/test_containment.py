"""Reads outside the upload (issue 10): nothing an upload names, and no link it holds, is followed out of its
folder. Each hostile upload points at a "secret" model / tokenizer planted beside it (outside its folder).

The strong check: every path opened during a conversion of each hostile case is recorded twice, independently
of the code under test — by a Python audit hook (event "open": every open() made from Python) and by Linux
inotify on the secret's folder (every open by any code, also Rust's safetensors / tokenizers, which raise no
audit event). The secret must never be opened, no path outside the allow-list may be opened, and the secret's
content must be in no output."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import struct
import sys
import sysconfig
import tempfile
import threading
import zipfile
from pathlib import Path

import pytest
import tiny
import torch

import studio
from studio import sources
from studio.cli.commands import main as cli_main
from studio.errors import StudioError, UnsafePathError
from studio.sources.base import LoadDefaults

SECRET_WORD = "zzsecretzz"  # only in the outside tokenizer's vocabulary
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- recorders

_opened: list[tuple[int, str]] | None = None


def _audit(event: str, args: tuple) -> None:
    if event != "open" or _opened is None:
        return
    try:
        path = args[0]
        if isinstance(path, (str, bytes, os.PathLike)):
            _opened.append((threading.get_ident(), os.path.abspath(os.fsdecode(os.fspath(path)))))
    except Exception:  # noqa: BLE001, S110 - an audit hook must never break the code it watches
        pass


sys.addaudithook(_audit)  # cannot be removed; records only inside `recorded()`


@contextlib.contextmanager
def recorded():
    """Every path opened from Python inside the block (absolute, as opened), by this thread or a thread
    started in the block (threads of earlier tests, e.g. an app server, are not the conversion's)."""
    global _opened
    before = {t.ident for t in threading.enumerate()} - {threading.get_ident()}
    raw: list[tuple[int, str]] = []
    paths: list[str] = []
    _opened = raw
    try:
        yield paths
    finally:
        _opened = None
        paths.extend(p for ident, p in raw if ident not in before)


class Inotify:
    """Files opened in one folder by anyone (Python, Rust, C), from Linux inotify (IN_OPEN)."""

    IN_OPEN, IN_NONBLOCK, IN_ISDIR = 0x20, 0o4000, 0x40000000

    def __init__(self, folder: Path):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self.fd = libc.inotify_init1(self.IN_NONBLOCK)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(folder), self.IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), "inotify unavailable")

    def opened(self) -> list[str]:
        names, data = [], b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.fd, 1 << 16):
                data += chunk
        i = 0
        while i < len(data):
            _, mask, _, length = struct.unpack_from("iIII", data, i)
            name = data[i + 16 : i + 16 + length].rstrip(b"\0").decode()
            if name and not mask & self.IN_ISDIR:
                names.append(name)
            i += 16 + length
        return names

    def close(self) -> None:
        os.close(self.fd)


@contextlib.contextmanager
def watched(folder: Path):
    """Names of the files in `folder` opened inside the block; None where inotify is unavailable."""
    try:
        ino = Inotify(folder)
    except (OSError, AttributeError):
        yield None
        return
    result: list[str] = []
    try:
        yield result
    finally:
        result.extend(ino.opened())
        ino.close()


# ----------------------------------------------------------------------------------------- building uploads


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """Archives unpack under tempfile's folder: point it at scratch space the allow-list names."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def _save_sharded(folder: Path, seed: int, safetensors: bool = True) -> Path:
    import transformers as tf

    torch.manual_seed(seed)
    model = tf.AutoModelForSequenceClassification.from_config(tiny.make_config("bert")).eval()
    model.save_pretrained(str(folder), max_shard_size="50KB")
    if not safetensors:  # transformers 5 writes only safetensors: rewrite the shards as torch.save files
        from safetensors.torch import load_file

        index = json.loads((folder / "model.safetensors.index.json").read_text())
        renamed = {}
        for shard in sorted(set(index["weight_map"].values())):
            renamed[shard] = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
            torch.save(load_file(str(folder / shard)), folder / renamed[shard])
            (folder / shard).unlink()
        index["weight_map"] = {k: renamed[v] for k, v in index["weight_map"].items()}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
        (folder / "model.safetensors.index.json").unlink()
    return folder


def index_name(safetensors: bool) -> str:
    return "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"


def sharded_upload(folder: Path, safetensors: bool = True) -> Path:
    """A normal sharded HF folder (index + shards) with its tokenizer: must convert."""
    _save_sharded(folder, seed=0, safetensors=safetensors)
    tiny.bert_tokenizer(folder.parent / f"_vocab_{folder.name}").save_pretrained(str(folder))
    assert len(json.loads((folder / index_name(safetensors)).read_text())["weight_map"]) > 1
    return folder


@pytest.fixture
def secret(tmp_path) -> Path:
    """A folder outside every upload: a secret model's shards, a secret model file, a secret tokenizer."""
    where = tmp_path / "elsewhere"
    for st in (True, False):
        src = _save_sharded(tmp_path / f"_secret_{st}", seed=1, safetensors=st)
        for shard in set(json.loads((src / index_name(st)).read_text())["weight_map"].values()):
            where.mkdir(exist_ok=True)
            shutil.move(str(src / shard), str(where / f"secret-{shard}"))
    tiny.make_hf_folder(tmp_path / "_secret_model", seed=1)
    shutil.copy(tmp_path / "_secret_model" / "model.safetensors", where / "secret-model.safetensors")
    words = tmp_path / "_secret_tok"
    vocab = tiny.write_vocab(words)
    vocab.write_text(vocab.read_text() + SECRET_WORD + "\n")
    from transformers import BertTokenizerFast

    BertTokenizerFast(vocab=str(vocab)).save_pretrained(str(words))
    shutil.copy(words / "tokenizer.json", where / "tokenizer.json")
    shutil.copy(vocab, where / "vocab.txt")
    (where / "merges.txt").write_text(f"#version: 0.2\n{SECRET_WORD[:2]} {SECRET_WORD[2:]}\n")
    return where


def _first_shard(index: dict) -> str:
    return min(index["weight_map"].values())


def index_pointing_out(folder: Path, secret: Path, safetensors: bool, how: str) -> tuple[Path, str]:
    """The upload's first shard is gone; its index names the secret model's shard instead."""
    sharded_upload(folder, safetensors)
    name = index_name(safetensors)
    index = json.loads((folder / name).read_text())
    shard = _first_shard(index)
    (folder / shard).unlink()
    target = secret / f"secret-{shard}"
    value = str(target) if how == "absolute" else os.path.relpath(target, folder)
    assert how == "absolute" or value.startswith("..")
    index["weight_map"] = {k: value if v == shard else v for k, v in index["weight_map"].items()}
    (folder / name).write_text(json.dumps(index))
    return folder, name


def tokenizer_key_pointing_out(folder: Path, secret: Path, key: str, how: str) -> tuple[Path, str]:
    """A normal HF folder without tokenizer files of its own: tokenizer_config.json names the secret's."""
    tiny.make_hf_folder(folder)
    for f in ("tokenizer.json", "vocab.txt"):
        (folder / f).unlink(missing_ok=True)
    target = secret / {"tokenizer_file": "tokenizer.json", "merges_file": "merges.txt"}.get(key, "vocab.txt")
    value = str(target) if how == "absolute" else os.path.relpath(target, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config[key] = [value] if key == "fast_tokenizer_files" else value
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder, "tokenizer_config.json"


def link_pointing_out(folder: Path, secret: Path, what: str) -> tuple[Path, str]:
    tiny.make_hf_folder(folder)
    if what == "tokenizer":
        (folder / "tokenizer.json").unlink()
        (folder / "tokenizer.json").symlink_to(secret / "tokenizer.json")
        return folder, "tokenizer.json"
    if what == "weights":
        (folder / "model.safetensors").unlink()
        (folder / "model.safetensors").symlink_to(secret / "secret-model.safetensors")
        return folder, "model.safetensors"
    (folder / "extra").symlink_to(secret, target_is_directory=True)  # a linked folder
    return folder, "extra"


INDEX_CASES = [(st, how) for st in (True, False) for how in ("absolute", "dotdot")]
TOKENIZER_CASES = [
    ("tokenizer_file", "absolute"),
    ("tokenizer_file", "dotdot"),
    ("vocab_file", "absolute"),
    ("vocab_file", "dotdot"),
    ("merges_file", "absolute"),
    ("vocab", "absolute"),
    ("vocab", "dotdot"),
    ("fast_tokenizer_files", "dotdot"),
]
LINK_CASES = ["tokenizer", "weights", "folder"]


def hostile(kind: str, arg, how: str | None, folder: Path, secret: Path) -> tuple[Path, str, str]:
    """(upload folder, file at fault, key at fault) for one hostile case."""
    if kind == "index":
        up, name = index_pointing_out(folder, secret, arg, how)
        return up, name, "weight_map"
    if kind == "tokenizer":
        up, name = tokenizer_key_pointing_out(folder, secret, arg, how)
        return up, name, arg
    up, name = link_pointing_out(folder, secret, arg)
    return up, name, "link"


ALL_CASES = (
    [pytest.param("index", st, how, id=f"index-{'safetensors' if st else 'bin'}-{how}") for st, how in INDEX_CASES]
    + [pytest.param("tokenizer", key, how, id=f"{key}-{how}") for key, how in TOKENIZER_CASES]
    + [pytest.param("link", what, None, id=f"link-{what}") for what in LINK_CASES]
)


def spec(path, **kw) -> LoadDefaults:
    return LoadDefaults(**kw)  # the loader options alone (a ConvertSpec is one too)


def zip_dir(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f"{folder.name}/{f.relative_to(folder).as_posix()}")
    return dest


def assert_names(err: str, name: str, key: str) -> None:
    assert name in err and "refused" in err, err
    assert (key in err) if key != "link" else ("is a link to a path outside" in err), err
    assert "Traceback" not in err and "unexpected" not in err.lower(), err


# ----------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("kind,arg,how", ALL_CASES)
def test_hostile_folder_is_refused_naming_file_and_key(tmp_path, secret, kind, arg, how):
    up, name, key = hostile(kind, arg, how, tmp_path / "up", secret)
    with pytest.raises(UnsafePathError) as e:
        sources.load(up, spec(up))
    assert isinstance(e.value, StudioError) and e.value.exit_code == 2
    assert_names(str(e.value), name, key)


@pytest.mark.parametrize("kind,arg,how", [c for c in ALL_CASES if c.values[0] != "link"])
def test_hostile_zip_is_refused_naming_file_and_key(tmp_path, secret, private_tmp, kind, arg, how):
    up, name, key = hostile(kind, arg, how, tmp_path / "up", secret)
    if how == "dotdot":  # once unpacked, "../" climbs out of the unpack folder instead
        for f in up.glob("*.json"):
            text = f.read_text()
            f.write_text(text.replace('"../', '"../../../../'))
    upload = zip_dir(up, tmp_path / "up.zip")
    shutil.rmtree(up)
    with pytest.raises(UnsafePathError) as e:
        sources.load(upload, spec(upload))
    assert_names(str(e.value), name, key)
    assert not list(private_tmp.iterdir()), "the unpacked upload was left behind"


@pytest.mark.parametrize("kind,arg,how", [ALL_CASES[0], ALL_CASES[5], ALL_CASES[-3]])
def test_hostile_upload_through_the_cli_exits_2(tmp_path, secret, capsys, kind, arg, how):
    up, name, key = hostile(kind, arg, how, tmp_path / "up", secret)
    sample = tiny.write_sample(tmp_path / "s.csv")
    out = tmp_path / "job" / "out"
    assert cli_main(["convert", str(up), "--data", str(sample), "--out", str(out)]) == 2
    assert_names(capsys.readouterr().err, name, key)
    assert not out.exists() and not list(tmp_path.glob("job/.out.partial-*"))


def test_hostile_zip_through_the_cli_exits_2(tmp_path, secret, capsys):
    up, name, _ = hostile("index", True, "absolute", tmp_path / "up", secret)
    upload = zip_dir(up, tmp_path / "up.zip")
    sample = tiny.write_sample(tmp_path / "s.csv")
    out = tmp_path / "job" / "out"
    assert cli_main(["convert", str(upload), "--data", str(sample), "--out", str(out)]) == 2
    assert_names(capsys.readouterr().err, name, "weight_map")
    assert not out.exists()


def test_hostile_zip_through_the_app_job_names_file_and_key(tmp_path, secret):
    """The web studio's job process (what the page shows) gets the same refusal as the CLI."""
    import studio.app.worker  # noqa: F401 - registers the app's tasks
    from studio.jobs.isolate import run_job

    up, name, key = hostile("tokenizer", "vocab", "absolute", tmp_path / "up", secret)
    upload = zip_dir(up, tmp_path / "up.zip")
    prev = run_job(
        "preview", {"checkpoint": str(upload), "data": str(tiny.write_sample(tmp_path / "s.csv")), "spec": None}
    )
    assert prev["model"] is None and prev["columns"]
    assert_names(prev["model_error"], name, key)


def test_state_dict_file_with_a_hostile_tokenizer_beside_it_or_in_config(tmp_path, secret):
    """The folder of a single weights file, and a --config folder, are checked the same way."""
    import transformers as tf

    folder = tmp_path / "ckpt"
    folder.mkdir()
    config = tiny.make_config("bert")
    torch.save(tf.AutoModel.from_config(config).state_dict(), folder / "weights.pt")
    config.save_pretrained(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({"vocab_file": str(secret / "vocab.txt")}))
    with pytest.raises(UnsafePathError, match=r"weights\.pt: tokenizer_config\.json names .* under 'vocab_file'"):
        sources.load(folder / "weights.pt", spec(folder / "weights.pt"))

    given = tmp_path / "cfg"
    config.save_pretrained(str(given))
    (given / "tokenizer_config.json").write_text(json.dumps({"tokenizer_file": str(secret / "tokenizer.json")}))
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(UnsafePathError, match=r"--config .*cfg: tokenizer_config\.json names .* 'tokenizer_file'"):
        sources.load(folder / "weights.pt", spec(folder / "weights.pt", config=str(given)))


def test_keys_hidden_in_duplicates_nesting_and_named_files_are_found(tmp_path, secret):
    up = tiny.make_hf_folder(tmp_path / "up")
    tok = up / "tokenizer_config.json"
    base = json.loads(tok.read_text())
    outside = json.dumps(str(secret / "vocab.txt"))
    # a duplicate key: the first is harmless, the second points out
    tok.write_text(json.dumps(base)[:-1] + f', "vocab_file": "vocab.txt", "vocab_file": {outside}}}')
    with pytest.raises(UnsafePathError, match="'vocab_file'"):
        sources.load(up, spec(up))
    # the tokenizers library reads a string `model.vocab` in tokenizer.json as a file name
    tok.write_text(json.dumps(base))
    tj = json.loads((up / "tokenizer.json").read_text())
    tj["model"]["vocab"] = str(secret / "vocab.txt")
    (up / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(UnsafePathError, match=r"tokenizer\.json names .* under 'model\.vocab'"):
        sources.load(up, spec(up))
    # a file named by a key is read too: what it names is checked (here: not a .json name)
    tj["model"]["vocab"] = {"[UNK]": 0}
    (up / "tokenizer.json").unlink()
    (up / "tok.data").write_text(json.dumps({**tj, "model": {"type": "WordPiece", "vocab": str(secret / "vocab.txt")}}))
    tok.write_text(json.dumps({**base, "tokenizer_file": "tok.data"}))
    with pytest.raises(UnsafePathError, match=r"tok\.data names .* under 'model\.vocab'"):
        sources.load(up, spec(up))
    # the loaders join a name to the model's folder, not to the folder of the file that holds it
    (up / "sub").mkdir()
    (up / "sub" / "tok.data").write_text(json.dumps({**tj, "model": {"type": "WordPiece", "vocab": "../up2.txt"}}))
    (up / "up2.txt").write_text("harmless: inside, seen from sub/")
    tok.write_text(json.dumps({**base, "tokenizer_file": "sub/tok.data"}))
    with pytest.raises(UnsafePathError, match=r"sub/tok\.data names '\.\./up2\.txt' under 'model\.vocab'"):
        sources.load(up, spec(up))


def test_a_name_read_relative_to_the_working_directory_is_refused(tmp_path, secret, monkeypatch):
    """A loader may open a value as given: inside the upload joined to its folder is not enough when the
    same name is a file outside it relative to the working directory."""
    up = tiny.make_hf_folder(tmp_path / "up")
    config = json.loads((up / "tokenizer_config.json").read_text())
    (up / "tokenizer_config.json").write_text(json.dumps({**config, "vocab": "vocab.txt"}))
    monkeypatch.chdir(secret)  # holds a vocab.txt; the upload does not
    with pytest.raises(UnsafePathError, match="relative to the working directory"):
        sources.load(up, spec(up))


def test_link_loop_and_nul_byte_are_refused(tmp_path):
    up = tiny.make_hf_folder(tmp_path / "up")
    (up / "a").symlink_to(up / "b")
    (up / "b").symlink_to(up / "a")
    with pytest.raises(UnsafePathError, match="a is a link"):
        sources.load(up, spec(up))
    (up / "a").unlink()
    (up / "b").unlink()
    config = json.loads((up / "tokenizer_config.json").read_text())
    (up / "tokenizer_config.json").write_text(json.dumps({**config, "vocab_file": "vocab.txt\u0000/../../x"}))
    with pytest.raises(UnsafePathError, match="vocab_file"):
        sources.load(up, spec(up))


# ----------------------------------------------------------------------------------------- not over-strict


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "bin"])
def test_benign_sharded_folder_with_links_and_keys_inside_still_loads(tmp_path, safetensors):
    up = sharded_upload(tmp_path / "up", safetensors)
    config = json.loads((up / "tokenizer_config.json").read_text())
    (up / "tokenizer_config.json").write_text(
        json.dumps({**config, "tokenizer_file": "tokenizer.json", "special_tokens_map_file": None})
    )
    (up / "sub").mkdir()
    (up / "sub" / "vocab-link.txt").symlink_to(up / "tokenizer.json")  # a link inside the folder is fine
    loaded = sources.load(up, spec(up))
    assert loaded.kind == "hf" and loaded.tokenizer is not None
    assert loaded.tokenizer("the product").input_ids[1] == tiny.SPECIALS.__len__() + tiny.WORDS.index("the")
    zipped = sources.load(zip_dir(up, tmp_path / "up.zip"), spec(tmp_path / "up.zip"))
    assert zipped.kind == "hf"


def test_stale_saver_paths_that_name_nothing_are_no_way_out(tmp_path, secret):
    """Old transformers wrote the saver's own absolute paths into tokenizer_config.json; on this machine they
    name nothing, so nothing outside can be read through them: such a folder loads. The same key naming a
    file that does exist outside is still refused."""
    up = sharded_upload(tmp_path / "up", True)
    config = json.loads((up / "tokenizer_config.json").read_text())
    stale = {
        **config,
        "special_tokens_map_file": "/home/someone/.cache/huggingface/special_tokens_map.json",
        "tokenizer_file": "/root/.cache/huggingface/transformers/0d5c2a.tokenizer.json",
    }
    (up / "tokenizer_config.json").write_text(json.dumps(stale))
    assert sources.load(up, spec(up)).tokenizer is not None
    (up / "tokenizer_config.json").write_text(
        json.dumps({**stale, "special_tokens_map_file": str(secret / "vocab.txt")})
    )
    with pytest.raises(UnsafePathError, match="special_tokens_map_file"):
        sources.load(up, spec(up))


# ----------------------------------------------------------------------------------------- audit: the strong test


def _allowed_roots(up: Path, job: Path, sample: Path, scratch: Path) -> list[Path]:
    """Where a conversion may open files: the upload, its job folder, the sample, the scratch space, the code
    (the Python installation and its site-packages, this checkout), the kernel's virtual files and the
    system's time-zone / OS-release data. Nothing else: not the folder beside the upload, not the home folder."""
    import site

    code = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        site.getusersitepackages(),
        *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")),
        str(REPO),
    }
    system = {
        "/proc",
        "/sys",
        "/dev",
        "/etc/localtime",
        "/usr/share/zoneinfo",
        "/etc/os-release",
        "/usr/lib/os-release",
    }
    return [Path(p).resolve() for p in (up, job, sample, scratch, *code, *system)]


def _outside_allowed(opened: list[str], allowed: list[Path]) -> list[str]:
    bad = []
    for p in opened:
        real = Path(p).resolve()
        if not any(real == a or a in real.parents for a in allowed):
            bad.append(p)
    return sorted(set(bad))


def _contains(folder: Path, needles: list[bytes]) -> list[str]:
    if not folder.exists():
        return []
    return [str(f) for f in folder.rglob("*") if f.is_file() and any(n in f.read_bytes() for n in needles)]


def _needles(secret: Path) -> list[bytes]:
    """Bytes only the secret files hold: the secret word, and a slice of each secret model's largest tensor."""
    from safetensors.torch import load_file

    out = [SECRET_WORD.encode()]
    for f in secret.glob("secret-*"):
        state = load_file(str(f)) if f.suffix == ".safetensors" else torch.load(f, weights_only=True)
        biggest = max(state.values(), key=lambda t: t.numel())
        out.append(biggest.flatten()[-16:].numpy().tobytes())  # the last row (the first may be padding zeros)
    return out


@pytest.mark.parametrize("kind,arg,how", ALL_CASES + [pytest.param("benign", None, None, id="benign-sharded")])
def test_audit_no_open_outside_the_upload_during_convert(tmp_path, secret, private_tmp, kind, arg, how):
    if kind == "benign":
        up = sharded_upload(tmp_path / "up")
    else:
        up, _, _ = hostile(kind, arg, how, tmp_path / "up", secret)
    sample = tiny.write_sample(tmp_path / "s.csv")
    job = tmp_path / "job"
    job.mkdir()
    out = job / "out"
    allowed = _allowed_roots(up, job, sample, private_tmp)
    assert not any(a == secret or a in secret.parents for a in allowed)
    with watched(secret) as os_opens, recorded() as opened:
        try:
            report = studio.convert(
                checkpoint=str(up), data=str(sample), out=str(out), exporter="torchscript", latency_budget_s=0.05
            )
            error = None
        except StudioError as e:
            error = e
    secret_opens = [p for p in opened if Path(p).resolve().parent == secret.resolve()]
    assert not secret_opens, f"the outside secret was opened: {secret_opens}"
    if os_opens is not None:
        assert not os_opens, f"the outside secret was opened (inotify): {os_opens}"
    assert not _outside_allowed(opened, allowed), "opened outside the allow-list"
    assert not _contains(job, _needles(secret)) and not _contains(private_tmp, _needles(secret))
    if kind == "benign":
        assert error is None and (out / "model.onnx").is_file() and report.ok, error
        assert opened and any(Path(p).resolve().parent == up.resolve() for p in opened)  # the recorder works
    else:
        assert isinstance(error, UnsafePathError), error
        assert not out.exists()
