"""studio.sources.keys: wrapper-prefix normalisation of state-dict keys."""

from __future__ import annotations

import pytest
import torch

from studio.errors import CheckpointError
from studio.sources.keys import closest_prefix, match_keys, normalize_keys

EXPECTED = ["encoder.layer.0.weight", "encoder.layer.0.bias", "head.weight", "tab_mean"]


def _sd(keys):
    return {k: torch.full((1,), float(i)) for i, k in enumerate(keys)}


def test_matching_keys_pass_through_unchanged():
    sd = _sd(EXPECTED)
    out = normalize_keys(sd, EXPECTED)
    assert list(out) == EXPECTED
    assert all(out[k] is sd[k] for k in EXPECTED)


@pytest.mark.parametrize(
    "prefix",
    [
        "model.",
        "module.",
        "_fsdp_wrapped_module.",
        "_orig_mod.",
        "_forward_module.",
        "module.module.",
        "model._orig_mod.",
        "_orig_mod.module.",
        "model.module._fsdp_wrapped_module.",
    ],
)
def test_known_prefixes_are_stripped(prefix):
    sd = _sd([prefix + k for k in EXPECTED])
    out = normalize_keys(sd, EXPECTED)
    assert sorted(out) == sorted(EXPECTED)
    assert torch.equal(out["head.weight"], sd[prefix + "head.weight"])


def test_fsdp_segments_inside_keys_are_dropped():
    keys = [
        "_fsdp_wrapped_module.encoder.layer.0._fsdp_wrapped_module.weight",
        "_fsdp_wrapped_module.encoder.layer.0._fsdp_wrapped_module.bias",
        "_fsdp_wrapped_module.head.weight",
        "_fsdp_wrapped_module.tab_mean",
    ]
    out = normalize_keys(_sd(keys), EXPECTED)
    assert sorted(out) == sorted(EXPECTED)


def test_real_model_prefix_is_kept_when_expected():
    expected = ["model.weight", "model.bias"]  # a module whose attribute really is called "model"
    out = normalize_keys(_sd(expected), expected)
    assert sorted(out) == sorted(expected)
    # ...and a Lightning wrapper around it adds one more "model."
    out = normalize_keys(_sd(["model." + k for k in expected]), expected)
    assert sorted(out) == sorted(expected)


def test_model_segment_in_the_middle_is_not_stripped():
    match = match_keys(["encoder.model.weight"], ["encoder.weight"])
    assert match.missing == ["encoder.weight"] and match.unexpected == ["encoder.model.weight"]


def test_missing_keys_raise_and_are_named():
    sd = _sd(EXPECTED[:-1])
    with pytest.raises(CheckpointError) as e:
        normalize_keys(sd, EXPECTED)
    assert "Missing 1 keys" in str(e.value) and "'tab_mean'" in str(e.value)


def test_unexpected_keys_raise_unless_allowed():
    sd = _sd(EXPECTED + ["loss.weight"])
    with pytest.raises(CheckpointError) as e:
        normalize_keys(sd, EXPECTED)
    assert "Unexpected 1 keys" in str(e.value) and "'loss.weight'" in str(e.value)
    out = normalize_keys(sd, EXPECTED, allow_unexpected=True)
    assert sorted(out) == sorted(EXPECTED)


def test_unknown_prefix_is_reported_as_closest_match():
    sd = _sd(["backbone." + k for k in EXPECTED])
    with pytest.raises(CheckpointError) as e:
        normalize_keys(sd, EXPECTED)
    msg = str(e.value)
    assert "extra prefix 'backbone.'" in msg and "(4 keys)" in msg


def test_lacking_prefix_is_reported():
    hint = closest_prefix(["net.head.weight", "net.head.bias"], ["head.weight", "head.bias"])
    assert hint is not None and "lack the prefix 'net.'" in hint
    assert closest_prefix(["a.b"], ["c.d"]) is None


def test_long_listings_are_cut():
    expected = [f"layer.{i}.weight" for i in range(12)]
    with pytest.raises(CheckpointError) as e:
        normalize_keys({}, expected)
    assert "Missing 12 keys" in str(e.value) and "and 7 more" in str(e.value)


def test_two_tensors_for_one_key_raise():
    with pytest.raises(CheckpointError, match="two tensors for 'head.weight'"):
        normalize_keys(_sd(["head.weight", "module.head.weight"]), ["head.weight"])


def test_not_a_mapping_or_bad_keys_raise():
    with pytest.raises(CheckpointError, match="found list"):
        normalize_keys([1, 2], EXPECTED)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="keys must be strings"):
        normalize_keys({0: torch.zeros(1)}, EXPECTED)
