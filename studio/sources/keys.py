"""State-dict key normalisation: make a checkpoint's keys fit the module that will load them.

Training wrappers rename parameters: Lightning stores `model.<name>` (whatever attribute held the
network), DataParallel/DDP add `module.`, FSDP adds `_fsdp_wrapped_module.` (possibly at every wrapped
level, i.e. in the middle of a key), `torch.compile` adds `_orig_mod.`, activation checkpointing adds
`_checkpoint_wrapped_module.`, Lightning Fabric adds `_forward_module.`.

`match_keys` works out which checkpoint key feeds which expected key, stripping known wrapper
prefixes only where that makes a key match; `normalize_keys` applies the result and raises a
`CheckpointError` naming the missing / unexpected keys (and the prefix that seems to be in the way)
when the checkpoint does not fit. `locate_prefix` finds the prefix a module's keys sit under (any
attribute, e.g. `backbone.`; wrapper segments ignored); `closest_rename` names a renaming in the middle of
the keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from studio.errors import CheckpointError

# Segments that only wrappers insert; they are dropped wherever they occur in a key.
WRAPPER_SEGMENTS: tuple[str, ...] = (
    "_fsdp_wrapped_module",
    "_orig_mod",
    "_checkpoint_wrapped_module",
    "_forward_module",
)
# Leading prefixes stripped (repeatedly, in any order) until the key matches an expected one.
# "model." and "module." can be real attribute names, so they are only ever stripped at the front
# and only when the stripped key is expected.
LEADING_PREFIXES: tuple[str, ...] = ("module.", "model.") + tuple(s + "." for s in WRAPPER_SEGMENTS)

SHOW = 5  # how many keys an error message lists


@dataclass
class KeyMatch:
    """How a checkpoint's keys map onto the expected keys.

    mapping:    expected key -> checkpoint key that feeds it.
    missing:    expected keys no checkpoint key feeds.
    unexpected: checkpoint keys that feed nothing.
    """

    mapping: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected


def unwrap(key: str) -> str:
    """The key without the segments only training wrappers insert (anywhere in the key)."""
    return ".".join(p for p in key.split(".") if p not in WRAPPER_SEGMENTS)


def _candidates(key: str) -> list[str]:
    """The key itself, then ever shorter forms with wrapper segments and leading prefixes removed."""
    out = [key]
    cur = unwrap(key)
    if cur != key:
        out.append(cur)
    changed = True
    while changed:
        changed = False
        for prefix in LEADING_PREFIXES:
            if cur.startswith(prefix) and len(cur) > len(prefix):
                cur = cur[len(prefix) :]
                out.append(cur)
                changed = True
                break
    return out


def match_keys(keys: Iterable[str], expected_keys: Iterable[str]) -> KeyMatch:
    """Map checkpoint `keys` onto `expected_keys`, stripping known wrapper prefixes only where needed.

    A key that already matches is kept as is. Two checkpoint keys that would feed the same expected
    key raise `CheckpointError` (the checkpoint holds two copies and it is unclear which is meant).
    """
    expected = list(expected_keys)
    expected_set = set(expected)
    result = KeyMatch()
    for key in keys:
        target = next((c for c in _candidates(key) if c in expected_set), None)
        if target is None:
            result.unexpected.append(key)
            continue
        if target in result.mapping:
            raise CheckpointError(
                f"The checkpoint holds two tensors for {target!r}: {result.mapping[target]!r} and {key!r}.",
                hint="Save the state dict of the inner model only, not of several wrappers around it.",
            )
        result.mapping[target] = key
    result.missing = [k for k in expected if k not in result.mapping]
    return result


def closest_prefix(missing: Iterable[str], unexpected: Iterable[str], limit: int = 200) -> str | None:
    """Describe the prefix that most often separates an unexpected key from a missing one.

    Returns e.g. "checkpoint keys carry an extra prefix 'backbone.'" or None when no pattern shows.
    """
    missing, unexpected = list(missing)[:limit], list(unexpected)[:limit]
    extra: Counter[str] = Counter()
    lacking: Counter[str] = Counter()
    for u in unexpected:
        for m in missing:
            if u != m and u.endswith("." + m):
                extra[u[: len(u) - len(m)]] += 1
            elif u != m and m.endswith("." + u):
                lacking[m[: len(m) - len(u)]] += 1
    if not extra and not lacking:
        return None
    best_extra = extra.most_common(1)[0] if extra else ("", 0)
    best_lacking = lacking.most_common(1)[0] if lacking else ("", 0)
    if best_extra[1] >= best_lacking[1]:
        return f"checkpoint keys carry an extra prefix {best_extra[0]!r} ({best_extra[1]} keys)"
    return f"checkpoint keys lack the prefix {best_lacking[0]!r} ({best_lacking[1]} keys)"


def _listing(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:SHOW])
    more = f" and {len(keys) - SHOW} more" if len(keys) > SHOW else ""
    return f"{shown}{more}"


def describe_mismatch(match: KeyMatch, what: str = "the model") -> str:
    """One message naming the first missing / unexpected keys and the likely prefix problem."""
    parts = [f"The checkpoint's weights do not fit {what}."]
    if match.missing:
        parts.append(f"Missing {len(match.missing)} keys: {_listing(match.missing)}.")
    if match.unexpected:
        parts.append(f"Unexpected {len(match.unexpected)} keys: {_listing(match.unexpected)}.")
    hint = closest_prefix(match.missing, match.unexpected)
    if hint:
        parts.append(f"Closest match: {hint}.")
    return " ".join(parts)


def normalize_keys(
    state_dict: Mapping[str, Any],
    expected_keys: Iterable[str],
    *,
    allow_unexpected: bool = False,
    what: str = "the model",
) -> dict[str, Any]:
    """Return `state_dict` re-keyed to `expected_keys` (wrapper prefixes stripped where that fits).

    Raises `CheckpointError` when an expected key has no tensor, or (unless `allow_unexpected`) when
    the checkpoint holds keys that feed nothing. The message lists the first few of each and the
    closest prefix match.
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"Expected a state dict (a mapping of names to tensors), found {type(state_dict).__name__}."
        )
    bad = [k for k in state_dict if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"State dict keys must be strings; found {_listing([str(k) for k in bad])}.")
    match = match_keys(state_dict.keys(), expected_keys)
    if match.missing or (match.unexpected and not allow_unexpected):
        raise CheckpointError(
            describe_mismatch(match, what),
            hint="Check that the checkpoint and its config belong together (same model size and fields).",
        )
    return {target: state_dict[source] for target, source in match.mapping.items()}


def locate_prefix(keys: list[str], expected: list[str]) -> tuple[str, dict[str, str]]:
    """Find the prefix under which `expected` (a module's own keys) sit in the checkpoint `keys`.

    Returns (prefix, mapping expected key -> checkpoint key). The prefix is the one most expected
    keys are found under (wrapper segments ignored); "" when they sit at the top level."""
    exp = set(expected)
    votes: Counter[str] = Counter()
    for k in keys:
        parts = unwrap(k).split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in exp:
                votes[".".join(parts[:i])] += 1
                break
    if not votes:
        return "", {}
    prefix = min(votes, key=lambda p: (-votes[p], len(p)))
    mapping: dict[str, str] = {}
    lead = prefix + "." if prefix else ""
    for k in keys:
        u = unwrap(k)
        if u.startswith(lead) and u[len(lead) :] in exp:
            target = u[len(lead) :]
            if target in mapping:
                raise CheckpointError(
                    f"The checkpoint holds two tensors for {target!r}: {mapping[target]!r} and {k!r}.",
                    hint="Save the state dict of the inner model only, not of several wrappers around it.",
                )
            mapping[target] = k
    return prefix, mapping


def closest_rename(missing: list[str], unexpected: list[str], limit: int = 200) -> str | None:
    """When keys differ in the middle (e.g. 'embed.' vs 'embeddings.'), the most common renaming:
    the prefixes of missing and unexpected keys that share a tail of at least two segments."""
    votes: Counter[tuple[str, str]] = Counter()
    for m in missing[:limit]:
        mp = m.split(".")
        best: tuple[int, str, str] | None = None
        for u in unexpected[:limit]:
            up = u.split(".")
            n = 0
            while n < min(len(mp), len(up)) and mp[-1 - n] == up[-1 - n]:
                n += 1
            if n >= 2 and n < len(mp) and (best is None or n > best[0]):
                best = (n, ".".join(up[:-n]) + ".", ".".join(mp[:-n]) + ".")
        if best:
            votes[(best[1], best[2])] += 1
    if not votes:
        return None
    (have, want), n = votes.most_common(1)[0]
    return f"checkpoint keys under {have!r} look like the expected {want!r} ({n} keys)"
