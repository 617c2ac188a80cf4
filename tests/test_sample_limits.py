"""The sample file's limits ("a few real rows"): each is checked while reading, refused one past the
limit with a BatchError naming the file, the limit and the option that raises it, and accepted at it."""

from __future__ import annotations

import json

import pytest

from studio.cli import commands as cli
from studio.cli import flags as cli_flags
from studio.errors import BatchError, StudioError
from studio.inputs.sample import read_sample
from studio.spec import ConvertSpec, SampleLimits, parse_sample_limits


def refused(path, limits: SampleLimits, key: str) -> BatchError:
    with pytest.raises(BatchError) as e:
        read_sample(path, limits)
    msg = str(e.value)
    assert msg.startswith(path.name + ":") and f"past the sample limit {key}=" in msg
    assert f"--sample-limits {key}=" in msg
    return e.value


def test_parse_sample_limits():
    assert parse_sample_limits(None) == SampleLimits() == parse_sample_limits("")
    got = parse_sample_limits("rows=5, size=2kb,depth=3")
    assert (got.rows, got.size, got.depth, got.columns) == (5, 2048, 3, SampleLimits().columns)
    assert parse_sample_limits({"keys": 7}).keys == 7
    assert parse_sample_limits("size=200mb").size == 200 * 1024**2
    for bad, words in (
        ("rows=lots", "not a whole number"),
        ("bogus=3", "unknown limit 'bogus'"),
        ("rows=0", "must be a whole number >= 1"),
        ("rows=5mb", "not a whole number"),
    ):
        with pytest.raises(StudioError, match=words):
            parse_sample_limits(bad)


def test_the_limits_are_a_convert_spec_field_and_reach_the_report_options():
    spec = ConvertSpec("m", "d", sample_limits="rows=5").validated()
    assert spec.sample_limits == SampleLimits(rows=5)
    assert ConvertSpec("m", "d").validated().sample_limits == SampleLimits()
    assert spec.to_dict()["sample_limits"]["rows"] == 5
    args = cli_flags.build_parser().parse_args(["convert", "m", "--data", "d", "--sample-limits", "cell=9,keys=3"])
    assert cli_flags.spec_from_args(args).sample_limits == SampleLimits(cell=9, keys=3)


def test_the_app_passes_the_operators_limits_or_the_same_defaults():
    from studio.app.handlers import spec_from_ui

    assert spec_from_ui("m", "d", out="o").sample_limits == SampleLimits()
    assert spec_from_ui("m", "d", out="o", sample_limits="rows=3").sample_limits == SampleLimits(rows=3)


def test_size(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("a,b\n" + "1,2\n" * 300)  # 1,204 bytes
    refused(p, SampleLimits(size=1203), "size")
    assert len(read_sample(p, SampleLimits(size=1204))) == 300
    sparse = tmp_path / "big.csv"  # 200 MB on paper, a few bytes on disk
    with open(sparse, "wb") as f:
        f.write(b"a,b\n1,2\n")
        f.seek(200 * 1024**2)
        f.write(b"3,4\n")
    assert "larger than 64 MiB" in str(refused(sparse, SampleLimits(), "size"))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json-records", "json-columns", "json-split", "json-index"])
def test_rows(tmp_path, fmt):
    def write(n):
        p = tmp_path / (f"{fmt}-{n}." + ("csv" if fmt == "csv" else "jsonl" if fmt == "jsonl" else "json"))
        rows = [{"a": i, "b": "x"} for i in range(n)]
        if fmt == "csv":
            p.write_text("a,b\n" + "".join(f"{r['a']},x\n" for r in rows))
        elif fmt == "jsonl":
            p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif fmt == "json-records":
            p.write_text(json.dumps(rows))
        elif fmt == "json-columns":
            p.write_text(json.dumps({"a": [r["a"] for r in rows], "b": ["x"] * n}))
        elif fmt == "json-split":
            p.write_text(json.dumps({"columns": ["a", "b"], "data": [[r["a"], "x"] for r in rows]}))
        else:
            p.write_text(json.dumps({"a": {str(i): i for i in range(n)}, "b": {str(i): "x" for i in range(n)}}))
        return p

    limits = SampleLimits(rows=4)
    assert len(read_sample(write(4), limits)) == 4
    refused(write(5), limits, "rows")


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_cells(tmp_path, suffix):
    def write(rows):
        p = tmp_path / f"s{rows}.{suffix}"
        if suffix == "csv":  # a broken line past the limit: never parsed
            p.write_text("a,b,c\n" + "1,2,3\n" * rows + '"unclosed,4\n')
        else:
            p.write_text(json.dumps([{"a": 1, "b": 2, "c": 3}] * rows))
        return p

    limits = SampleLimits(cells=12)
    if suffix == "json":
        assert read_sample(write(4), limits).shape == (4, 3)
    err = refused(write(5), limits, "cells")
    assert "more than 12 cells" in str(err) if suffix == "csv" else "15 cells" in str(err)


def test_rows_default_is_refused_before_the_rest_is_parsed(tmp_path):
    p = tmp_path / "s.jsonl"
    # line 10,002 is not JSON: the rows limit stops reading at line 10,001, so it is never parsed
    p.write_text('{"a": 1}\n' * 10_001 + "{not json\n")
    assert "more than 10,000 records" in str(refused(p, SampleLimits(), "rows"))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json-records", "json-columns", "json-split"])
def test_columns(tmp_path, fmt):
    def write(n):
        names = [f"c{i}" for i in range(n)]
        p = tmp_path / (f"{fmt}-{n}." + ("csv" if fmt == "csv" else "jsonl" if fmt == "jsonl" else "json"))
        if fmt == "csv":
            p.write_text(",".join(names) + "\n" + ",".join(["1"] * n) + "\n")
        elif fmt == "jsonl":  # one key per record: the columns add up over the records
            p.write_text("".join(json.dumps({c: 1}) + "\n" for c in names))
        elif fmt == "json-records":
            p.write_text(json.dumps([{c: 1 for c in names}]))
        elif fmt == "json-columns":
            p.write_text(json.dumps({c: [1] for c in names}))
        else:
            p.write_text(json.dumps({"columns": names, "data": [[1] * n]}))
        return p

    limits = SampleLimits(columns=6)
    assert read_sample(write(6), limits).shape[1] == 6
    refused(write(7), limits, "columns")


def test_a_million_columns_is_refused_from_the_header_line(tmp_path):
    p = tmp_path / "wide.csv"
    p.write_text(",".join(f"c{i}" for i in range(1_000_000)) + "\n" + ",".join(["1"] * 1_000_000) + "\n")
    assert "1,000,000 fields" in str(refused(p, SampleLimits(), "columns"))


def test_many_columns_and_a_duplicate_name(tmp_path):
    p = tmp_path / "s.csv"  # the uniqueness check is one pass (it was list.count per column)
    names = [f"c{i}" for i in range(9_999)] + ["c5"]
    p.write_text(",".join(names) + "\n" + ",".join(["1"] * 10_000) + "\n")
    with pytest.raises(BatchError, match=r"duplicate column name\(s\): 'c5'\.\n"):
        read_sample(p)
    p.write_text(",".join(names[:-1]) + "\n" + ",".join(["1"] * 9_999) + "\n")
    assert read_sample(p).shape == (1, 9_999)


def test_keys_per_json_object(tmp_path):
    p = tmp_path / "keys.json"
    p.write_text(json.dumps([{"a": {f"k{i}": i for i in range(200_000)}}]))  # nested, not even a column
    assert "a JSON object has 200,000 keys" in str(refused(p, SampleLimits(), "keys"))
    p.write_text(json.dumps([{"a": {"x": 1, "y": 2, "z": 3}}]))
    assert read_sample(p, SampleLimits(keys=3)).shape == (1, 1)
    refused(p, SampleLimits(keys=2), "keys")


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
def test_depth(tmp_path, suffix):
    p = tmp_path / f"d.{suffix}"
    # a record (depth 1 in JSONL, 2 in a JSON array) holding lists nested inside each other
    inner = 31 if suffix == "json" else 32
    p.write_text(
        f'[{{"a": {"[" * (inner - 1)}{"]" * (inner - 1)}}}]'
        if suffix == "json"
        else f'{{"a": {"[" * (inner - 1)}{"]" * (inner - 1)}}}\n'
    )
    assert len(read_sample(p, SampleLimits(depth=32))) == 1
    refused(p, SampleLimits(depth=31), "depth")
    p.write_text(
        ("[" * 100_000 + "]" * 100_000) if suffix == "json" else '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
    )
    refused(p, SampleLimits(), "depth")  # was "unexpected RecursionError"


def test_a_csv_cell_holding_deeply_nested_brackets_is_text(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("a,b\n" + "[" * 100_000 + "]" * 100_000 + ",x\n")
    df = read_sample(p)
    assert df["a"].iat[0].startswith("[[[")


@pytest.mark.parametrize("where", ["csv-cell", "csv-name", "json-string", "json-key", "jsonl-string"])
def test_cell_length(tmp_path, where):
    def write(n):
        s = "x" * n
        if where == "csv-cell":
            p = tmp_path / "s.csv"
            p.write_text(f"a,b\n{s},1\n")
        elif where == "csv-name":
            p = tmp_path / "s.csv"
            p.write_text(f"{s},b\n1,2\n")
        elif where == "json-string":
            p = tmp_path / "s.json"
            p.write_text(json.dumps([{"a": ["y", s]}]))
        elif where == "json-key":
            p = tmp_path / "s.json"
            p.write_text(json.dumps([{s: 1}]))
        else:
            p = tmp_path / "s.jsonl"
            p.write_text(json.dumps({"a": s}) + "\n")
        return p

    assert len(read_sample(write(20), SampleLimits(cell=20))) == 1
    err = refused(write(21), SampleLimits(cell=20), "cell")
    assert "21 characters" in str(err)


def test_a_long_cell_under_the_default(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("review,label\n" + "word " * 400_000 + ",1\nok,2\n")
    err = refused(p, SampleLimits(), "cell")
    assert "column 'review', row 1" in str(err) and err.row == 1 and "2,000,000 characters" in str(err)


def test_roles_command_takes_the_option(tmp_path, capsys):
    p = tmp_path / "s.csv"
    p.write_text("a,b\n" + "1,2\n" * 20)
    assert cli.main(["roles", str(p), "--sample-limits", "rows=19"]) == 2
    assert "past the sample limit rows=19" in capsys.readouterr().err
    assert cli.main(["roles", str(p), "--sample-limits", "rows=20"]) == 0


def test_a_pathological_txt_sample_is_sniffed_on_its_start_only(tmp_path, monkeypatch):
    # csv.Sniffer is quadratic: 64 KiB of `,"` took 48 s when the whole start of the file was sniffed
    from studio.inputs import sample as sample_mod

    p = tmp_path / "s.txt"
    p.write_text(',"' * 40_000)
    calls = []
    real = sample_mod.csv.Sniffer.sniff

    def spy(self, sample, delimiters=None):
        calls.append(len(sample))
        return real(self, sample, delimiters)

    monkeypatch.setattr(sample_mod.csv.Sniffer, "sniff", spy)
    try:
        read_sample(p)
    except BatchError:
        pass  # refused or read: either way, only the start was sniffed
    assert calls and max(calls) <= sample_mod.SNIFF_CHARS


def test_jsonl_lines_split_on_newlines_only(tmp_path):
    p = tmp_path / "s.jsonl"  # U+2028 / U+2029 are legal inside a JSON string; str.splitlines() splits on them
    p.write_text(
        json.dumps({"a": "x\u2028y"}, ensure_ascii=False) + "\r\n" + json.dumps({"a": "z"}) + "\n",
        encoding="utf-8",
        newline="",
    )
    assert read_sample(p)["a"].tolist() == ["x\u2028y", "z"]


def test_the_app_preview_reads_with_the_specs_limits(tmp_path):
    from studio.app import worker

    p = tmp_path / "keys.json"
    p.write_text(json.dumps([{"a": {f"k{i}": i for i in range(200_000)}, "b": "x"}]))

    def preview(limits):
        spec = ConvertSpec("-", str(p), sample_limits=limits)
        return worker.task_preview({"checkpoint": None, "data": str(p), "spec": spec}, lambda *a: None)

    refused_ = preview(SampleLimits())
    assert "past the sample limit keys=100,000" in refused_["data_error"] and not refused_["columns"]
    read = preview(SampleLimits(keys=200_000))
    assert read["data_error"] is None and [c["name"] for c in read["columns"]] == ["a", "b"]
