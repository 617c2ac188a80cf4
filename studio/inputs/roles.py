"""Describing a sample's columns and suggesting a role (text / tabular / ignore) for each.

describe_columns looks at the cells (typed by studio.inputs.sample) and the column's name; suggest_roles and
resolve_roles also fit the suggestions to what a loaded model takes.
"""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import pandas as pd

from studio.errors import BatchError
from studio.inputs.cells import column_kind, is_missing, shorten
from studio.inputs.sample import duplicates, file_error
from studio.sources.base import LoadedModel

ID_TOKENS = {"id", "ids", "uuid", "guid", "key", "pk"}
LABEL_NAMES = {"label", "labels", "target", "targets", "y", "class", "classes", "gold"}
LABEL_TOKENS = {"label", "labels", "target", "class"}
INDEX_NAMES = {"index", "idx", ""}

# "Long / free text": several words on average, a long average length, or some long values.
TEXT_MEAN_WORDS, TEXT_MEAN_CHARS, TEXT_MAX_WORDS = 3.0, 25.0, 6
_CODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.:/#]*$")


@dataclass
class ColumnInfo:
    """What the studio sees in one column (shown in the app's role table and the CLI)."""

    name: str
    detected: str  # "text" | "number" | "bool" | "vector" | "id" | "empty" | "other"
    example: str  # first non-empty value, shortened for display
    suggested: str  # "text" | "tabular" | "ignore"
    reason: str = ""  # why that suggestion, in a few words
    missing: int = 0  # empty cells


def _tokens(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    spaced = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", spaced)  # HTTPServer -> HTTP_Server, linear in the name
    return [t for t in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if t]


def _id_like_name(name: str) -> bool:
    low = name.strip().lower()
    if low in INDEX_NAMES or low.startswith("unnamed:"):
        return True
    toks = _tokens(name)
    return bool(toks) and (toks[-1] in ID_TOKENS or low.endswith(("uuid", "guid")))


def _label_like_name(name: str) -> bool:
    low = name.strip().lower()
    toks = _tokens(name)
    return low in LABEL_NAMES or (bool(toks) and (toks[-1] in LABEL_TOKENS or toks[0] == "label"))


def _code_like(values: list[str]) -> bool:
    """Unique short alphanumeric codes with digits (order numbers, uuids, SKUs)."""
    vals = [v.strip() for v in values]
    return (
        bool(vals)
        and len(set(vals)) == len(vals)
        and all(len(v) <= 64 and _CODE_RE.match(v) and any(c.isdigit() for c in v) for v in vals)
    )


def _free_text(values: list[str]) -> bool:
    if not values:
        return False
    words = [len(v.split()) for v in values]
    return (
        sum(words) / len(words) >= TEXT_MEAN_WORDS
        or sum(len(v) for v in values) / len(values) >= TEXT_MEAN_CHARS
        or max(words) >= TEXT_MAX_WORDS
    )


# --------------------------------------------------------------------------------------------------
# Describing and suggesting


def prepared_frame(df: pd.DataFrame, file: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise BatchError(f"Expected a pandas DataFrame, got {type(df).__name__}.", file=file or None)
    names = [str(c) for c in df.columns]
    dupes = duplicates(names)
    if dupes:
        raise file_error(file, f"duplicate column name(s): {', '.join(map(repr, dupes))}.", column=dupes[0])
    if list(df.columns) != names or not isinstance(df.index, pd.RangeIndex) or df.index.start != 0:
        df = df.copy()
        df.columns = names
        df.index = pd.RangeIndex(len(df))
    return df


def describe_column(name: str, series: pd.Series) -> ColumnInfo:
    values = series.tolist()
    kind, kinds = column_kind(values)
    missing = sum(k in ("missing", "na") for k in kinds) if kind != "text" else kinds.count("missing")
    first = next((v for v, k in zip(values, kinds) if k not in ("missing", "na")), None)
    example = "" if first is None else shorten(first)
    strings = [str(v) for v, k in zip(values, kinds) if k not in ("missing",)]
    detected = kind
    if kind == "text" and _code_like(strings):
        detected = "id"
    if _id_like_name(name) and kind != "empty":
        detected = "id"
    if detected == "empty":
        return ColumnInfo(name, detected, example, "ignore", "no values", missing)
    if detected == "id":
        why = "name looks like an identifier" if _id_like_name(name) else "unique short codes"
        return ColumnInfo(name, detected, example, "ignore", why, missing)
    if _label_like_name(name):
        return ColumnInfo(name, detected, example, "ignore", "name looks like a label/target", missing)
    if kind in ("number", "bool", "vector"):
        return ColumnInfo(name, detected, example, "tabular", f"{kind} values", missing)
    if kind == "text":
        if _free_text(strings):
            return ColumnInfo(name, detected, example, "text", "free text (several words)", missing)
        return ColumnInfo(name, detected, example, "ignore", "short strings (a category?)", missing)
    return ColumnInfo(name, detected, example, "ignore", "mixed or nested values", missing)


def describe_columns(df: pd.DataFrame) -> list[ColumnInfo]:
    """What each column holds and the role the studio suggests for it, in file order."""
    df = prepared_frame(df, df.attrs.get("file", "") if isinstance(df, pd.DataFrame) else "")
    return [describe_column(c, df[c]) for c in df.columns]


def suggest_roles(df: pd.DataFrame, model: LoadedModel | None = None) -> dict[str, str]:
    """Suggested role per column. With `model`, suggestions also fit what the model takes (a text model
    gets its best text column, columns the model cannot take are ignored)."""
    if model is None:
        return {c.name: c.suggested for c in describe_columns(df)}
    return resolve_roles(prepared_frame(df, df.attrs.get("file", "")), model, {})


def resolve_roles(
    df: pd.DataFrame, model: LoadedModel, explicit: dict[str, str], fed: AbstractSet[str] = frozenset()
) -> dict[str, str]:
    """Final role per column: explicit roles win; the others get the suggestion adjusted to the model.
    fed: tabular inputs whose columns the user chose (--tabular)."""
    infos = {c.name: c for c in describe_columns(df)}
    roles = {c: explicit.get(c, infos[c].suggested) for c in df.columns}
    free = [c for c in df.columns if c not in explicit]

    takes_text = bool(model.text_inputs)
    # a checkpoint that names its text column (the multimodal loader puts it in info["text_field"])
    text_field = (model.info or {}).get("text_field") if isinstance(model.info, dict) else None
    if takes_text and text_field in free and "text" not in explicit.values():
        for c in free:
            if roles[c] == "text":
                roles[c] = "ignore"
        roles[text_field] = "text"
    elif not takes_text or "text" in explicit.values():
        for c in free:
            if roles[c] == "text":
                roles[c] = "ignore"
    elif not any(r == "text" for r in roles.values()):
        # the model needs text and nothing looks like free text: take the wordiest string column
        cands = [c for c in free if infos[c].detected == "text" and not _label_like_name(c)]
        if cands:

            def words(c):
                vals = [str(v) for v in df[c].tolist() if not is_missing(v)]
                return sum(len(v.split()) for v in vals) / max(len(vals), 1)

            roles[max(cands, key=words)] = "text"

    tab_inputs = [i for i in model.tabular_inputs if i.name not in fed]
    named = {i.column for i in tab_inputs if i.column}
    # inputs still open to the columns mapped tabular: those naming no column, or a column the file lacks
    open_inputs = [i for i in tab_inputs if not i.column or i.column not in df.columns]
    for c in free:
        if c in named:
            roles[c] = "tabular"
        elif roles[c] == "tabular" and not open_inputs:
            roles[c] = "ignore"
    return roles
