"""Uploads that would exhaust the machine before a single check runs: each is refused early, with a message
naming the limit, and the files that prove it are small on disk (the check refuses before anything grows).

Absurd configs are counted on the meta device (sources.sizing); torch.save files get a reading budget
(sources.budget); zips an expansion limit (sources.archive); `studio convert` a memory and time limit; and
what a killed conversion leaves behind is swept by the next run (sources.scratch)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import tiny
import torch

from studio import sources
from studio.cli.commands import main as cli_main
from studio.errors import CheckpointError, StudioError
from studio.sources import archive, budget, pickle_scan, scratch, sizing
from studio.sources.base import LoadDefaults
from studio.spec import MAX_PARAMS_DEFAULT, ConvertSpec

REPO = Path(__file__).resolve().parents[1]


def spec(path, **kw):
    return LoadDefaults(**kw)  # the loader options alone (a ConvertSpec is one too)


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    scratch_dir = tmp_path / "scratch"
    scratch_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_dir))
    yield scratch_dir


def declared_params(config) -> int:
    """The reference count, independent of sources.sizing: the real model's parameters."""
    import transformers

    return sum(p.numel() for p in transformers.AutoModel.from_config(config).parameters())


# ------------------------------------------------------------------------------------------ configs


def _absurd_hf_folder(tmp_path: Path, **sizes) -> Path:
    folder = tiny.make_hf_folder(tmp_path / "hf")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(sizes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(
    "sizes",
    [{"num_hidden_layers": 1_000_000}, {"hidden_size": 1_000_000, "num_attention_heads": 1}],
    ids=["million-layers", "hidden-size-million"],
)
def test_absurd_hf_config_beside_small_weights_is_refused_before_allocating(tmp_path, sizes):
    folder = _absurd_hf_folder(tmp_path, **sizes)
    weights = sizing.folder_weight_bytes(folder)
    assert weights == (folder / "model.safetensors").stat().st_size < 200_000
    with pytest.raises(CheckpointError) as e:
        sources.load(folder, spec(folder))
    msg = str(e.value)
    assert "config.json" in msg and "cannot belong to this config" in msg and f"{weights:,} bytes" in msg
    key, value = next(iter(sizes.items()))
    assert f"{key}={value}" in msg


def test_absurd_config_is_refused_with_low_peak_memory(tmp_path):
    """The whole refusal, in a fresh process, peaks near what importing torch + transformers costs."""
    folder = _absurd_hf_folder(
        tmp_path, num_hidden_layers=1_000_000, hidden_size=4096, num_attention_heads=64, intermediate_size=16384
    )
    code = (
        "import resource, sys\n"
        "from studio import sources\nfrom studio.errors import CheckpointError\n"
        "import transformers, torch\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    sources.load(sys.argv[1])\nexcept CheckpointError as e:\n    print('REFUSED', e)\n"
        "print('GROWTH_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cap_memory():  # should the check regress, the real build fails here instead of eating the machine
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (4 * 1024**3, resource.RLIM_INFINITY))

    out = subprocess.run(
        [sys.executable, "-c", code, str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        preexec_fn=cap_memory,
    ).stdout
    assert "REFUSED" in out and "cannot belong to this config" in out
    growth_mb = int(out.split("GROWTH_KB")[1].split()[0]) / 1024
    # the real model would be 1e6 layers x ~200M parameters; counting it on meta stays under 200 MB
    assert growth_mb < 200, out


def test_a_real_folder_still_loads_and_its_count_matches_the_real_model(tmp_path):
    folder = tiny.make_hf_folder(tmp_path / "hf")
    loaded = sources.load(folder, spec(folder))
    real = sum(p.numel() for p in loaded.module.parameters())
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(folder))
    counted, why = sizing.count_on_meta(
        lambda: transformers.AutoModelForSequenceClassification.from_config(config), 10**12
    )
    assert (counted, why) == (real, None)


def test_max_params_refuses_a_real_model_above_the_operator_limit(tmp_path, capsys):
    folder = tiny.make_hf_folder(tmp_path / "hf")
    import transformers

    n = declared_params(transformers.AutoConfig.from_pretrained(str(folder)))
    with pytest.raises(CheckpointError, match=r"more than the limit of 1,000 \(--max-params\)"):
        sources.load(folder, spec(folder, max_params=1000))
    sources.load(folder, spec(folder, max_params=n + 10_000))  # at the real size (+ head) it loads

    sample = tiny.write_sample(tmp_path / "s.csv")
    code = cli_main(
        [
            "convert",
            str(folder),
            "--data",
            str(sample),
            "--out",
            str(tmp_path / "out"),
            "--max-params",
            "1e3",
            "--quiet",
        ]
    )
    assert code == 2
    assert "--max-params" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_max_params_is_validated():
    assert ConvertSpec("a", "b").max_params == MAX_PARAMS_DEFAULT
    for bad in (0, -5, float("nan"), float("inf"), "many", True):
        with pytest.raises(StudioError, match="--max-params"):
            ConvertSpec("a", "b", max_params=bad).validated()
    assert ConvertSpec("a", "b", max_params=2.5e9).validated().max_params == 2_500_000_000


def test_state_dict_with_absurd_config_is_refused(tmp_path):
    folder = tmp_path / "sd"
    folder.mkdir()
    config = tiny.make_config("bert")
    config.num_hidden_layers = 1_000_000
    config.save_pretrained(str(folder))
    torch.save({"encoder.layer.0.attention.self.query.weight": torch.zeros(32, 32)}, folder / "weights.pt")
    with pytest.raises(CheckpointError, match="declares at least .* but only 4,096 bytes .*cannot belong"):
        sources.load(folder / "weights.pt", spec(folder / "weights.pt"))


def test_stride_zero_tensor_is_refused_before_and_after_reading(tmp_path):
    """torch.save keeps an expanded view as one element and stride 0: 8 bytes on disk, 4 GB once copied."""
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1).expand(10**9)}, path)
    assert path.stat().st_size < 10_000
    with pytest.raises(CheckpointError, match="1,000,000,000 elements .*stride-0"):
        sources.load(path, spec(path))
    with pytest.raises(CheckpointError, match="stride-0"):  # the same check on a tensor already in memory
        sizing.state_dict_bytes({"w": torch.zeros(1).expand(10**6)}, "x")


def _multimodal_checkpoint(tmp_path: Path, **encoder) -> Path:
    from studio.models.multimodal import MultimodalConfig, build_model, save_checkpoint

    enc = dict(
        vocab_size=tiny.vocab_size(),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        max_position_embeddings=32,
    )
    model = build_model(MultimodalConfig(encoder=enc, labels=["a", "b"], text_field="review", tab_fields={"price": 1}))
    path = save_checkpoint(model, tiny.bert_tokenizer(tmp_path / "tok"), tmp_path / "mm.pt")
    obj = torch.load(path, weights_only=True)
    obj["config"]["encoder"].update(encoder)
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    "encoder",
    [{"num_hidden_layers": 1_000_000}, {"hidden_size": 1_000_000, "num_attention_heads": 1}],
    ids=["million-layers", "hidden-size-million"],
)
def test_multimodal_encoder_config_is_refused_before_allocating(tmp_path, encoder):
    path = _multimodal_checkpoint(tmp_path, **encoder)
    with pytest.raises(CheckpointError) as e:
        sources.load(path, spec(path))
    msg = str(e.value)
    assert "multimodal config" in msg and "cannot belong to this config" in msg
    key, value = next(iter(encoder.items()))
    assert f"{key}={value}" in msg


def test_multimodal_tabular_width_is_refused_before_python_lists(tmp_path):
    path = _multimodal_checkpoint(tmp_path)
    obj = torch.load(path, weights_only=True)
    obj["config"]["tab_fields"] = {"price": 10**12}
    obj["config"]["tab_mean"] = obj["config"]["tab_std"] = None
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="1,000,000,000,000 tabular features"):
        sources.load(path, spec(path))


def test_meta_count_stops_on_module_count(monkeypatch):
    monkeypatch.setattr(sizing, "MAX_MODULES", 50)
    counted, why = sizing.count_on_meta(
        lambda: torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(100)]), 10**12
    )
    assert why == "modules"


# ------------------------------------------------------------------------------------------ pickles


def _pickle(*ops: bytes) -> bytes:
    return b"\x80\x02" + b"".join(ops) + b"."


def _put(i: int) -> bytes:
    return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)


def _get(i: int) -> bytes:
    return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)


def _long(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _torch_zip(path: Path, pkl: bytes) -> Path:
    """A torch.save zip whose data.pkl is `pkl` (the other records as torch writes them)."""
    torch.save({}, path)
    with zipfile.ZipFile(path) as zf:
        records = {m.filename: zf.read(m) for m in zf.infolist()}
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in records.items():
            zf.writestr(name, pkl if name.endswith("/data.pkl") else data)
    return path


def test_exponentially_shared_dict_key_is_refused(tmp_path):
    """60 nested pairs of memo references: 400 bytes that hash as 2**60 parts (the unpickler never ends)."""
    ops = [b"}", b")", _put(0)]
    for i in range(1, 61):
        ops += [_get(i - 1), b"\x86", _put(i)]  # (t, t): the previous one is on the stack
    ops += [b"\x85", b"N", b"s"]  # {((t60,)): None}
    path = _torch_zip(tmp_path / "keys.pt", _pickle(*ops))
    assert path.stat().st_size < 5_000
    with pytest.raises(CheckpointError, match="dict key .* parts .*minutes"):
        sources.load(path, spec(path))


def test_colliding_integer_keys_are_refused(tmp_path):
    """Integers k * (2**61 - 1) all hash to 0: inserting n of them costs n**2 / 2 probes."""
    ops = [b"}", b"("]
    for k in range(1, 2001):
        ops += [_long(k * (2**61 - 1)), b"N"]
    ops += [b"u"]
    path = _torch_zip(tmp_path / "collide.pt", _pickle(*ops))
    with pytest.raises(CheckpointError, match="same hash"):
        sources.load(path, spec(path))


def test_bytearray_of_gigabytes_is_refused(tmp_path):
    ops = [b"}", b"X\x01\x00\x00\x00w", b"cbuiltins\nbytearray\n", _long(8 * 1024**3), b"\x85", b"R", b"s"]
    path = _torch_zip(tmp_path / "ba.pt", _pickle(*ops))
    assert path.stat().st_size < 5_000
    with pytest.raises(CheckpointError, match=r"bytearrays of 8,589,934,592 bytes .*limit"):
        sources.load(path, spec(path))


def test_deflated_torch_record_is_refused(tmp_path):
    """torch.save stores records; one deflated 1000x (here 8 MiB -> 8 kB) is refused before inflating."""
    real = tmp_path / "real.pt"
    torch.save({"w": torch.zeros(2 * 1024**2)}, real)
    with zipfile.ZipFile(real) as zf:
        assert all(m.compress_type == zipfile.ZIP_STORED for m in zf.infolist())  # what torch writes
        records = {m.filename: zf.read(m) for m in zf.infolist()}
    path = tmp_path / "deflated.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in records.items():
            zf.writestr(name, data)
    assert path.stat().st_size < 100_000
    with pytest.raises(CheckpointError, match=r"compressed .*x .*limit is 200x.*uncompressed"):
        sources.load(path, spec(path))


def test_legacy_storage_larger_than_the_file_is_refused(tmp_path):
    """The legacy format allocates each storage's declared size before reading it."""
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(4)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert data.count(b"K\x04N") == 1  # the storage's element count, then view metadata None
    path.write_bytes(data.replace(b"K\x04N", b"J\xff\xff\xff\x7fN"))
    with pytest.raises(CheckpointError, match="storages declare 8,589,934,588 bytes"):
        sources.load(path, spec(path))


def test_pickle_above_the_size_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "MAX_PICKLE_BYTES", 1000)
    path = tmp_path / "many.pt"
    torch.save({f"layer.{i}.weight": torch.zeros(1) for i in range(100)}, path)
    with pytest.raises(CheckpointError, match="pickle .* limit is 1,000"):
        sources.load(path, spec(path))


def test_real_checkpoints_pass_the_budget():
    demo = REPO / "studio" / "demo" / "demo_model.pt"
    budget.check_file(demo, "demo", "torch")  # no exception
    with zipfile.ZipFile(demo) as zf:
        pkl = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        declared, complete, _ = budget.scan_pickle(zf.read(pkl), "demo")
        held = {m.filename: m.file_size for m in zf.infolist()}
    assert complete and declared
    prefix = pkl[: -len("data.pkl")]
    assert all(declared[k] == held[f"{prefix}data/{k}"] for k in declared)


# ------------------------------------------------------------------------------------------ zips


def test_zip_member_of_exactly_50_mib_is_checked(tmp_path):
    path = tmp_path / "fifty.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model/model.safetensors", b"\0" * (50 * 1024**2))
    with pytest.raises(CheckpointError, match="zip bomb"):
        sources.load(path, spec(path))


def test_many_small_dense_members_are_refused_together(tmp_path):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):  # each 1 MiB (under the per-member check), 40 MiB from ~40 kB
            zf.writestr(f"model/f{i}.txt", b"\0" * archive.RATIO_CHECK_FROM)
    with pytest.raises(CheckpointError, match=r"unpacks to .*x, the limit is 200x"):
        archive.extract_zip(path, tmp_path / "x")


# ------------------------------------------------------------------------------------------ leftovers


def test_stale_scratch_is_swept_and_live_scratch_kept(tmp_path, private_tmp):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    host = scratch.HOST_TAG
    stale = private_tmp / f"studio-ckpt-{dead}-{host}-abc"
    live = private_tmp / f"studio-ckpt-{os.getppid()}-{host}-abc"
    elsewhere = private_tmp / f"studio-ckpt-{dead}-{'0' * 6 if host != '0' * 6 else '1' * 6}-abc"  # another host
    unnamed = private_tmp / "studio-ckpt-old"
    for p in (stale, live, elsewhere, unnamed):
        (p / "model").mkdir(parents=True)
    with scratch.temp_dir("studio-ckpt-") as mine:
        assert mine.name.startswith(f"studio-ckpt-{os.getpid()}-{host}-") and mine.parent == private_tmp
    assert not stale.exists() and not mine.exists()
    assert live.exists() and elsewhere.exists() and unnamed.exists()

    from studio.pipeline import remove_stale

    out = tmp_path / "out"
    leftover = tmp_path / f".out.partial-{dead}-{host}-1234abcd"
    other = tmp_path / f".out.partial-{os.getpid()}-{host}-1234abcd"
    leftover.mkdir()
    other.mkdir()
    assert remove_stale(out) == [leftover]
    assert other.exists()


def test_uploaded_zip_is_unpacked_inside_the_build_folder(tmp_path, private_tmp, monkeypatch):
    """The conversion's scratch lives in `.OUT.partial-PID-*`: one folder to prove stale, not the temp dir."""
    folder = tiny.make_hf_folder(tmp_path / "hf")
    zpath = tmp_path / "hf.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in folder.rglob("*"):
            if f.is_file() and "_vocab" not in f.parts:
                zf.write(f, f"hf/{f.relative_to(folder)}")
    seen = []

    def spy(archive_path, dest, **kw):
        seen.append(Path(dest))
        raise CheckpointError("stop here")

    monkeypatch.setattr(archive, "extract_zip", spy)
    sample = tiny.write_sample(tmp_path / "s.csv")
    assert cli_main(["convert", str(zpath), "--data", str(sample), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert len(seen) == 1
    assert seen[0].parent.name.startswith(f".out.partial-{os.getpid()}-{scratch.HOST_TAG}-")
    assert not list(tmp_path.glob(".out.partial-*")) and not list(private_tmp.glob("studio-*"))


def test_memory_limit_stops_a_conversion_cleanly(tmp_path, private_tmp):
    """`studio convert --memory-limit`: exit 2 with the limit and the option named; no partial folder, no
    unpacked upload, no output folder."""
    folder = tiny.make_hf_folder(tmp_path / "hf")
    zpath = tmp_path / "hf.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in folder.rglob("*"):
            if f.is_file() and "_vocab" not in f.parts:
                zf.write(f, f"hf/{f.relative_to(folder)}")
    sample = tiny.write_sample(tmp_path / "s.csv")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(private_tmp)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "studio",
            "convert",
            str(zpath),
            "--data",
            str(sample),
            "--out",
            str(tmp_path / "out"),
            "--memory-limit",
            "100",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    assert "ran out of memory (limit 100 MB)" in proc.stderr and "--memory-limit" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
    assert not list(private_tmp.glob("studio-*"))


def test_timeout_stops_a_conversion_cleanly(tmp_path):
    """Killed wherever it is after 8 s, the conversion leaves no output and no build folder. The demo with the
    new exporter takes ~18 s on a quiet 2-core machine (start-up and loading ~7 s, that export ~5-10 s); a
    latency budget no longer makes a run long (timing stops once the medians are known, and at the call cap)."""
    sample = tiny.write_sample(tmp_path / "s.csv")
    demo = REPO / "studio" / "demo" / "demo_model.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "studio",
            "convert",
            str(demo),
            "--data",
            str(sample),
            "--out",
            str(tmp_path / "out"),
            "--timeout",
            "8",
            "--exporter",
            "dynamo",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    assert "8 s limit" in proc.stderr and "--timeout" in proc.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_cli_limits_are_validated(tmp_path, capsys):
    sample = tiny.write_sample(tmp_path / "s.csv")
    for flag, value in (("--memory-limit", "-1"), ("--timeout", "-1")):  # 0: no limit
        assert cli_main(["convert", "x.pt", "--data", str(sample), flag, value, "--quiet"]) == 2
        assert flag in capsys.readouterr().err


def test_hostile_pytorch_model_bin_in_a_hf_folder_meets_the_budget(tmp_path):
    """transformers reads pytorch_model.bin with its own torch.load: the budget is checked before."""
    folder = tiny.make_hf_folder(tmp_path / "hf", safetensors=False)
    ops = [b"}", b"X\x01\x00\x00\x00w", b"cbuiltins\nbytearray\n", _long(8 * 1024**3), b"\x85", b"R", b"s"]
    _torch_zip(folder / "pytorch_model.bin", _pickle(*ops))
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: its pickle asks for bytearrays"):
        sources.load(folder, spec(folder))


def test_meta_and_sparse_tensors_declare_sizes_without_data():
    with pytest.raises(CheckpointError, match="meta tensor"):
        sizing.state_dict_bytes({"w": torch.empty(10**6, device="meta")}, "x")
    with pytest.raises(CheckpointError, match="sparse_coo"):
        sizing.state_dict_bytes({"w": torch.zeros(3).to_sparse()}, "x")
    assert sizing.state_dict_bytes({"a": torch.zeros(4), "b": torch.zeros(8)[2:]}, "x") == 48


def test_the_app_unpacks_previews_inside_the_session(tmp_path, monkeypatch):
    from studio.app import worker

    zpath = tmp_path / "up.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("m/config.json", "{}")
    seen = []

    def spy(archive_path, dest, **kw):
        seen.append(Path(dest))
        raise CheckpointError("stop here")

    monkeypatch.setattr(archive, "extract_zip", spy)
    work = tmp_path / "session" / "scratch"
    work.mkdir(parents=True)
    out = worker.task_preview(
        {"checkpoint": str(zpath), "data": None, "workdir": str(work), "spec": spec(zpath)}, lambda *a: None
    )
    assert out["model_error"] == "stop here"
    assert seen and seen[0].parent == work
    with pytest.raises(CheckpointError):
        worker.task_check(
            {"checkpoint": str(zpath), "data": "-", "workdir": str(work), "spec": spec(zpath)}, lambda *a: None
        )
    assert len(seen) == 2 and seen[1].parent == work and not list(work.iterdir())


def test_sigterm_unwinds_a_conversion_without_leftovers(tmp_path):
    import signal
    import time

    sample = tiny.write_sample(tmp_path / "s.csv")
    demo = REPO / "studio" / "demo" / "demo_model.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "studio",
            "convert",
            str(demo),
            "--data",
            str(sample),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob(".out.partial-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(tmp_path.glob(".out.partial-*")), "the conversion never started building"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert not list(tmp_path.glob(".out.partial-*")) and not (tmp_path / "out").exists()


def test_app_flag_max_params():
    from studio.cli.flags import build_parser

    assert build_parser().parse_args(["app", "--max-params", "2e9"]).max_params == 2_000_000_000
    assert build_parser().parse_args(["app"]).max_params == MAX_PARAMS_DEFAULT
    with pytest.raises(SystemExit):
        build_parser().parse_args(["convert", "x", "--data", "y", "--max-params", "lots"])


def test_pickle_with_too_many_opcodes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(pickle_scan, "MAX_PICKLE_OPS", 500)
    path = tmp_path / "many.pt"
    torch.save({f"layer.{i}.weight": torch.zeros(1) for i in range(100)}, path)
    with pytest.raises(CheckpointError, match="more than 500 opcodes"):
        sources.load(path, spec(path))
