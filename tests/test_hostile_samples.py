"""Samples built to hurt, of kinds the listed cases do not name: each ends in a BatchError naming the file
(and the line where there is one), never an internal error."""

import pytest

from studio.errors import BatchError
from studio.inputs.sample import MAX_INT_DIGITS, read_sample


@pytest.mark.parametrize(
    "name, text, where",
    [
        ("big.json", '[{"a": %s, "t": "x"}]' % ("9" * 100_000), "big.json: a number has 100,000 digits"),
        ("big.jsonl", '{"a": 1}\n{"a": %s}\n' % ("9" * 5_000), "big.jsonl: line 2: a number has 5,000 digits"),
    ],
)
def test_a_json_number_past_pythons_digit_limit_is_refused_by_name(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(BatchError) as e:
        read_sample(path)
    assert str(e.value).startswith(where)


def test_a_json_number_at_the_digit_limit_is_read(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text('[{"a": %s, "t": "x"}]' % ("9" * MAX_INT_DIGITS))
    assert read_sample(path).shape == (1, 2)
