"""A corpus of malformed and hostile inputs, walked through the CLI: every one must end in one message
naming the file at fault and exit code 2 — never a traceback, never "unexpected" (the CLI's word for a
bug of ours), never exit 0 / 1 / a crash. Each case is built here; a new hostile input found in the wild
belongs in CORPUS.

Kept out on purpose (other parts of issue 10 make them pass; add them here once they do): index files /
tokenizer configs whose paths point outside the upload (containment), and checkpoints whose config declares
absurd sizes, pickle and zip bombs (exhaustion).
"""

from __future__ import annotations

import collections
import json
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tiny
import torch

from studio.cli.commands import main as cli_main

# ----------------------------------------------------------------------------------------- helpers


def _copy_hf(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _zip_folder(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, "model/" + f.relative_to(folder).as_posix())
    return dest


def _state_dict(path: Path) -> Path:
    torch.save({"layer.weight": torch.randn(8, 8), "layer.bias": torch.randn(8)}, path)
    return path


class _RebuildAs:
    """Pickles as torch's tensor-subclass rebuild, naming a class that is no tensor (an allowed global)."""

    def __init__(self, cls):
        self.cls = cls

    def __reduce_ex__(self, protocol):
        class Sub(torch.Tensor):
            pass

        func, args = torch.zeros(2).as_subclass(Sub).__reduce_ex__(protocol)
        return func, (args[0], self.cls, args[2], args[3])


# ----------------------------------------------------------------------------------------- checkpoints
# each builder: (folder to build in, a tiny HF model folder, a good sample) -> CLI argv


def ckpt_truncated(d, hf, sample):
    good = _state_dict(d / "good.pt").read_bytes()
    (d / "model.pt").write_bytes(good[: len(good) // 2])
    return ["convert", d / "model.pt", "--data", sample]


def ckpt_random_bytes(d, hf, sample):
    (d / "model.pt").write_bytes(bytes(range(256)) * 64)
    return ["convert", d / "model.pt", "--data", sample]


def ckpt_empty(d, hf, sample):
    (d / "model.bin").write_bytes(b"")
    return ["convert", d / "model.bin", "--data", sample]


def ckpt_tensor_subclass_rebuild(d, hf, sample):  # was "unexpected TypeError"
    torch.save({"w": _RebuildAs(collections.OrderedDict)}, d / "model.pt")
    return ["convert", d / "model.pt", "--data", sample]


def ckpt_pickle_names_a_function(d, hf, sample):
    import pickle

    (d / "model.pt").write_bytes(pickle.dumps(shutil.rmtree, protocol=4))  # a global the loader must refuse
    return ["convert", d / "model.pt", "--data", sample]


def ckpt_safetensors_absurd_header(d, hf, sample):
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 10**15) + b'{"a": 1}')
    return ["convert", d / "model.safetensors", "--data", sample]


def ckpt_config_not_json(d, hf, sample):
    m = _copy_hf(hf, d / "m")
    (m / "config.json").write_text("{not json")
    return ["convert", m, "--data", sample]


def ckpt_config_unknown_type(d, hf, sample):
    m = _copy_hf(hf, d / "m")
    _edit_json(m / "config.json", lambda c: c.update(model_type="no-such-model", architectures=["NoSuch"]))
    return ["convert", m, "--data", sample]


def ckpt_tokenizer_not_json(d, hf, sample):
    m = _copy_hf(hf, d / "m")
    (m / "tokenizer.json").write_text("{broken")
    return ["convert", m, "--data", sample]


def ckpt_tokenizer_regex_panics(d, hf, sample):  # was a traceback of pyo3_runtime.PanicException, exit 1
    m = _copy_hf(hf, d / "m")
    _edit_json(
        m / "tokenizer.json",
        lambda t: t.update(
            pre_tokenizer={
                "type": "Split",
                "pattern": {"Regex": "(x+x+)+(y|$z)"},
                "behavior": "Isolated",
                "invert": False,
            }
        ),
    )
    _edit_json(m / "tokenizer_config.json", lambda c: c.update(tokenizer_class="PreTrainedTokenizerFast"))
    rows = d / "rows.csv"
    rows.write_text("review,label\n" + "x" * 41 + ",a\ngood,b\n")
    return ["convert", m, "--data", rows]


def ckpt_vocab_past_embeddings(d, hf, sample):  # was "unexpected IndexError"
    m = _copy_hf(hf, d / "m")
    _edit_json(m / "tokenizer.json", lambda t: t["model"]["vocab"].update(the=5000))
    return ["convert", m, "--data", sample]


def ckpt_padding_token_past_embeddings(d, hf, sample):  # the shape probes pad with it
    m = _copy_hf(hf, d / "m")
    _edit_json(m / "tokenizer.json", lambda t: t["model"]["vocab"].update({"[PAD]": 7000}))
    rows = d / "rows.csv"
    rows.write_text("review,label\nthe product,a\ngood box,b\n")  # same length: no padding in the batch
    return ["convert", m, "--data", rows]


def ckpt_pickle_unknown_codec(d, hf, sample):  # was "unexpected LookupError"
    import codecs

    class Encode:
        def __reduce__(self):
            return codecs.encode, ("abc", "no-such-codec")

    torch.save({"w": Encode()}, d / "model.pt")
    return ["convert", d / "model.pt", "--data", sample]


def zip_header_names_another_file(d, hf, sample):  # was "unexpected BadZipFile"
    z = _zip_folder(hf, d / "model.zip")
    data = bytearray(z.read_bytes())
    i = data.index(b"model/config.json")  # the first occurrence is the local header
    data[i : i + 17] = b"model/cOnfig.json"
    z.write_bytes(bytes(data))
    return ["convert", z, "--data", sample]


def zip_bad_crc(d, hf, sample):  # was "unexpected BadZipFile"
    z = _zip_folder(hf, d / "model.zip")
    data = bytearray(z.read_bytes())
    i = data.index(b'"architectures"')  # inside config.json's stored bytes
    data[i + 1] ^= 0x20
    z.write_bytes(bytes(data))
    return ["convert", z, "--data", sample]


def zip_truncated(d, hf, sample):
    z = _zip_folder(hf, d / "model.zip")
    z.write_bytes(z.read_bytes()[:4000])
    return ["convert", z, "--data", sample]


def zip_member_escapes(d, hf, sample):
    z = d / "model.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("model/config.json", "{}")
        zf.writestr("../escaped.txt", "owned")
    return ["convert", z, "--data", sample]


def zip_symlink_member(d, hf, sample):
    import stat

    z = d / "model.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("model/config.json", "{}")
        info = zipfile.ZipInfo("model/vocab.txt")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return ["convert", z, "--data", sample]


def zip_inside_zip(d, hf, sample):
    z = d / "model.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("model/inner.zip", b"PK\x05\x06" + b"\0" * 18)
    return ["convert", z, "--data", sample]


# ----------------------------------------------------------------------------------------- samples
# read by `studio roles` (the sample alone) unless a case needs the model


def _roles(path: Path) -> list:
    return ["roles", path]


def sample_200mb(d, hf, sample):  # sparse: 200 MB on paper, a few KB on disk
    p = d / "big.csv"
    with open(p, "wb") as f:
        f.write(b"review,label\ngood,1\n")
        f.seek(200 * 1024**2)
        f.write(b"bad,0\n")
    return _roles(p)


def sample_million_columns(d, hf, sample):
    p = d / "wide.csv"
    p.write_text(",".join(f"c{i}" for i in range(1_000_000)) + "\n" + ",".join(["1"] * 1_000_000) + "\n")
    return _roles(p)


def sample_million_fields_in_a_row(d, hf, sample):
    p = d / "wide_row.csv"
    p.write_text("a,b\n" + ",".join(["1"] * 1_000_000) + "\n")
    return _roles(p)


def sample_two_million_cells(d, hf, sample):  # typing them one by one took minutes
    p = d / "cells.csv"
    p.write_text(",".join(f"c{i}" for i in range(2000)) + "\n" + (",".join(["1"] * 2000) + "\n") * 1000)
    return _roles(p)


def sample_json_200k_keys(d, hf, sample):
    p = d / "keys.json"
    p.write_text(json.dumps({f"k{i}": i for i in range(200_000)}))
    return _roles(p)


def sample_json_nested_100k(d, hf, sample):  # was "unexpected RecursionError"
    p = d / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    return _roles(p)


def sample_jsonl_nested_100k(d, hf, sample):
    p = d / "deep.jsonl"
    p.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    return _roles(p)


def sample_long_cell(d, hf, sample):
    p = d / "long.csv"
    p.write_text("review,label\n" + "word " * 400_000 + ",1\n")
    return _roles(p)


def sample_too_many_rows(d, hf, sample):
    p = d / "rows.jsonl"
    p.write_text('{"review": "good", "label": 1}\n' * 10_001)
    return _roles(p)


def sample_binary(d, hf, sample):
    p = d / "sheet.csv"
    p.write_bytes(b"PK\x03\x04\x00\x00" + bytes(range(256)) * 8)
    return _roles(p)


def sample_empty(d, hf, sample):
    p = d / "empty.csv"
    p.write_text("\n\n")
    return _roles(p)


def sample_unsupported_suffix(d, hf, sample):
    p = d / "rows.xlsx"
    p.write_text("a,b\n1,2\n")
    return _roles(p)


def sample_duplicate_columns(d, hf, sample):
    p = d / "dupes.csv"
    p.write_text(",".join([f"c{i}" for i in range(5000)] + ["c7"]) + "\n" + ",".join(["1"] * 5001) + "\n")
    return _roles(p)


def sample_invalid_json(d, hf, sample):
    p = d / "bad.json"
    p.write_text('[{"a": 1}, {"a": ]')
    return _roles(p)


def sample_ragged_csv(d, hf, sample):
    p = d / "ragged.csv"
    p.write_text('a,b\n1,2\n3,4,5,6\n"unclosed,7\n')
    return _roles(p)


def sample_json_scalar(d, hf, sample):
    p = d / "scalar.json"
    p.write_text("42")
    return _roles(p)


def convert_sample_json_200k_keys(d, hf, sample):  # the same limits in convert
    p = d / "keys.json"
    p.write_text(json.dumps([{f"k{i}": i for i in range(200_000)}]))
    return ["convert", hf, "--data", p]


def convert_role_for_missing_column(d, hf, sample):
    return ["convert", hf, "--data", sample, "--role", "\x1b[2Jnope=text"]


def convert_bad_sample_limits_option(d, hf, sample):
    return ["convert", hf, "--data", sample, "--sample-limits", "rows=lots"]


# ----------------------------------------------------------------------------------------- ONNX files


def onnx_garbage(d, hf, sample):
    (d / "model.onnx").write_bytes(bytes(range(256)) * 16)
    return ["inspect", d / "model.onnx"]


def onnx_empty(d, hf, sample):
    (d / "model.onnx").write_bytes(b"")
    return ["inspect", d / "model.onnx"]


def onnx_truncated(d, hf, sample):
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [256], [0.5] * 256)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256])],
        initializer=[w],
    )
    data = helper.make_model(graph).SerializeToString()
    (d / "model.onnx").write_bytes(data[: len(data) // 2])
    return ["inspect", d / "model.onnx"]


CORPUS = [
    ckpt_truncated,
    ckpt_random_bytes,
    ckpt_empty,
    ckpt_tensor_subclass_rebuild,
    ckpt_pickle_names_a_function,
    ckpt_safetensors_absurd_header,
    ckpt_config_not_json,
    ckpt_config_unknown_type,
    ckpt_tokenizer_not_json,
    ckpt_tokenizer_regex_panics,
    ckpt_vocab_past_embeddings,
    ckpt_padding_token_past_embeddings,
    ckpt_pickle_unknown_codec,
    zip_header_names_another_file,
    zip_bad_crc,
    zip_truncated,
    zip_member_escapes,
    zip_symlink_member,
    zip_inside_zip,
    sample_200mb,
    sample_million_columns,
    sample_two_million_cells,
    sample_million_fields_in_a_row,
    sample_json_200k_keys,
    sample_json_nested_100k,
    sample_jsonl_nested_100k,
    sample_long_cell,
    sample_too_many_rows,
    sample_binary,
    sample_empty,
    sample_unsupported_suffix,
    sample_duplicate_columns,
    sample_invalid_json,
    sample_ragged_csv,
    sample_json_scalar,
    convert_sample_json_200k_keys,
    convert_role_for_missing_column,
    convert_bad_sample_limits_option,
    onnx_garbage,
    onnx_empty,
    onnx_truncated,
]

# the file each case's message must name (the upload at fault)
NAMES = {
    "ckpt_tokenizer_regex_panics": "rows.csv",
    "ckpt_padding_token_past_embeddings": "m",
    "convert_sample_json_200k_keys": "keys.json",
    "convert_role_for_missing_column": "nope",
    "convert_bad_sample_limits_option": "--sample-limits",
}


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> Path:
    return tiny.make_hf_folder(tmp_path_factory.mktemp("corpus-hf") / "bert")


def _check(rc: int, out: str, err: str, argv: list, name: str) -> None:
    text = out + err
    assert "Traceback" not in text, text[-3000:]
    assert "unexpected" not in text.lower(), text[-3000:]
    assert rc == 2, f"exit {rc}: {text[-3000:]}"
    assert err.startswith("error: "), err[-3000:]
    target = NAMES.get(name) or Path(str(argv[1])).name
    assert target in err, err[-3000:]
    assert "\x1b" not in text  # nothing from an upload reaches the terminal raw


@pytest.mark.parametrize("build", CORPUS, ids=lambda f: f.__name__)
def test_hostile_input_exits_2_with_one_message(build, hf, tmp_path, capsys, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where zips are unpacked: watched below
    sample = tiny.write_sample(tmp_path / "sample.csv")
    argv = [str(a) for a in build(tmp_path, hf, sample)]
    if argv[0] == "convert":
        argv += ["--out", str(tmp_path / "out"), "--quiet", "--exporter", "torchscript", "--latency-budget", "0.01"]
    rc = cli_main(argv)
    out, err = capsys.readouterr()
    _check(rc, out, err, argv, build.__name__)
    assert not (tmp_path / "out").exists(), "a refused conversion wrote its output folder"
    assert not list(tmp_path.glob(".out.partial-*"))
    assert not list(scratch.glob("studio-*")), "an unpacked upload was left behind"
    assert not (tmp_path.parent / "escaped.txt").exists()


SUBPROCESS = [ckpt_tokenizer_regex_panics, zip_bad_crc, sample_json_nested_100k, ckpt_tensor_subclass_rebuild]


@pytest.mark.parametrize("build", SUBPROCESS, ids=lambda f: f.__name__)
def test_hostile_input_through_python_m_studio(build, hf, tmp_path):
    """The real process: nothing escapes main() (a Rust panic is a BaseException), exit 2."""
    import os

    sample = tiny.write_sample(tmp_path / "sample.csv")
    argv = [str(a) for a in build(tmp_path, hf, sample)]
    if argv[0] == "convert":
        argv += ["--out", str(tmp_path / "out"), "--quiet", "--exporter", "torchscript"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run(
        [sys.executable, "-m", "studio", *argv], capture_output=True, text=True, timeout=600, check=False, env=env
    )
    err = run.stderr
    # a Rust panic prints its own line on stderr before Python sees the exception; the studio's message follows
    err = err[err.index("error: ") :] if "error: " in err else err
    _check(run.returncode, run.stdout, err, argv, build.__name__)


# ----------------------------------------------------------------------------------------- messages


def test_the_messages_name_the_limit_and_the_option(hf, tmp_path, capsys):
    for build, limit in (
        (sample_200mb, "size="),
        (sample_million_columns, "columns="),
        (sample_json_200k_keys, "keys="),
        (sample_json_nested_100k, "depth="),
        (sample_long_cell, "cell="),
        (sample_too_many_rows, "rows="),
        (sample_two_million_cells, "cells="),
    ):
        d = tmp_path / build.__name__
        d.mkdir()
        assert cli_main([str(a) for a in build(d, hf, None)]) == 2
        err = capsys.readouterr().err
        assert f"past the sample limit {limit}" in err and f"--sample-limits {limit}" in err, err


def test_vocabulary_past_the_embedding_table_names_the_token(hf, tmp_path, capsys):
    argv = ckpt_vocab_past_embeddings(tmp_path, hf, tiny.write_sample(tmp_path / "s.csv"))
    assert cli_main([str(a) for a in argv] + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "'the' (id 5,000)" in err and "embedding table (120 rows" in err and "row 1" in err, err


def test_tokenizer_panic_is_named(hf, tmp_path, capsys):
    argv = ckpt_tokenizer_regex_panics(tmp_path, hf, None)
    assert cli_main([str(a) for a in argv] + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "the tokenizer crashed (Rust panic)" in err and "retry-limit-in-match" in err, err


def test_zip_forgery_is_named(hf, tmp_path, capsys):
    for build, words in ((zip_header_names_another_file, "differ"), (zip_bad_crc, "Bad CRC-32")):
        d = tmp_path / build.__name__
        d.mkdir()
        argv = build(d, hf, tiny.write_sample(d / "s.csv"))
        assert cli_main([str(a) for a in argv] + ["--out", str(d / "out")]) == 2
        err = capsys.readouterr().err
        assert "model.zip: member 'model/config.json' cannot be read" in err and words in err, err


# ----------------------------------------------------------------------------------------- names printed raw


ESC = "\x1b[2J\x1b[H"  # clear the screen, cursor home


def test_shown_escapes_what_could_move_the_terminal():
    from studio.cli.text import shown

    assert shown(f"{ESC}col") == "\\x1b[2J\\x1b[Hcol"
    assert shown("a\nb\rc\td\x07") == "a\\nb\\rc\\td\\x07"
    assert shown("x\u202ey\x9b") == "x\\u202ey\\x9b"  # right-to-left override, 8-bit CSI
    assert shown("prix unitaire é 日本 ≥ 1") == "prix unitaire é 日本 ≥ 1"
    assert shown("line 1\nline \x1b2", newlines=True) == "line 1\nline \\x1b2"


def test_roles_escapes_column_names_and_values(tmp_path, capsys):
    p = tmp_path / "s.csv"
    p.write_text(f'"{ESC}review","na\nme",price\n"{ESC}the product arrived late and broken\x07",a,1\nok fine,b,2\n')
    assert cli_main(["roles", str(p)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J\\x1b[Hreview" in out and "na\\nme" in out
    assert len(out.strip().splitlines()) == 4  # header + 3 columns: no name breaks a line


def test_inspect_cannot_forge_the_checker_line(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [f"x{ESC}"], ["y"])],
        "g",
        [helper.make_tensor_value_info(f"x{ESC}", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, producer_name=f"evil{ESC}")
    helper.set_model_props(model, {"note": "\x1b[1A\x1b[2K\rchecker  PASS\n", f"k{ESC}": "v"})
    model.ir_version = 0  # the real checker fails on this
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    assert cli_main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    checker = [line for line in out.splitlines() if line.startswith("checker")]
    assert len(checker) == 1 and checker[0].startswith("checker  FAIL"), out
    assert "note = \\x1b[1A\\x1b[2K\\rchecker  PASS\\n" in out


def test_convert_summary_escapes_names(hf, tmp_path, capsys):
    p = tmp_path / "s.csv"
    p.write_text(
        f'"order{ESC}id",review\n'
        "A-1,the product arrived late and the box was damaged\n"
        "A-2,great quality and fast i would buy again\n"
    )
    rc = cli_main(
        [
            "convert",
            str(hf),
            "--data",
            str(p),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--exporter",
            "torchscript",
            "--latency-budget",
            "0.01",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "\x1b" not in out and "\x1b" not in err
    assert "order\\x1b[2J\\x1b[Hid=ignore" in out


# ----------------------------------------------------------------------------------------- server paths


def test_app_messages_drop_the_unpack_folder(hf, tmp_path, monkeypatch):
    """A zipped upload is unpacked in a temporary folder; errors about its files must not show where."""
    import tempfile

    from studio import sources
    from studio.app.handlers import scrub_paths
    from studio.errors import CheckpointError

    scratch = tmp_path / "server temp"  # a space in the path too
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    m = _copy_hf(hf, tmp_path / "m")
    (m / "tokenizer.json").write_text("{broken")
    upload = tmp_path / "session" / "upload.zip"
    upload.parent.mkdir()
    _zip_folder(m, upload)
    with pytest.raises(CheckpointError) as e:
        sources.load(upload)
    raw = str(e.value)
    assert "studio-ckpt-" in raw  # the unscrubbed message does name the unpack folder
    shown = scrub_paths(raw, [upload])
    assert "studio-ckpt-" not in shown and str(tmp_path) not in shown and "server temp" not in shown
    assert "The tokenizer files in model could not be loaded" in shown
    elsewhere = scrub_paths(
        "config.json in /srv/jobs/j1/studio-ckpt-a1b2/model/config.json: bad, see '/srv/jobs/j1/studio-ckpt-a1b2'", []
    )
    assert elsewhere == "config.json in model/config.json: bad, see '(the unpacked upload)'"


def test_a_rust_panic_outside_tokenizing_still_ends_in_exit_2(tmp_path, capsys, monkeypatch):
    """pyo3's PanicException derives from BaseException: main() must not let it out as a traceback."""
    from studio.inputs import sample

    class PanicException(BaseException):  # what pyo3_runtime.PanicException looks like from Python
        pass

    def panics(*a, **k):
        raise PanicException("called `Option::unwrap()` on a `None` value")

    monkeypatch.setattr(sample, "read_sample", panics)
    assert cli_main(["roles", str(tiny.write_sample(tmp_path / "s.csv"))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected PanicException: called `Option::unwrap()`") and "Traceback" not in err
