"""Sample frame + role mapping -> the named tensors a model takes (studio.inputs.batch.build_batch).

Reading the file is studio.inputs.sample, suggesting roles studio.inputs.roles; text is tokenized by studio.inputs._tokens and
tabular columns are matched to inputs and coerced by studio.inputs.tabular.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from studio.inputs._tokens import tokenize_columns
from studio.inputs.cells import column_kind, is_missing, jsonable
from studio.inputs.roles import describe_column, prepared_frame, resolve_roles
from studio.inputs.sample import file_error
from studio.inputs.tabular import columns_text, describe_inputs, explicit_feeds, match_tabular, one_hot, tabular_values
from studio.sources.base import LoadedModel, ModelInput
from studio.spec import ROLES, default


@dataclass
class Batch:
    """Named tensors built from a sample file and a role mapping."""

    tensors: dict[str, torch.Tensor]  # graph input name -> tensor, in model.inputs order (only inputs fed)
    roles: dict[str, str]  # final role of EVERY column in the file, in file order
    rows: int
    text_columns: list[str]
    tabular: dict[str, list[str]]  # graph input name -> the columns feeding it, in order (concatenated)
    ignored: dict[str, list]  # ignored column -> JSON-able values per row (shown beside predictions)
    tokenizer_settings: dict  # {"max_length", "padding", "truncation", "id_dtype", "pair": bool}
    file: str
    widths: dict[str, int] = field(default_factory=dict)  # tabular graph input -> features per row
    # tabular graph input -> [{"column", "start", "width"}]: which feature indices each column fills
    features: dict[str, list[dict]] = field(default_factory=dict)
    # odd cells used as they are (empty text, ...), the max length lowered to the model's positions, ...
    warnings: list[str] = field(default_factory=list)


class BatchOptions(Protocol):
    """The options build_batch reads; a ConvertSpec is one (read-only: a frozen dataclass is one too)."""

    @property
    def max_length(self) -> int: ...
    @property
    def id_dtype(self) -> str: ...
    @property
    def fill_value(self) -> float | None: ...
    # tabular input -> its columns (names or FIRST..LAST ranges)
    @property
    def tabular(self) -> Mapping[str, tuple[str, ...]]: ...


@dataclass(frozen=True)
class BatchDefaults:
    """BatchOptions with the ConvertSpec defaults (build_batch without a spec)."""

    max_length: int = default("max_length")
    id_dtype: str = default("id_dtype")
    fill_value: float | None = default("fill_value")
    tabular: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Building tensors


def _string_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if column_kind(df[c].tolist())[0] == "text"]


def _ignored_categories(df: pd.DataFrame, final: dict[str, str], explicit: dict[str, str], file: str) -> list[str]:
    """A warning for each short-string (category) column the studio left out because the model takes no such
    field: said, never silently dropped."""
    out = []
    for c in df.columns:
        if final[c] != "ignore" or c in explicit:
            continue
        info = describe_column(c, df[c])
        if info.detected == "text" and info.reason.startswith("short strings"):
            seen = list(dict.fromkeys(str(v).strip() for v in df[c].tolist() if not is_missing(v)))
            out.append(
                f"{file + ': ' if file else ''}column {c!r} holds categories ({columns_text(seen, 6)}); "
                "the model takes no such field (its checkpoint carries no vocabulary for it), so the column "
                "is ignored."
            )
    return out


def _explicit_roles(df: pd.DataFrame, roles: dict[str, str] | None, file: str) -> dict[str, str]:
    """The user's roles, checked: every column is in the file, every role one of ROLES."""
    explicit: dict[str, str] = {}
    for col, role in (roles or {}).items():
        col = str(col)
        if col not in df.columns:
            close = difflib.get_close_matches(col, list(df.columns), n=1)
            raise file_error(
                file,
                f"a role is given for column {col!r}, which is not in the file. "
                f"Columns in the file: {_all_columns(df)}.",
                column=col,
                hint=f"Did you mean {close[0]!r}?" if close else None,
            )
        r = str(role).strip().lower()
        if r not in ROLES:
            raise file_error(file, f"role {role!r} for column {col!r} is not one of {', '.join(ROLES)}.", column=col)
        explicit[col] = r
    return explicit


def _all_columns(df: pd.DataFrame) -> str:
    return ", ".join(map(repr, df.columns))


def _with_chosen(explicit: dict[str, str], chosen: dict[str, list[str]], file: str) -> dict[str, str]:
    """The columns chosen to feed an input (--tabular) are mapped tabular; mapped otherwise is an error."""
    out = dict(explicit)
    for name, cols in chosen.items():
        for c in cols:
            if out.get(c, "tabular") != "tabular":
                raise file_error(
                    file,
                    f"column {c!r} is chosen to feed input {name!r} (--tabular) but mapped {out[c]!r}.",
                    column=c,
                    hint=f"Map it tabular, or leave it out of --tabular {name}=...",
                )
            out[c] = "tabular"
    return out


def _text_tensors(
    df: pd.DataFrame, model: LoadedModel, text_cols: list[str], spec: BatchOptions, file: str
) -> tuple[dict[str, torch.Tensor], dict, list[str]]:
    """The text columns (at most two, or one beside tabular inputs) -> token tensors, settings, warnings."""
    settings = {
        "max_length": int(spec.max_length),
        "padding": "longest",
        "truncation": True,
        "id_dtype": spec.id_dtype,
        "pair": False,
    }
    if not text_cols:
        if any(i.required for i in model.text_inputs):
            cands = _string_columns(df)
            raise file_error(
                file,
                "the model takes text, but no column is mapped text. "
                + (
                    f"String columns in the file: {', '.join(map(repr, cands))}."
                    if cands
                    else f"The file has no string column (columns: {_all_columns(df)})."
                ),
                hint=f"Map one with --role {cands[0]}=text." if cands else None,
            )
        return {}, settings, []
    if not model.text_inputs:
        raise file_error(
            file,
            f"column(s) {', '.join(map(repr, text_cols))} are mapped text, but the model "
            f"takes no text inputs (it takes: {describe_inputs(model.inputs)}).",
            column=text_cols[0],
            hint=f"Map {text_cols[0]!r} to tabular or ignore.",
        )
    if model.tokenizer is None:
        raise file_error(
            file,
            f"column {text_cols[0]!r} is mapped text, but the checkpoint carries no "
            "tokenizer, so the text cannot be turned into token ids.",
            column=text_cols[0],
            hint="Include the tokenizer files (tokenizer.json / vocab.txt ...) with the checkpoint.",
        )
    limit = 1 if model.tabular_inputs else 2
    if len(text_cols) > limit:
        what = (
            "a text-only model takes one text column or a pair of two"
            if limit == 2
            else "a model with tabular inputs takes one text column"
        )
        raise file_error(
            file,
            f"{len(text_cols)} columns are mapped text ({', '.join(map(repr, text_cols))}); {what}.",
            column=text_cols[limit],
            hint=f"Map the others to ignore (e.g. --role {text_cols[limit]}=ignore).",
        )
    return tokenize_columns(df, model, text_cols, file, int(spec.max_length), spec.id_dtype)


def _check_width(arr: np.ndarray, inp: ModelInput, cols: list[str], file: str) -> None:
    want, name = inp.width, inp.name
    if want is None or arr.shape[1] == int(want):
        return
    if len(cols) == 1:
        raise file_error(
            file,
            f"column {cols[0]!r} has {arr.shape[1]} feature(s) per row, but the model's "
            f"input {name!r} expects width {want}.",
            column=cols[0],
            hint="A vector feature is written as a JSON array of numbers, e.g. [0.1, 0.2, 0.3], "
            f"or spread over {want} numeric columns (--tabular {name}=COL1,COL2,...).",
        )
    raise file_error(
        file,
        f"the model's input {name!r} expects width {want}, but the {len(cols)} columns "
        f"feeding it give {arr.shape[1]} features: {columns_text(cols, 40)}.",
        column=cols[0],
        hint=f"Choose exactly its columns with --tabular {name}=COL1,COL2,... "
        "(ranges: FIRST..LAST), or map the others to ignore.",
    )


def _tabular_tensors(
    df: pd.DataFrame,
    model: LoadedModel,
    final: dict[str, str],
    chosen: dict[str, list[str]],
    fill: float | None,
    file: str,
):
    """The columns mapped tabular -> (tensors, feeds, widths, features) for the model's tabular inputs."""
    arrays: dict[str, np.ndarray] = {}

    def values(col: str) -> np.ndarray:
        if col not in arrays:
            arrays[col] = tabular_values(df, col, fill, file)
        return arrays[col]

    feeds = match_tabular(df, model, final, file, chosen, width_of=lambda c: int(values(c).shape[1]))
    by_name = {i.name: i for i in model.inputs}
    tensors: dict[str, torch.Tensor] = {}
    widths: dict[str, int] = {}
    features: dict[str, list[dict]] = {}
    for name, cols in feeds.items():
        vocab = by_name[name].vocab
        if vocab and len(cols) != 1:
            raise file_error(
                file,
                f"the model's categorical input {name!r} takes one column of categories, but "
                f"{len(cols)} are chosen: {columns_text(cols)}.",
                column=cols[0],
            )
        parts = [one_hot(df, cols[0], vocab, name, file)] if vocab else [values(c) for c in cols]
        arr = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        _check_width(arr, by_name[name], cols, file)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        widths[name] = int(arr.shape[1])
        start, features[name] = 0, []
        for c, part in zip(cols, parts):
            features[name].append(
                {
                    "column": c,
                    "start": start,
                    "width": int(part.shape[1]),
                    **({"encoding": "one-hot", "vocab": list(vocab)} if vocab else {}),
                }
            )
            start += int(part.shape[1])
    return tensors, feeds, widths, features


def build_batch(
    df: pd.DataFrame, model: LoadedModel, roles: dict[str, str] | None, spec: BatchOptions | None = None, file: str = ""
) -> Batch:
    """Turn a sample frame and a role mapping into the named tensors `model` takes.

    roles: column -> "text" | "tabular" | "ignore"; columns left out get the suggestion (which also
    looks at what the model takes). spec: a validated ConvertSpec, or any BatchOptions (max_length, id_dtype,
    fill_value, tabular are read); None: the ConvertSpec defaults. Raises BatchError naming the file, column
    and row at fault.
    """
    options: BatchOptions = spec if spec is not None else BatchDefaults()
    file = file or (df.attrs.get("file", "") if isinstance(df, pd.DataFrame) else "")
    df = prepared_frame(df, file)
    rows = len(df)
    if rows == 0:
        raise file_error(file, "the sample has no rows.")
    explicit = _explicit_roles(df, roles, file)
    chosen = explicit_feeds(df, model, options.tabular, file)
    explicit = _with_chosen(explicit, chosen, file)
    final = resolve_roles(df, model, explicit, fed=set(chosen))
    fill = None if options.fill_value is None else float(options.fill_value)

    text_cols = [c for c in df.columns if final[c] == "text"]
    tensors, settings, warnings = _text_tensors(df, model, text_cols, options, file)
    tab_tensors, feeds, widths, features = _tabular_tensors(df, model, final, chosen, fill, file)
    tensors.update(tab_tensors)
    warnings += _ignored_categories(df, final, explicit, file)

    sizes = {n: int(t.shape[0]) for n, t in tensors.items()}
    if len(set(sizes.values()) | {rows}) > 1:
        raise file_error(
            file,
            "tensors do not share the batch size: "
            + ", ".join(f"{n}: {s}" for n, s in sizes.items())
            + f" (file rows: {rows}).",
        )

    ordered = {i.name: tensors[i.name] for i in model.inputs if i.name in tensors}
    ignored = {c: [jsonable(v) for v in df[c].tolist()] for c in df.columns if final[c] == "ignore"}
    return Batch(
        tensors=ordered,
        roles=dict(final),
        rows=rows,
        text_columns=text_cols,
        tabular=feeds,
        ignored=ignored,
        tokenizer_settings=settings,
        file=file,
        widths=widths,
        features=features,
        warnings=warnings,
    )
