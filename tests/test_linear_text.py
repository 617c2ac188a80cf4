"""Every parser and pattern that sees an upload's text is linear in it: a sample of megabyte-long names and
cells (within the sample limits: `cell` is 1,000,000 characters) is read, typed and given roles in seconds.

Each case here was quadratic or worse before (a regex backtracking over a long run): a 20,000-character
cell took 8.5 s, so a 1,000,000-character one would have taken hours. The bound below is far above what
linear code needs (well under a second each) and far below what quadratic code takes: not a speed target.
"""

import time

import pytest

from studio.artifacts import scrub_paths
from studio.inputs import roles
from studio.inputs.cells import cell_kind
from studio.inputs.sample import read_sample

LONG = 1_000_000
BOUND_S = 10.0


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


@pytest.mark.parametrize(
    "cell, kind",
    [
        ("1" * LONG + "x", "str"),
        ("1" * LONG + ".", "number"),
        ("." + "1" * LONG + "e", "str"),
        ("-" + "1" * LONG + "e+", "str"),
    ],
    ids=["digits-then-letter", "digits-then-dot", "dot-digits-e", "signed-exponent"],
)
def test_a_megabyte_cell_is_typed_in_linear_time(cell, kind):
    got, seconds = _timed(cell_kind, cell)
    assert seconds < BOUND_S, f"{seconds:.1f} s"
    assert got == kind
    assert (cell_kind("12.5e3"), cell_kind("12.5e3x")) == ("number", "str")  # still tells numbers from text


@pytest.mark.parametrize("name", ["A" * LONG, "aA" * (LONG // 2), "A" * LONG + "b"], ids=["caps", "camel", "caps-word"])
def test_a_megabyte_column_name_gets_its_role_in_linear_time(name):
    tokens, seconds = _timed(roles._tokens, name)
    assert seconds < BOUND_S, f"{seconds:.1f} s"
    assert "".join(tokens) == name.lower()  # split into words, nothing lost
    assert roles._tokens("HTTPServerID") == ["http", "server", "id"]  # as before


def test_a_sample_with_a_megabyte_name_and_cell_is_read_and_described_in_linear_time(tmp_path):
    sample = tmp_path / "s.csv"
    sample.write_text(f"{'A' * LONG},price\n{'1' * (LONG - 1)}x,3\nhello,4\n")  # at the cell limit
    start = time.perf_counter()
    df = read_sample(sample)
    suggested = roles.suggest_roles(df)
    seconds = time.perf_counter() - start
    assert seconds < BOUND_S, f"{seconds:.1f} s"
    assert suggested["price"] == "tabular" and len(suggested) == 2


def test_scrub_paths_is_linear_in_a_megabyte_message():
    text = "x" * (5 * LONG) + "/tmp/studio-ckpt-ab12/model/config.json is broken"
    shown, seconds = _timed(scrub_paths, text, ["/srv/uploads/a/weights.pt"])
    assert seconds < BOUND_S, f"{seconds:.1f} s"
    assert shown == "model/config.json is broken"  # the unpack folder dropped with the path that led to it


@pytest.mark.parametrize(
    "quoted",
    ["A" * 5 * LONG, ("B" * 400 + " ") * 20_000, "x " * (LONG // 2)],
    ids=["one-5MB-name", "many-long-names", "many-short-words"],
)
def test_no_error_message_quotes_a_megabyte_back(quoted):
    """Every StudioError's message and hint are bounded (errors.bounded): long runs cut saying how long
    they were, the whole at most MESSAGE_CHARS, in linear time."""
    from studio.errors import MESSAGE_CHARS, WORD_CHARS, BatchError

    e, seconds = _timed(lambda: BatchError(f"column {quoted!r} is not in the file.", hint=quoted))
    assert seconds < BOUND_S, f"{seconds:.1f} s"
    assert len(e.message) <= MESSAGE_CHARS + 100 and len(e.hint) <= MESSAGE_CHARS + 100
    assert max(len(w) for w in e.message.split()) <= WORD_CHARS + 5
    assert e.message.startswith("column '") and e.message.endswith("is not in the file.")
    if len(quoted) == 5 * LONG:
        assert f"({len(quoted) + 2:,} characters)" in e.message  # says how long the quoted name was


def test_the_preview_cuts_megabyte_cells_before_they_reach_the_page(tmp_path):
    from studio.pipeline import PREVIEW_CELL_CHARS, preview

    sample = tmp_path / "s.csv"
    sample.write_text(f"review,price\n{'w' * (LONG - 1)},3\nshort,4\n")
    rows = preview(None, str(sample))["rows"]
    assert rows[1] == {"review": "short", "price": 4}  # short cells as read
    assert rows[0]["review"] == "w" * PREVIEW_CELL_CHARS + f"... ({LONG - 1:,} characters)"
