"""Hostile pickles inside weights-only torch.save zips (issue 25, section 5): Python 2 names for the
allow-listed callables (`__builtin__.bytearray` is `builtins.bytearray` to the unpickler), every callable
that takes a size, and work multiplied by shared references. Each payload is a real torch.save zip whose
data.pkl the test replaces with a hand-made pickle; each must be refused with a message naming the file and
the limit, within seconds, with the process's memory barely grown, and nothing in it run."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import tiny
import torch

from studio import sources
from studio.cli.commands import main as cli_main
from studio.errors import CheckpointError, StudioError, UnsafeCheckpointError
from studio.sources import budget, pickle_scan
from studio.sources.base import LoadDefaults

REPO = Path(__file__).resolve().parents[1]
MARKER = "studio-pickle-ran"  # a payload that could run code would create a file of this name


def _long(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _put(i: int) -> bytes:
    return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)


def _get(i: int) -> bytes:
    return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)


def _glob(module: str, name: str) -> bytes:  # the GLOBAL opcode: protocol 0's form, the one torch reads
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _torch_zip(path: Path, pkl: bytes, base: object = None) -> Path:
    """A torch.save zip of `base` (its records as torch writes them) whose data.pkl is `pkl`."""
    torch.save({} if base is None else base, path)
    with zipfile.ZipFile(path) as zf:
        records = {m.filename: zf.read(m) for m in zf.infolist()}
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in records.items():
            zf.writestr(name, pkl if name.endswith("/data.pkl") else data)
    return path


def _calls(call: bytes, n: int, proto: bytes = b"\x80\x02", first: bytes = b"") -> bytes:
    """A list of `first` and `n` results of `call` (opcodes that leave one value on the stack each)."""
    return proto + b"](" + first + call * n + b"e."


GB = 10**9
_STORAGE = b"(" + _str("storage") + _glob("torch", "FloatStorage") + _str("0") + _str("cpu") + b"K\x04tQ"


def _payloads(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (the file, a regex its refusal must match)."""
    ba2 = _glob("__builtin__", "bytearray") + _long(GB) + b"\x85R"
    T = tuple(range(9000))
    shared_keys = pickle.dumps({(i, T): None for i in range(100_000)}, protocol=2)
    big = b"}" + _put(0) + b"(" + b"".join(struct.pack("<cI", b"J", i) + b"N" for i in range(100_000)) + b"u"
    od = _glob("collections", "OrderedDict")
    hexed = _glob("_codecs", "encode") + _str("a") + _str("latin1") + b"\x86R" + _put(0)
    for i in range(40):
        hexed += _glob("_codecs", "encode") + _get(i) + _str("hex") + b"\x86R" + _put(i + 1)
    doubling = b")" + _put(0) + b"".join(_get(i) + _get(i) + b"\x86" + _put(i + 1) for i in range(60))
    tensor = _glob("torch._utils", "_rebuild_tensor_v2") + b"(" + _STORAGE + b"K\x00" + _long(GB) + b"\x85K\x01\x85"
    tensor += b"\x89" + od + b")Rt" + b"R"
    legacy = _glob("torch", "FloatTensor") + b")\x81" + b"(" + _STORAGE + b"K\x00" + _long(GB) + b"\x85K\x01\x85tb"
    trampoline = _glob("torch._tensor", "_rebuild_from_type_v2") + b"(" + _glob("__builtin__", "bytearray")
    trampoline += _glob("torch", "Tensor") + _long(GB) + b"\x85}tR"
    run = f"open({str(tmp / MARKER)!r}, 'w')"
    specs = {
        # the case: __builtin__.bytearray(10**9), ten times (6 GB before)
        "py2-bytearray": (_calls(ba2, 10), r"bytearrays of 1,000,000,000 bytes .*__builtin__\.bytearray"),
        "py2-bytearray-proto0": (_calls(ba2, 10, proto=b""), r"bytearrays of 1,000,000,000 bytes"),
        "py2-bytearray-proto4": (_calls(ba2, 10, proto=b"\x80\x04"), r"bytearrays of 1,000,000,000 bytes"),
        "memoized-name": (
            _calls(_get(0) + _long(GB) + b"\x85R", 9, first=_glob("__builtin__", "bytearray") + _put(0)),
            r"bytearrays of 1,000,000,000 bytes",
        ),
        "bytearray-of-str": (
            _calls(
                _glob("__builtin__", "bytearray") + _get(0) + _str("unicode_escape") + b"\x86R",
                2000,
                first=_str("\U0010ffff" * 100_000) + _put(0),
            ),
            r"bytearrays of .* bytes",
        ),
        "codec-chain": (b"\x80\x02" + hexed + b".", r"encoded bytes of .*_codecs\.encode"),
        "tensor-constructor": (_calls(_glob("torch", "FloatTensor") + _long(GB) + b"\x85R", 1), r"tensors of 4,000,0"),
        "tensor-newobj": (_calls(_glob("torch", "Tensor") + _long(GB) + b"\x85\x81", 1), r"tensors of 4,000,000,000"),
        "storage-constructor": (
            _calls(_glob("torch.storage", "UntypedStorage") + _long(10 * GB) + b"\x85R", 1),
            r"storages of 10,000,000,000",
        ),
        "tensor-over-small-storage": (b"\x80\x02" + tensor + b".", r"needs 4,000,000,000 bytes of a storage .* 16"),
        "legacy-set-over-small-storage": (b"\x80\x02" + legacy + b".", r"needs 4,000,000,000 bytes of a storage"),
        "from-type-trampoline": (b"\x80\x02" + trampoline + b".", r"bytearrays of 1,000,000,000 bytes"),
        # work multiplied by shared references
        "shared-tuple-keys": (shared_keys, r"more than [\d,]+ steps"),
        "shared-dict-copies": (
            _calls(od + b"(" + _get(0) + b"tR", 100_000, first=big),
            r"containers of [\d,]+ bytes .*collections\.OrderedDict",
        ),
        "shared-build-state": (
            _calls(od + b")R" + _get(0) + b"b", 100_000, first=big),
            r"more than [\d,]+ steps",
        ),
        "shared-set-members": (
            _calls(_glob("__builtin__", "set") + _get(0) + b"\x85R", 100_000, first=big),
            r"containers of .*__builtin__\.set \(read as builtins\.set\)",
        ),
        "doubling-set-member": (
            b"\x80\x02" + doubling + _glob("__builtin__", "set") + _get(60) + b"\x85\x85R.",
            r"set member\) made of [\d,]+\+? parts",
        ),
        # code: refused by name, never run
        "exec": (b"\x80\x02" + _glob("__builtin__", "exec") + _str(run) + b"\x85R.", r"refers to .*exec"),
        "system": (b"\x80\x02" + _glob("posix", "system") + _str(f"touch {tmp / MARKER}") + b"\x85R.", r"posix"),
        "copy_reg": (
            b"\x80\x02" + _glob("copy_reg", "_reconstructor") + _glob("__builtin__", "object") + b"\x85R.",
            r"copyreg\._reconstructor",
        ),
        "stack-global": (
            b"\x80\x04\x8c\x08builtins\x94\x8c\x04exec\x94" + _get(0) + _get(1) + b"\x93" + _str(run) + b"\x85R.",
            r"builtins\.exec",
        ),
    }
    out = {}
    for name, (pkl, pattern) in specs.items():
        base = {"w": torch.zeros(4)} if "storage" in name else None
        out[name] = (_torch_zip(tmp / f"{name}.pt", pkl, base), pattern)
    return out


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    return _payloads(tmp_path_factory.mktemp("pickles"))


def test_payloads_are_small_files(payloads):
    for name, (path, _) in payloads.items():
        assert path.stat().st_size < 4_000_000, name  # the 3.6 MB of the case at most


@pytest.mark.parametrize(
    "name",
    [
        "py2-bytearray",
        "py2-bytearray-proto0",
        "py2-bytearray-proto4",
        "memoized-name",
        "bytearray-of-str",
        "codec-chain",
        "tensor-constructor",
        "tensor-newobj",
        "storage-constructor",
        "tensor-over-small-storage",
        "legacy-set-over-small-storage",
        "from-type-trampoline",
        "shared-tuple-keys",
        "shared-dict-copies",
        "shared-build-state",
        "shared-set-members",
        "doubling-set-member",
        "exec",
        "system",
        "copy_reg",
        "stack-global",
    ],
)
def test_each_payload_is_refused_by_name_within_seconds(payloads, name):
    path, pattern = payloads[name]
    start = time.monotonic()
    with pytest.raises(CheckpointError) as e:
        sources.load(path, LoadDefaults())
    assert time.monotonic() - start < 10  # seconds on a loaded 2-core machine; minutes (or 6 GB) before
    msg = str(e.value)
    assert str(path) in msg or path.name in msg, msg
    assert __import__("re").search(pattern, msg), msg
    if name in ("exec", "system", "copy_reg", "stack-global"):
        assert isinstance(e.value, UnsafeCheckpointError)
    assert not (path.parent / MARKER).exists()


def test_payloads_keep_a_fresh_process_small(payloads):
    """All the payloads, one after another, in a fresh process: its peak memory grows < 200 MB in all."""
    code = (
        "import json, resource, sys, time\n"
        "from studio import sources\nfrom studio.errors import StudioError\nfrom studio.sources.base import LoadDefaults\n"
        "import torch, transformers\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for p in sys.argv[1:]:\n"
        "    t = time.monotonic()\n"
        "    try:\n        sources.load(p, LoadDefaults()); kind = 'LOADED'\n"
        "    except StudioError as e:\n        kind = type(e).__name__\n"
        "    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024\n"
        "    print(json.dumps([p, kind, round(time.monotonic() - t, 2), grown]))\n"
    )

    def cap_memory():  # should a check regress, the child fails here instead of eating the machine
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (6 * 1024**3, resource.RLIM_INFINITY))

    paths = [str(p) for p, _ in payloads.values()]
    proc = subprocess.run(
        [sys.executable, "-c", code, *paths],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=600,
        preexec_fn=cap_memory,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    assert len(rows) == len(paths), proc.stdout + proc.stderr
    for path, kind, seconds, grown_mb in rows:
        assert kind in ("CheckpointError", "UnsafeCheckpointError"), (path, kind)
        assert seconds < 10, (path, seconds)
        assert grown_mb < 200, (path, grown_mb)
    assert "Traceback" not in proc.stderr


def test_the_cli_exits_2_with_the_message(payloads, tmp_path, capsys):
    path, _ = payloads["py2-bytearray"]
    sample = tiny.write_sample(tmp_path / "s.csv")
    out = tmp_path / "out"
    assert cli_main(["convert", str(path), "--data", str(sample), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bytearrays of 1,000,000,000 bytes" in err and path.name in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_globals_are_resolved_as_torch_resolves_them():
    """Every Python 2 name torch's weights-only unpickler maps, read by torch's own GLOBAL reader and by the
    scan, gives the same dotted name; and torch's tables are the stdlib's (_compat_pickle), which the stdlib
    applies below protocol 3 only."""
    import _compat_pickle
    import io

    from torch._utils import IMPORT_MAPPING, NAME_MAPPING
    from torch._weights_only_unpickler import _read_global_instruction

    cases = list(NAME_MAPPING) + [(m, "bytearray") for m in IMPORT_MAPPING] + [("builtins", "set"), ("torch", "Size")]
    for module, name in cases:
        line = io.BytesIO(f"{module}\n{name}\n".encode())
        assert pickle_scan.resolve_global(module, name) == ".".join(_read_global_instruction(line.readline))
    assert all(_compat_pickle.NAME_MAPPING[k] == v for k, v in NAME_MAPPING.items())
    assert all(_compat_pickle.IMPORT_MAPPING[k] == v for k, v in IMPORT_MAPPING.items())
    assert pickle_scan.resolve_global("__builtin__", "bytearray") == "builtins.bytearray"
    assert pickle_scan.resolve_global("copy_reg", "_reconstructor", proto=2) == "copyreg._reconstructor"
    assert pickle_scan.resolve_global("copy_reg", "_reconstructor", proto=4) == "copy_reg._reconstructor"
    assert pickle_scan.resolve_global("__builtin__", "reduce", proto=2) == "functools.reduce"


def test_what_torch_save_writes_passes_whole(tmp_path):
    """Everything the weights-only unpickler accepts, as torch.save writes it, is walked to its end (STOP)
    without a refusal, in both formats, and loads."""
    import collections

    x = torch.arange(100.0).reshape(10, 10)
    t = torch.ones(2)
    t.note = "attribute"
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.LayerNorm(4), torch.nn.Embedding(10, 4))
    objects = {
        "state_dict": model.state_dict(),
        "dtypes": {str(d): torch.ones(3, dtype=d) for d in (torch.float16, torch.bfloat16, torch.int8, torch.bool)},
        "new_dtypes": {"u16": torch.ones(3, dtype=torch.uint16), "f8": torch.ones(2, dtype=torch.float8_e4m3fn)},
        "views": {"a": x[2:5, 3:], "t": x.t(), "step": x[::2], "row": x[5], "empty": torch.zeros(0, 5), "x": x},
        "params": {"p": torch.nn.Parameter(torch.ones(3)), "g": torch.ones(2, requires_grad=True), "attr": t},
        "values": {
            "bytes": b"\xff" * 100_000,
            "bytearray": bytearray(b"abc" * 1000),
            "set": {1, 2, (3, 4)},
            "counter": collections.Counter("hello"),
            "complex": 1 + 2j,
            "size": torch.Size([2, 3]),
            "device": torch.device("cpu"),
            "nested": [[1, 2], (3, (4, 5)), {"k": None}],
            "big": 2**100,
        },
        "quantized": {"q": torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8)},
        "sparse_meta": {"s": torch.zeros(3, 3).to_sparse(), "m": torch.empty(5, device="meta")},
        "many": {f"layer.{i}.weight": torch.zeros(2) for i in range(2000)},
    }
    for name, obj in objects.items():
        for zipped in (True, False) if name != "new_dtypes" else (True,):  # torch cannot load those legacy
            path = tmp_path / f"{name}-{zipped}.pt"
            torch.save(obj, path, _use_new_zipfile_serialization=zipped)
            budget.check_file(path, name, "torch" if zipped else "torch-legacy")
            if zipped:
                with zipfile.ZipFile(path) as zf:
                    data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
                _, complete, end = budget.scan_pickle(data, name)
                assert complete and end == len(data), name
            torch.load(path, weights_only=True)


def test_work_and_allocation_budgets_grow_with_the_pickle_and_stop_at_their_caps():
    assert budget.WORK_FLOOR < pickle_scan.work_budget(10**6) <= budget.MAX_WORK
    assert pickle_scan.work_budget(10**9) == budget.MAX_WORK
    assert pickle_scan.alloc_budget(0) == budget.ALLOC_FLOOR
    assert pickle_scan.alloc_budget(10**9) == budget.MAX_ALLOC


def test_a_bug_in_the_scan_refuses_rather_than_lets_through(monkeypatch):
    def broken(*a):
        raise TypeError("a bug")

    monkeypatch.setattr(pickle_scan._Scan, "call", broken)
    pkl = b"\x80\x02" + _glob("collections", "OrderedDict") + b")R."
    with pytest.raises(StudioError, match="could not follow its pickle"):
        budget.scan_pickle(pkl, "x.pt")


def test_a_dcp_shard_slice_gets_the_same_budget(tmp_path):
    """A sharded (DCP) checkpoint whose metadata points one tensor at a slice holding a hostile torch.save
    zip: DCP hands each slice to torch.load(weights_only=True), so each gets the scan a file gets."""
    import warnings

    import torch.distributed.checkpoint as dcp

    from studio.sources import dcp as studio_dcp

    folder = tmp_path / "ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": {"w": torch.ones(4), "b": torch.zeros(2)}}, checkpoint_id=str(folder), no_dist=True)
    assert studio_dcp.load_dcp(folder, "ckpt")["model"]["w"].sum() == 4  # the real checkpoint loads
    ba2 = _glob("__builtin__", "bytearray") + _long(GB) + b"\x85R"
    hostile = _torch_zip(tmp_path / "hostile.pt", _calls(ba2, 10)).read_bytes()
    (folder / "__9_0.distcp").write_bytes(b"\0" * 16 + hostile)
    md = studio_dcp.read_metadata(folder, "ckpt")
    for index, info in md.storage_data.items():
        if index.fqn == "model.w":
            info.relative_path, info.offset, info.length = "__9_0.distcp", 16, len(hostile)
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(md, f)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"__9_0\.distcp, 'model\.w'.*bytearrays of 1,000,000,000 bytes"):
        studio_dcp.load_dcp(folder, "ckpt")
    assert time.perf_counter() - start < 10
    (folder / "__9_0.distcp").write_bytes(b"\0" * 16 + b"\x80\x02" + ba2 + b"." + b"\0" * (len(hostile) - 24))
    with pytest.raises(CheckpointError, match="not a torch.save zip"):  # a bare pickle: torch's legacy reader
        studio_dcp.load_dcp(folder, "ckpt")
