"""Text columns -> the token-id tensors a model's text inputs take (input_ids, attention_mask, token_type_ids).

The max length is lowered to what the tokenizer and the model's position table hold, and a tokenizer whose
ids fall outside the model's embedding table is refused before the model runs.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import torch

from studio.errors import CheckpointError, first_line
from studio.inputs.cells import jsonable
from studio.inputs.sample import ROW_CONVENTION, file_error, row_label
from studio.sources.base import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS, LoadedModel


def _texts(df: pd.DataFrame, col: str, file: str) -> tuple[list[str], list[str]]:
    """A text column's cells as the strings the tokenizer gets, and warnings for the odd ones.

    An empty cell is empty text ("" tokenizes to the special tokens alone), whitespace stays whitespace,
    a number or a list is tokenized as written (JSON for lists); each such cell is listed in a warning."""
    out: list[str] = []
    odd: dict[str, list[int]] = {}
    for i, v in enumerate(df[col].tolist()):
        if v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and np.isnan(v)):
            odd.setdefault("empty (tokenized as empty text)", []).append(i)
            v = ""
        elif isinstance(v, str):
            if not v.strip():
                odd.setdefault("empty or blank (tokenized as written)", []).append(i)
        else:
            if isinstance(v, np.ndarray):
                v = v.tolist()
            if isinstance(v, np.generic):
                v = v.item()
            what = (
                "a list"
                if isinstance(v, (list, tuple))
                else "an object"
                if isinstance(v, dict)
                else f"a {type(v).__name__}"
            )
            odd.setdefault(f"{what}, not a string (tokenized as its text)", []).append(i)
            v = json.dumps(jsonable(v)) if isinstance(v, (list, tuple, dict)) else str(v)
        out.append(v)
    warnings = [
        f"{file + ': ' if file else ''}text column {col!r}: {_rows_text(rows)} "
        f"{'is' if len(rows) == 1 else 'are'} {what}."
        for what, rows in odd.items()
    ]
    return out, warnings


def _rows_text(rows: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(i + 1) for i in rows[:limit])
    shown += f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown} ({ROW_CONVENTION})"


def _model_positions(module: Any) -> int | None:
    """Token positions the model's absolute position-embedding table holds (None: it has none)."""
    for sub in module.modules() if isinstance(module, torch.nn.Module) else ():
        table = getattr(sub, "position_embeddings", None)
        if isinstance(table, torch.nn.Embedding):
            pad = getattr(sub, "padding_idx", None)  # RoBERTa-style: positions start after the padding id
            return table.num_embeddings - (pad + 1 if isinstance(pad, int) and pad >= 0 else 0)
    return None


def _embedding_rows(module: Any) -> int | None:
    """Rows of the model's token-embedding table (the largest token id it can take + 1), if it has one."""
    for sub in module.modules() if isinstance(module, torch.nn.Module) else ():
        table = getattr(sub, "word_embeddings", None)
        if isinstance(table, torch.nn.Embedding):
            return table.num_embeddings
    try:
        table = module.get_input_embeddings()
    except Exception:  # noqa: BLE001 - not a transformers model: nothing to check against
        return None
    return table.num_embeddings if isinstance(table, torch.nn.Embedding) else None


def _check_token_ids(ids: torch.Tensor, model: LoadedModel, text_cols: list[str], file: str) -> None:
    """A tokenizer that gives ids past the embedding table does not belong to the model: say which token,
    before the model runs (it would fail with an IndexError deep inside)."""
    rows = _embedding_rows(model.module)
    if rows is None:
        return
    pad = getattr(model.tokenizer, "pad_token_id", None)
    if isinstance(pad, int) and not 0 <= pad < rows:  # the shape probes pad with it
        raise CheckpointError(
            f"{model.path}: the tokenizer's padding token {getattr(model.tokenizer, 'pad_token', None)!r} has id "
            f"{pad:,}, past the model's embedding table ({rows:,} rows, ids 0-{rows - 1:,}): the tokenizer "
            "(vocabulary) does not belong to this model.",
            hint="Upload the tokenizer files the model was trained with.",
        )
    if ids.numel() == 0 or int(ids.max()) < rows:
        return
    r, pos = (int(x) for x in (ids >= rows).nonzero()[0])
    bad = int(ids[r, pos])
    try:
        token = model.tokenizer.convert_ids_to_tokens(bad)
    except Exception:  # noqa: BLE001 - the id is the fact; its text is a courtesy
        token = None
    what = f"token {token!r} (id {bad:,})" if isinstance(token, str) else f"token id {bad:,}"
    raise CheckpointError(
        f"{model.path}: the tokenizer turns {what} in column {text_cols[0]!r}, {row_label(r)} of "
        f"{file or 'the sample'} "
        f"into an id past the model's embedding table ({rows:,} rows, ids 0-{rows - 1:,}): the tokenizer "
        "(vocabulary) does not belong to this model.",
        hint="Upload the tokenizer files the model was trained with.",
    )


def _is_panic(e: BaseException) -> bool:
    """pyo3's PanicException (a Rust tokenizer panicking, e.g. a regex past its retry limit) derives from
    BaseException, not Exception; it is not importable by name."""
    return type(e).__name__ == "PanicException"


def tokenize_columns(
    df: pd.DataFrame, model: LoadedModel, text_cols: list[str], file: str, max_length: int, id_dtype: str
) -> tuple[dict[str, torch.Tensor], dict, list[str]]:
    """One text column, or a pair of two -> the model's text input tensors (ids as `id_dtype`: int64 | int32),
    the tokenizer settings used, and warnings (odd cells, the max length lowered)."""
    tok = model.tokenizer
    requested = max_length = int(max_length)
    model_max = getattr(tok, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000 and model_max < max_length:
        max_length = model_max  # never ask for more positions than the tokenizer says the model has
    positions = _model_positions(model.module)
    clamped = positions if positions is not None and 2 <= positions < max_length else None
    if clamped is not None:
        max_length = clamped  # nor more than the model's position table holds, whatever the tokenizer says
    settings = {
        "max_length": max_length,
        "padding": "longest",
        "truncation": True,
        "id_dtype": id_dtype,
        "pair": len(text_cols) == 2,
    }
    kinds = {i.kind for i in model.text_inputs}
    first, warnings = _texts(df, text_cols[0], file)
    second = None
    if len(text_cols) == 2:
        second, more = _texts(df, text_cols[1], file)
        warnings += more
    if getattr(tok, "pad_token", "") is None and len(first) > 1:
        raise file_error(
            file,
            "the tokenizer has no padding token, so rows of different lengths cannot be batched.",
            hint="Use a one-row sample, or a checkpoint whose tokenizer defines pad_token.",
        )
    try:
        enc = tok(
            first,
            second,
            padding=settings["padding"] if len(first) > 1 else False,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_attention_mask=ATTENTION_MASK in kinds,
            return_token_type_ids=True if TOKEN_TYPE_IDS in kinds else None,
        )
    except BaseException as e:  # a tokenizer failure is an input problem the user must see
        if not (isinstance(e, Exception) or _is_panic(e)):
            raise
        what = f"the tokenizer crashed (Rust panic): {first_line(e)}" if _is_panic(e) else first_line(e, with_type=True)
        raise file_error(
            file,
            f"the tokenizer failed on column(s) {', '.join(map(repr, text_cols))}: {what}",
            hint="The checkpoint's tokenizer files (tokenizer.json: its pre-tokenizer / normalizer "
            "patterns) are broken or hostile."
            if _is_panic(e)
            else None,
        ) from e
    ids = enc["input_ids"]
    _check_token_ids(ids, model, text_cols, file)
    if clamped is not None and ids.shape[-1] >= max_length:
        said = (
            f" (its tokenizer says {model_max:,})"
            if isinstance(model_max, int) and model_max > clamped and model_max < 1_000_000
            else ""
        )
        warnings.append(
            f"max length {requested} is more than the model's {clamped} token positions{said}: "
            f"text was cut at {clamped} tokens."
        )
    by_kind = {
        INPUT_IDS: ids,
        ATTENTION_MASK: enc.get("attention_mask") if enc.get("attention_mask") is not None else torch.ones_like(ids),
        TOKEN_TYPE_IDS: enc.get("token_type_ids") if enc.get("token_type_ids") is not None else torch.zeros_like(ids),
    }
    dtype = torch.int32 if id_dtype == "int32" else torch.int64
    tensors = {
        i.name: torch.as_tensor(by_kind[i.kind]).to(dtype).contiguous() for i in model.text_inputs if i.kind in by_kind
    }
    return tensors, settings, warnings
