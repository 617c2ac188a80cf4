"""Issue 25, sections 3-5 (the CLI and the batch): hostile names never reach the terminal raw, manifests are
data bounded like uploads, summary.md carries no markup from them, and the CLI's job limits have safe
defaults. Every payload is planted here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import REPO

from studio import demo
from studio.cli import commands as cli
from studio.cli import flags as cli_flags
from studio.jobs import entries, fleet
from studio.jobs.manifest import ALIAS_BUDGET, MAX_DEPTH, OPERATOR, ManifestError, read_manifest
from studio.spec import ConvertSpec

EVIL = "s\x1b]0;TITLE\x07\x1b[2J\x1b[31m\x9b2J\x7fred"  # OSC title, clear screen, colour, C1 CSI, DEL
MARKUP = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "<svg onload=alert(1)>",
    '"><img src=x onerror=alert(2)>',
    "[x](javascript:alert(1))",
    "` <img src=x onerror=alert(3)> `",
    "``x`` ```<script>alert(4)</script>",
    "a | b | <img src=y onerror=alert(5)>",
]
FAST = ["--exporter", "torchscript", "--latency-budget", "0.05", "--no-cuda"]


def studio(*args, cwd=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "studio", *map(str, args)], capture_output=True, cwd=cwd or REPO, timeout=timeout
    )


def raw_controls(data: bytes) -> list[str]:
    """Control characters (C0 but newline and tab, DEL, C1) in what a command printed, decoded as UTF-8."""
    text = data.decode("utf-8")  # strict: undecodable output fails here too
    return [hex(ord(c)) for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F]


def assert_clean(run) -> None:
    assert raw_controls(run.stdout) == [] and raw_controls(run.stderr) == [], (run.stdout[-2000:], run.stderr[-2000:])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """The demo's checkpoint and sample under names with control characters and markup."""
    d = tmp_path_factory.mktemp("hostile")
    shutil.copy(demo.checkpoint(), d / f"{EVIL}.pt")
    shutil.copy(demo.sample(), d / f"{EVIL}.csv")
    return d


# --- 3. the terminal ------------------------------------------------------------------------------------------------


def test_convert_roles_and_inspect_print_no_raw_control_character(hostile):
    out = hostile / f"out{EVIL}"
    run = studio("convert", hostile / f"{EVIL}.pt", "--data", hostile / f"{EVIL}.csv", "--out", out, *FAST)
    assert run.returncode == 0, run.stderr
    assert_clean(run)
    assert b"\\x1b]0;TITLE\\x07" in run.stdout  # shown escaped, not dropped
    report = json.loads((out / "report.json").read_text())
    assert report["source"]["path"].endswith(f"{EVIL}.pt")  # the report keeps the real name
    bad = studio("convert", hostile / f"{EVIL}.pt", "--data", hostile / f"{EVIL}.csv", "--role", f"x{EVIL}=text")
    assert bad.returncode == 2 and b"not in the file" in bad.stderr
    assert_clean(bad)
    for run in (studio("roles", hostile / f"{EVIL}.csv"), studio("inspect", out / "model.onnx")):
        assert run.returncode == 0, run.stderr
        assert_clean(run)


def test_the_safe_stream_escapes_what_else_is_written():
    import io

    from studio.cli.text import SafeStream

    raw = io.StringIO()
    s = SafeStream.wrap(raw)
    assert SafeStream.wrap(s) is s
    s.write(f"warning: {EVIL}\n\tnext\n")
    assert raw.getvalue() == "warning: s\\x1b]0;TITLE\\x07\\x1b[2J\\x1b[31m\\x9b2J\\x7fred\n\tnext\n"


@pytest.fixture(scope="module")
def hostile_batch(hostile):
    """A batch of two entries whose paths carry control characters and markup: one converts, one is refused
    with a message quoting a planted column name."""
    column = f"col{EVIL}" + "".join(MARKUP)
    base = {"checkpoint": f"{EVIL}.pt", "data": f"{EVIL}.csv", "exporter": "torchscript", "latency_budget_s": 0.05}
    manifest = hostile / "m.jsonl"
    manifest.write_text(
        json.dumps({"name": "ok", **base})
        + "\n"
        + json.dumps({"name": "bad", **base, "roles": {column: "text"}})
        + "\n"
    )
    run = studio("batch", manifest, "--out", hostile / "batch")
    return run, hostile / "batch", column


def test_the_batch_prints_no_raw_control_character(hostile_batch):
    run, out, column = hostile_batch
    assert run.returncode == 2, run.stderr
    assert_clean(run)
    assert b"[2/2]" in run.stderr and b"\\x1b" in run.stderr and b"summary  " in run.stdout
    data = json.loads((out / "summary.json").read_text())
    rows = {r["entry"]: r for r in data["entries"]}
    assert rows["ok"]["verdict"] == "PASS" and rows["bad"]["verdict"] == "ERROR"
    assert rows["ok"]["checkpoint"].endswith(f"{EVIL}.pt") and repr(column) in rows["bad"]["error"]  # real names
    assert raw_controls((out / "summary.md").read_bytes()) == []


def rendered(md: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table").render(md)


def assert_no_markup(html: str) -> None:
    low = html.lower()
    for element in ("<img", "<script", "<svg", 'href="javascript:', "<a "):
        assert element not in low, (element, html[:3000])


def test_summary_md_of_a_real_batch_carries_no_markup(hostile_batch):
    _, out, _ = hostile_batch
    html = rendered((out / "summary.md").read_text())
    assert_no_markup(html)
    assert "<td>bad</td>\n<td>ERROR</td>" in html


def test_summary_md_escapes_every_string_from_a_manifest_or_upload(tmp_path):
    """Planted in every string a row carries: the entry, the error, the failed checks, a variant's name."""
    payload = " ".join(MARKUP) + EVIL
    rows = [
        {"entry": payload, "verdict": "ERROR", "failed_checks": [], "error": payload, "skipped": False},
        {
            "entry": "x",
            "verdict": "FAIL",
            "failed_checks": [payload],
            "error": None,
            "variants": [{"name": payload, "ok": False, "size_bytes": 1, "speedup_vs_torch": None}],
            "skipped": False,
        },
    ]
    res = fleet.write_summary(tmp_path, tmp_path / f"{payload}.jsonl", rows)
    md = res.summary_md.read_text()
    html = rendered(md)
    assert_no_markup(html)
    body = html[html.index("<tbody>") :]
    assert body.count("<tr>") == 2 and body.count("<td>") == 14  # no cell broken out of its row
    assert raw_controls(md.encode()) == []
    assert json.loads(res.summary_json.read_text())["entries"][0]["error"] == payload  # summary.json: as given


# --- 4. manifests are data --------------------------------------------------------------------------------------------


@pytest.fixture
def inputs(tmp_path) -> Path:
    (tmp_path / "model.pt").write_bytes(demo.checkpoint().read_bytes())
    (tmp_path / "rows.csv").write_text(demo.sample().read_text())
    return tmp_path


LINE = '{"checkpoint": "model.pt", "data": "rows.csv"'


def refused(path: Path, *words: str, seconds: float = 10) -> ManifestError:
    started = time.monotonic()
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    assert time.monotonic() - started < seconds
    text = str(e.value)
    assert all(w in text for w in words), text
    assert len(text) < 1200, len(text)  # never the whole value back
    return e.value


def test_yaml_billion_laughs_is_refused_at_the_alias_budget(inputs):
    """9 anchors of 9 aliases (9^9 nodes once expanded, a 3 kB file): refused while parsed, nothing built."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    text = "\n".join(lines) + "\nconversions:\n  - {checkpoint: model.pt, data: rows.csv, roles: *a8}\n"
    assert len(text) < 3000
    (inputs / "laughs.yaml").write_text(text)
    err = refused(inputs / "laughs.yaml", f"more than {ALIAS_BUDGET:,} nodes", "line")
    assert err.line is not None
    (inputs / "loop.yaml").write_text("- &a {checkpoint: model.pt, data: rows.csv, roles: *a}\n")
    refused(inputs / "loop.yaml", "names no complete node")
    # a few aliases, as a manifest would use them, are fine
    (inputs / "ok.yaml").write_text(
        "- &base {checkpoint: model.pt, data: rows.csv, roles: &r {order_id: ignore}}\n"
        "- {name: two, checkpoint: model.pt, data: rows.csv, roles: *r}\n"
    )
    assert [e.spec.roles for e in read_manifest(inputs / "ok.yaml")] == [{"order_id": "ignore"}] * 2


@pytest.mark.parametrize(
    "name, text",
    [
        ("deep.jsonl", LINE + "}\n" + LINE + ', "roles": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
        ("deep2.jsonl", LINE + "}\n" + LINE + ', "roles": {"a": ' + "[" * 12 + "]" * 12 + "}}\n"),
        ("deep.yaml", "- {checkpoint: model.pt, data: rows.csv}\n- roles: " + "[" * 100_000 + "]" * 100_000 + "\n"),
        (
            "deep.csv",
            "checkpoint,data,roles\nmodel.pt,rows.csv,\nmodel.pt,rows.csv,"
            + '"{""a"": '
            + "[" * 50
            + "]" * 50
            + '}"\n',
        ),
    ],
)
def test_deep_nesting_is_refused_naming_the_line(inputs, name, text):
    (inputs / name).write_text(text)
    err = refused(inputs / name, "nested too deep")
    assert err.line == (3 if name.endswith(".csv") else 2)
    assert f"at most {MAX_DEPTH} levels" in str(err)


def test_null_is_the_default_for_every_key(inputs):
    keys = [
        f.name
        for f in fields(ConvertSpec)
        if f.name not in ("checkpoint", "data", "out", "debug") and f.name not in OPERATOR
    ]
    assert {"opset", "atol", "max_length", "dynamic", "threads", "fill_value", "roles"} <= set(keys)
    line = {"checkpoint": "model.pt", "data": "rows.csv", "name": None, **dict.fromkeys(keys)}
    (inputs / "n.jsonl").write_text(json.dumps(line) + "\n")
    (inputs / "n.yaml").write_text(
        "- checkpoint: model.pt\n  data: rows.csv\n" + "".join(f"  {k}: null\n" for k in keys)
    )
    defaults = ConvertSpec(checkpoint=str(inputs / "model.pt"), data=str(inputs / "rows.csv")).validated()
    for name in ("n.jsonl", "n.yaml"):
        (entry,) = read_manifest(inputs / name)
        assert entry.spec == defaults and entry.name == "model-line1"
    (inputs / "c.jsonl").write_text('{"checkpoint": null, "data": "rows.csv"}\n')
    refused(inputs / "c.jsonl", "key 'checkpoint'", "is missing")


def test_a_huge_value_or_key_is_quoted_short_with_its_length(inputs):
    big = "x" * 100_000_000
    with open(inputs / "big.jsonl", "w") as f:  # a 100 MB value: past the line bound
        f.write(LINE + "}\n" + LINE + f', "exporter": "{big}"}}\n')
    refused(inputs / "big.jsonl", "line 2", "100,000,", "characters long", "at most 1,048,576")
    for key in ("roles", None):  # under the line bound, past the text bound: a value, then a key
        value = "y" * 500_000
        extra = {"roles": {value: "text"}} if key else {value: 1}
        (inputs / "k.jsonl").write_text(json.dumps({"checkpoint": "model.pt", "data": "rows.csv", **extra}) + "\n")
        err = refused(inputs / "k.jsonl", "500,000 characters")
        assert str(err).count("y") < 500
    (inputs / "p.jsonl").write_text(json.dumps({"checkpoint": "z" * 5000, "data": "rows.csv\x00"}) + "\n")
    refused(inputs / "p.jsonl", "5,000 characters", "key 'checkpoint'")
    (inputs / "v.yaml").write_text(f"- {{checkpoint: model.pt, data: rows.csv, task: {'t' * 2_000_000}}}\n")
    refused(inputs / "v.yaml", "2,000,000 characters", "key 'task'")


@pytest.mark.parametrize(
    "key, value, flag",
    [
        ("trust_code", True, "--trust-code"),
        ("trust_code", False, "--trust-code"),
        ("max_params", 10**15, "--max-params"),
        ("sample_limits", {"size": 100 * 1024**3}, "--sample-limits"),
        ("display_paths", ["/etc"], "web studio"),
        ("plugins", ["evil.py"], "--plugin"),
        ("memory_limit", 0, "--memory-limit"),
        ("timeout", 0, "--timeout"),
    ],
)
def test_an_operator_setting_on_a_line_is_refused_with_its_flag(inputs, key, value, flag):
    (inputs / "m.jsonl").write_text(json.dumps({"checkpoint": "model.pt", "data": "rows.csv", key: value}) + "\n")
    err = refused(inputs / "m.jsonl", "operator setting", flag)
    assert err.key == key and err.line == 1


def test_a_line_s_threads_are_bounded(inputs):
    (inputs / "m.jsonl").write_text(LINE + ', "threads": 1000000}\n')
    err = refused(inputs / "m.jsonl", "from 1 to 256", "1000000")
    assert err.key == "threads"
    (inputs / "m.jsonl").write_text(LINE + ', "threads": 4}\n')
    assert read_manifest(inputs / "m.jsonl")[0].spec.threads == 4


def test_the_operator_sets_trust_and_limits_for_the_whole_batch(inputs, monkeypatch):
    parser = cli_flags.build_parser()
    args = parser.parse_args(["batch", "m.jsonl", "--trust-code", "--max-params", "1e6", "--sample-limits", "rows=7"])
    assert (args.trust_code, args.max_params, args.sample_limits) == (True, 1_000_000, "rows=7")
    seen = []

    def fake(p, lim, threads, progress, stop=None):
        seen.append((p.entry.spec, lim))
        return entries.error_row(p.entry, "not run", "crashed")

    monkeypatch.setattr(fleet, "convert_entry", fake)
    (inputs / "m.jsonl").write_text(LINE + "}\n")
    opts = entries.BatchOptions(
        out=str(inputs / "o"), quiet=True, trust_code=True, max_params=10**6, sample_limits="rows=7"
    )
    fleet.run_batch(inputs / "m.jsonl", opts)
    ((spec, lim),) = seen
    assert (spec.trust_code, spec.max_params, spec.sample_limits.rows) == (True, 10**6, 7)
    assert lim.memory_mb and lim.timeout_s == cli_flags.TIMEOUT_DEFAULT_S  # the defaults: finite


def test_200k_entries_are_validated_in_seconds_and_the_first_starts_at_once(inputs, monkeypatch):
    """One streaming pass names a bad last line of 200,000 (was 158 s); the first entry starts before the
    others are hashed (was 227 s: every input hashed first)."""
    line = json.dumps({"checkpoint": "model.pt", "data": "rows.csv", "opset": 17, "roles": {"order_id": "ignore"}})
    text = "".join(line[:-1] + f', "name": "e{i}"}}\n' for i in range(200_000))
    (inputs / "bad.jsonl").write_text(text + LINE + ', "opset": "x"}\n')
    err = refused(inputs / "bad.jsonl", "line 200001", "key 'opset'", seconds=30)  # ~7 s on 2 busy cores
    assert err.line == 200_001
    (inputs / "m.jsonl").write_text("".join(text.splitlines(keepends=True)[:20_000]))
    order = []
    real = entries.Preparer.__call__

    def prepare(self, e):
        order.append(("hash", e.name))
        return real(self, e)

    def fake(p, lim, threads, progress, stop=None):
        order.append(("run", p.entry.name))
        return entries.error_row(p.entry, "not run", "crashed")

    monkeypatch.setattr(entries.Preparer, "__call__", prepare)
    monkeypatch.setattr(fleet, "convert_entry", fake)
    fleet.run_batch(inputs / "m.jsonl", entries.BatchOptions(out=str(inputs / "o"), jobs=1, quiet=True))
    assert order[:4] == [("hash", "e0"), ("run", "e0"), ("hash", "e1"), ("run", "e1")]
    assert len(order) == 40_000


def escapes(tmp_path: Path) -> tuple[Path, Path]:
    """A manifest folder holding model.pt and rows.csv, and a file beside it (outside) an entry must not read."""
    inside = tmp_path / "team"
    inside.mkdir()
    (inside / "model.pt").write_bytes(demo.checkpoint().read_bytes())
    (inside / "rows.csv").write_text(demo.sample().read_text())
    secret = tmp_path / "secret.csv"
    secret.write_text("operator,only\n1,2\n")
    return inside, secret


@pytest.mark.parametrize("how", ["absolute", "dotdot", "link", "home", "link-folder"])
def test_a_path_outside_the_inputs_folder_is_refused_naming_the_line(tmp_path, monkeypatch, how):
    """`data: /etc/passwd`, `../secret`, a link in the folder pointing out, `~`: refused on their line, quoted,
    with the flag that widens the folder; an outside file is not even said to exist or not."""
    inside, secret = escapes(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    value = {
        "absolute": str(secret),
        "dotdot": "../secret.csv",
        "link": "link.csv",
        "home": "~/secret.csv",
        "link-folder": "out/secret.csv",
    }[how]
    (inside / "link.csv").symlink_to(secret)
    (inside / "out").symlink_to(tmp_path, target_is_directory=True)
    manifest = inside / "m.jsonl"
    manifest.write_text(LINE + "}\n" + json.dumps({"checkpoint": "model.pt", "data": value, "name": "x"}) + "\n")
    err = refused(manifest, "line 2", "key 'data'", repr(value), "lies outside", str(inside))
    assert (err.line, err.key) == (2, "data") and "--inputs-under" in err.hint
    if how != "absolute":
        assert f"resolves to {str(secret)!r}" in str(err)
    # an outside path that does not exist is refused the same way (no answer on what exists there)
    manifest.write_text(json.dumps({"checkpoint": "model.pt", "data": "/nowhere/at/all.csv"}) + "\n")
    assert "does not exist" not in str(refused(manifest, "line 1", "lies outside"))
    # /etc/passwd, the case the issue names, as the checkpoint
    manifest.write_text(json.dumps({"checkpoint": "/etc/passwd", "data": "rows.csv"}) + "\n")
    assert refused(manifest, "lies outside").key == "checkpoint"


def test_a_path_inside_is_accepted_absolute_or_through_a_link_inside(tmp_path):
    inside, _ = escapes(tmp_path)
    (inside / "sub").mkdir()
    (inside / "sub" / "rows.csv").write_text(demo.sample().read_text())
    (inside / "alias.csv").symlink_to(inside / "sub" / "rows.csv")
    lines = [
        {"name": "a", "checkpoint": str(inside / "model.pt"), "data": "sub/../rows.csv"},
        {"name": "b", "checkpoint": "model.pt", "data": "alias.csv"},
    ]
    (inside / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    a, b = read_manifest(inside / "m.jsonl")
    assert a.spec.checkpoint == str(inside / "model.pt") and Path(a.spec.data).resolve() == inside / "rows.csv"
    assert Path(b.spec.data).resolve() == inside / "sub" / "rows.csv"
    # widened: the parent folder holds the outside file too
    (inside / "w.jsonl").write_text(json.dumps({"checkpoint": "model.pt", "data": "../secret.csv"}) + "\n")
    refused(inside / "w.jsonl", "lies outside")
    (entry,) = read_manifest(inside / "w.jsonl", inputs_under=tmp_path)
    assert Path(entry.spec.data).resolve() == tmp_path / "secret.csv" and entry.inputs_under == str(tmp_path.resolve())
    # narrowed below the manifest's folder: its own files are then outside
    with pytest.raises(ManifestError, match="lies outside"):
        read_manifest(inside / "m.jsonl", inputs_under=inside / "sub")
    with pytest.raises(cli.StudioError, match="--inputs-under .* is not a folder"):
        read_manifest(inside / "m.jsonl", inputs_under=tmp_path / "nowhere")


def test_a_link_turned_outward_after_the_manifest_was_read_is_an_error_row(tmp_path, monkeypatch):
    """The inputs are checked again when a job slot takes the entry: a link retargeted since is not followed."""
    inside, secret = escapes(tmp_path)
    (inside / "link.csv").symlink_to(inside / "rows.csv")
    (inside / "m.jsonl").write_text(json.dumps({"checkpoint": "model.pt", "data": "link.csv"}) + "\n")
    real = fleet.read_manifest

    def read_then_retarget(*args, **kwargs):
        read = real(*args, **kwargs)
        (inside / "link.csv").unlink()
        (inside / "link.csv").symlink_to(secret)
        return read

    ran = []
    monkeypatch.setattr(fleet, "read_manifest", read_then_retarget)
    monkeypatch.setattr(fleet, "convert_entry", lambda *a, **k: ran.append(a) or 1 / 0)
    result = fleet.run_batch(inside / "m.jsonl", entries.BatchOptions(out=str(tmp_path / "o"), quiet=True))
    (row,) = result.rows
    assert row["verdict"] == "ERROR" and "now resolves outside" in row["error"] and "--inputs-under" in row["error"]
    assert ran == [] and not (tmp_path / "o" / "model-line1" / "rows.csv").exists()


def test_inputs_under_through_the_studio_batch_command(tmp_path):
    """The real `studio batch`: `data: ../secret.csv` is refused (exit 2, nothing written); --inputs-under the
    parent folder lets the same manifest convert."""
    inside, secret = escapes(tmp_path)
    secret.write_text(demo.sample().read_text())
    line = {"checkpoint": "model.pt", "data": "../secret.csv", "name": "e", "exporter": "torchscript"}
    manifest = inside / "m.jsonl"
    manifest.write_text(json.dumps({**line, "latency_budget_s": 0.05}) + "\n")
    run = studio("batch", manifest, "--out", tmp_path / "o")
    assert run.returncode == 2 and not (tmp_path / "o").exists()
    err = run.stderr.decode()
    assert "line 1, key 'data'" in err and "'../secret.csv'" in err and "--inputs-under" in err, err
    assert "Traceback" not in err
    run = studio("batch", manifest, "--out", tmp_path / "o", "--inputs-under", tmp_path, "--quiet")
    assert run.returncode == 0, run.stderr[-3000:]
    (row,) = json.loads((tmp_path / "o" / "summary.json").read_text())["entries"]
    assert row["verdict"] == "PASS" and row["entry"] == "e"


# --- 5. safe default limits for the CLI ----------------------------------------------------------------------------------


def test_default_limits_are_finite_and_shown_in_help(capsys):
    lim = cli_flags.job_limits(None, None)
    assert 1 <= lim.memory_mb <= cli_flags.machine_memory_mb() and lim.timeout_s == 3600
    assert cli_flags.job_limits(None, None, batch=True).memory_mb <= cli_flags.BATCH_MEMORY_CAP_MB
    assert cli_flags.job_limits(0, 0) == cli_flags.Limits(timeout_s=None, memory_mb=None)
    for bad in ((-1, None), (None, -5), (None, float("inf"))):
        with pytest.raises(cli.StudioError, match="--memory-limit|--timeout"):
            cli_flags.job_limits(*bad)
    for command in ("convert", "batch"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert f"{cli_flags.default_memory_mb(command == 'batch'):,} MB here; 0: no limit" in text
        assert "(default 3600 s; 0: no limit)" in text and "75% of this machine's memory" in text


def test_timeout_0_means_none_and_the_command_runs_under_the_defaults(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(cli, "_convert_limited", lambda spec, progress, lim: seen.append(lim) or 1 / 0)
    for argv, default_limits in (
        (["--timeout", "0"], False),
        ([], True),
        (["--memory-limit", "0", "--timeout", "0"], True),
    ):
        assert cli.main(["convert", "x.pt", "--data", "y.csv", "--quiet", *argv], default_limits=default_limits) == 2
    assert seen[0].timeout_s is None and seen[0].memory_mb == cli_flags.default_memory_mb()
    assert seen[1] == cli_flags.job_limits(None, None)
    assert len(seen) == 2  # 0 and 0: no child process, no limit


def test_a_limit_hit_names_its_flag(tmp_path):
    """The conversion's child starts torch (seconds): a 1 s limit stops it, convert and batch alike."""
    run = studio("convert", "--demo", "--out", tmp_path / "o", "--timeout", "1", "--quiet", *FAST)
    assert run.returncode == 2
    assert b"1 s limit" in run.stderr and b"Raise --timeout (now 1 s), or give 0 for no limit" in run.stderr
    assert not (tmp_path / "o").exists()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"checkpoint": str(demo.checkpoint()), "data": str(demo.sample())}) + "\n")
    run = studio("batch", manifest, "--out", tmp_path / "b", "--timeout", "1", "--inputs-under", "/")  # the demo
    assert run.returncode == 2 and b"Raise --timeout (now 1 s)" in run.stderr
    (row,) = json.loads((tmp_path / "b" / "summary.json").read_text())["entries"]
    assert row["reason"] == "timeout" and "--timeout" in row["error"]


def test_a_jobs_unexpected_traceback_reaches_stderr_escaped(tmp_path):
    """A job's unexpected error is printed (its traceback, for the operator's log) with control characters
    escaped: the message may quote an upload's names."""
    import subprocess
    import sys

    script = (
        "import multiprocessing as mp\n"
        "from studio.jobs import isolate\n"
        "def task(payload, progress):\n"
        "    raise ValueError('bad \\x1b]0;TITLE\\x07\\x1b[2J name')\n"
        "a, b = mp.Pipe()\n"
        "p = mp.get_context('fork').Process(target=isolate._child_main, args=('t', task, {}, b, None))\n"
        "p.start(); print(a.recv()[0]); p.join()\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120, cwd=tmp_path)
    assert run.stdout.strip() == b"error"
    assert b"ValueError: bad \\x1b]0;TITLE\\x07\\x1b[2J name" in run.stderr and b"\x1b" not in run.stderr
