"""studio.inputs.sample, studio.inputs.roles, studio.batch: reading sample files, suggesting roles, building named tensors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from studio.errors import BatchError
from studio.inputs.batch import Batch, build_batch
from studio.inputs.roles import ColumnInfo, describe_columns, suggest_roles
from studio.inputs.sample import read_sample
from studio.sources.base import ATTENTION_MASK, INPUT_IDS, TABULAR, TOKEN_TYPE_IDS, LoadedModel, ModelInput
from studio.spec import ConvertSpec

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "great",
    "product",
    "works",
    "well",
    "terrible",
    "quality",
    "broke",
    "after",
    "a",
    "day",
    "ok",
    "the",
    "is",
    "good",
    "bad",
    ",",
    ".",
]

RECORDS = [
    {
        "review": "Great product, works well",
        "price": 1.5,
        "quantity": 3,
        "order_id": "00123",
        "label": 1,
        "in_stock": True,
        "features": [1, 2],
    },
    {
        "review": "Terrible quality, broke after a day",
        "price": 2,
        "quantity": None,
        "order_id": "00456",
        "label": 0,
        "in_stock": False,
        "features": [3, 4.5],
    },
    {
        "review": "ok",
        "price": 0.25,
        "quantity": 7,
        "order_id": "01789",
        "label": 1,
        "in_stock": True,
        "features": [0, -1],
    },
]
CSV = """review,price,quantity,order_id,label,in_stock,features
"Great product, works well",1.5,3,00123,1,true,"[1, 2]"
"Terrible quality, broke after a day",2,,00456,0,false,"[3, 4.5]"
ok,0.25,7,01789,1,True,"[0, -1]"
"""


# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import BertTokenizerFast

    d = tmp_path_factory.mktemp("tok")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    # transformers 5: the argument is `vocab` (a path or a dict); `vocab_file=` is silently ignored.
    tok = BertTokenizerFast(vocab=str(d / "vocab.txt"))
    assert tok.tokenize("great product") == ["great", "product"]
    return tok


def make_model(inputs, tokenizer=None) -> LoadedModel:
    return LoadedModel(
        kind="dummy",
        path="dummy",
        module=torch.nn.Identity(),
        adapter=lambda m, named: tuple(named.values()),
        inputs=inputs,
        output_names=["out"],
        tokenizer=tokenizer,
    )


def text_model(tokenizer, token_types=False, tabular=()):
    inputs = [ModelInput(INPUT_IDS, INPUT_IDS), ModelInput(ATTENTION_MASK, ATTENTION_MASK)]
    if token_types:
        inputs.append(ModelInput(TOKEN_TYPE_IDS, TOKEN_TYPE_IDS, required=False))
    inputs += list(tabular)
    return make_model(inputs, tokenizer)


def spec(**kw) -> ConvertSpec:
    return ConvertSpec(checkpoint="ckpt", data="sample.csv", **kw)


def frame(records=RECORDS) -> pd.DataFrame:
    return pd.DataFrame(records)


def raises(fn, *parts, **attrs) -> BatchError:
    with pytest.raises(BatchError) as ei:
        fn()
    msg = str(ei.value)
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"
    for k, v in attrs.items():
        assert getattr(ei.value, k) == v, (k, getattr(ei.value, k), msg)
    return ei.value


# ---------------------------------------------------------------------------------------------- reading


def write_formats(tmp_path):
    files = {}
    files["csv"] = tmp_path / "s.csv"
    files["csv"].write_text(CSV)
    files["tsv"] = tmp_path / "s.tsv"
    lines = [list(RECORDS[0])] + [
        [
            r["review"],
            str(r["price"]),
            "" if r["quantity"] is None else str(r["quantity"]),
            r["order_id"],
            str(r["label"]),
            str(r["in_stock"]).lower(),
            json.dumps(r["features"]),
        ]
        for r in RECORDS
    ]
    files["tsv"].write_text("\n".join("\t".join(x) for x in lines) + "\n")
    files["json_records"] = tmp_path / "records.json"
    files["json_records"].write_text(json.dumps(RECORDS))
    files["json_columns"] = tmp_path / "columns.json"
    files["json_columns"].write_text(json.dumps({k: [r[k] for r in RECORDS] for k in RECORDS[0]}))
    files["json_data"] = tmp_path / "data.json"
    files["json_data"].write_text(json.dumps({"data": RECORDS, "meta": {"source": "x"}}))
    files["jsonl"] = tmp_path / "s.jsonl"
    files["jsonl"].write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    files["txt_semicolon"] = tmp_path / "s.txt"
    files["txt_semicolon"].write_text(
        CSV.replace(",", ";")
        .replace('"Great product; works well"', '"Great product, works well"')
        .replace('"Terrible quality; broke after a day"', '"Terrible quality, broke after a day"')
        .replace('"[1; 2]"', '"[1, 2]"')
        .replace('"[3; 4.5]"', '"[3, 4.5]"')
        .replace('"[0; -1]"', '"[0, -1]"')
    )
    return files


def test_every_format_reads_the_same_frame(tmp_path):
    files = write_formats(tmp_path)
    ref = read_sample(files["csv"])
    assert list(ref.columns) == list(RECORDS[0])
    assert len(ref) == 3
    for kind, path in files.items():
        df = read_sample(path)
        pd.testing.assert_frame_equal(df, ref, check_exact=True, obj=kind)
        assert df.attrs["file"] == path.name
    assert ref["price"].tolist() == [1.5, 2.0, 0.25]
    assert ref["quantity"].isna().tolist() == [False, True, False]
    assert ref["in_stock"].tolist() == [True, False, True]
    assert ref["features"].tolist() == [[1, 2], [3, 4.5], [0, -1]]


def test_id_like_column_kept_as_string(tmp_path):
    p = tmp_path / "ids.csv"
    p.write_text("order_id,zip,sku,n\n00123,02139,12345678901234567890,5\n00456,10001,98765432109876543210,6\n")
    df = read_sample(p)
    assert df["order_id"].tolist() == ["00123", "00456"]
    assert df["zip"].tolist() == ["02139", "10001"]  # one zero-padded value keeps the whole column
    assert df["sku"].tolist() == ["12345678901234567890", "98765432109876543210"]  # too long for a float
    assert df["n"].tolist() == [5, 6] and str(df["n"].dtype) == "int64"
    info = {c.name: c for c in describe_columns(df)}
    assert info["zip"].detected == "id" and info["zip"].suggested == "ignore"


def test_empty_cells_and_na_tokens(tmp_path):
    p = tmp_path / "na.csv"
    p.write_text("x,note\n1,NA\nNA,hello\n,\n")
    df = read_sample(p)
    assert df["x"].isna().tolist() == [False, True, True]  # NA counts as empty in a number column
    assert df["note"].tolist()[:2] == ["NA", "hello"]  # ... but stays text in a text column
    assert pd.isna(df["note"].iloc[2])


def test_json_lines_inside_a_json_file_and_pandas_orients(tmp_path):
    p = tmp_path / "lines.json"
    p.write_text('{"a": 1}\n{"a": 2}\n')
    assert read_sample(p)["a"].tolist() == [1, 2]
    p2 = tmp_path / "split.json"
    p2.write_text(pd.DataFrame({"a": [1, 2], "b": ["x y", "z"]}).to_json(orient="split"))
    assert read_sample(p2)["b"].tolist() == ["x y", "z"]
    p3 = tmp_path / "cols.json"
    p3.write_text(pd.DataFrame({"a": [1, 2], "b": ["x y", "z"]}).to_json())  # {"a": {"0": 1, ...}}
    assert read_sample(p3)["a"].tolist() == [1, 2]


@pytest.mark.parametrize(
    "name,content,parts",
    [
        ("empty.csv", "", ["empty.csv", "empty"]),
        ("blank.json", "  \n", ["blank.json", "empty"]),
        ("header.csv", "a,b\n", ["header.csv", "no data rows"]),
        ("none.json", "[]", ["none.json", "no data rows"]),
        ("ragged.csv", "a,b\n1,2\n3,4,5\n", ["ragged.csv", "line 3", "Expected 2 fields"]),
        ("broken.json", '[{"a": 1}, {"a": ]', ["broken.json", "not valid JSON", "line 1"]),
        ("broken.jsonl", '{"a": 1}\n{"a": \n', ["broken.jsonl", "line 2"]),
        ("scalar.jsonl", '{"a": 1}\n[1, 2]\n', ["scalar.jsonl", "line 2", "expected an object"]),
        ("dupe.csv", "a,b,a\n1,2,3\n", ["dupe.csv", "duplicate", "'a'"]),
        ("dupe.json", '[{"a": 1, "a": 2}]', ["dupe.json", "duplicate", "'a'"]),
        ("lens.json", '{"a": [1, 2], "b": [1]}', ["lens.json", "different lengths"]),
        ("sheet.xlsx", "x", ["sheet.xlsx", "unsupported", ".xlsx"]),
    ],
)
def test_read_errors_name_the_file(tmp_path, name, content, parts):
    p = tmp_path / name
    p.write_text(content)
    err = raises(lambda: read_sample(p), *parts)
    assert err.file == name
    if name == "sheet.xlsx":
        assert ".csv" in err.hint and ".jsonl" in err.hint  # the supported kinds are listed


def test_missing_file(tmp_path):
    raises(lambda: read_sample(tmp_path / "nope.csv"), "nope.csv", "does not exist")


# ---------------------------------------------------------------------------------------------- suggestions


def test_describe_and_suggest():
    df = frame()
    info = {c.name: c for c in describe_columns(df)}
    assert all(isinstance(c, ColumnInfo) for c in info.values())
    assert [c for c in info] == list(df.columns)
    assert info["review"].detected == "text" and info["review"].example == "Great product, works well"
    assert info["price"].detected == "number"
    assert info["in_stock"].detected == "bool"
    assert info["features"].detected == "vector" and info["features"].example == "[1, 2]"
    assert info["order_id"].detected == "id"
    assert info["quantity"].missing == 1
    assert suggest_roles(df) == {
        "review": "text",
        "price": "tabular",
        "quantity": "tabular",
        "order_id": "ignore",
        "label": "ignore",
        "in_stock": "tabular",
        "features": "tabular",
    }


def test_suggestion_name_rules():
    df = pd.DataFrame(
        {
            "customerId": [10, 11],
            "paid": [1.0, 2.0],
            "target": [0, 1],
            "y": [1, 0],
            "category": ["toys", "books"],
            "sku": ["A-100", "B-200"],
            "Unnamed: 0": [0, 1],
            "blank": [None, None],
        }
    )
    s = suggest_roles(df)
    assert s == {
        "customerId": "ignore",
        "paid": "tabular",
        "target": "ignore",
        "y": "ignore",
        "category": "ignore",
        "sku": "ignore",
        "Unnamed: 0": "ignore",
        "blank": "ignore",
    }
    assert {c.name: c.detected for c in describe_columns(df)}["blank"] == "empty"


def test_suggestions_follow_the_model(tokenizer):
    df = frame()
    # a text-only model: numeric columns it cannot take are ignored by default
    roles = suggest_roles(df, text_model(tokenizer))
    assert roles["review"] == "text" and roles["price"] == "ignore" and roles["features"] == "ignore"
    # a model that names its tabular fields gets exactly those
    mm = text_model(tokenizer, tabular=[ModelInput("price", TABULAR, column="price", width=1)])
    roles = suggest_roles(df, mm)
    assert roles["price"] == "tabular" and roles["quantity"] == "ignore"
    # a checkpoint that names its text column (info["text_field"]) gets that one
    df_two = frame().assign(title=["a long title with words"] * 3)
    mm.info["text_field"] = "title"
    roles = suggest_roles(df_two, mm)
    assert roles["title"] == "text" and roles["review"] == "ignore"
    # short strings only: the text model still gets its wordiest string column
    df2 = pd.DataFrame({"title": ["good thing", "bad"], "code": ["x", "y"]})
    assert suggest_roles(df2)["title"] == "ignore"
    assert suggest_roles(df2, text_model(tokenizer))["title"] == "text"


# ---------------------------------------------------------------------------------------------- text


def test_text_tokenized_int64_by_default(tokenizer):
    b = build_batch(frame(), text_model(tokenizer), {}, spec(), file="s.csv")
    assert isinstance(b, Batch)
    assert list(b.tensors) == [INPUT_IDS, ATTENTION_MASK]  # no token_type_ids: the model does not take it
    ids, mask = b.tensors[INPUT_IDS], b.tensors[ATTENTION_MASK]
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64
    assert ids.shape[0] == 3 and ids.shape == mask.shape
    assert ids[0, 0].item() == tokenizer.cls_token_id and VOCAB.index("great") in ids[0].tolist()
    assert mask[2].tolist().count(1) == 3  # [CLS] ok [SEP], rest padding
    assert b.rows == 3 and b.text_columns == ["review"] and b.file == "s.csv"
    assert b.roles == {
        "review": "text",
        "price": "ignore",
        "quantity": "ignore",
        "order_id": "ignore",
        "label": "ignore",
        "in_stock": "ignore",
        "features": "ignore",
    }
    assert b.ignored["order_id"] == ["00123", "00456", "01789"]
    assert b.ignored["quantity"] == [3, None, 7]
    assert b.ignored["features"][1] == [3, 4.5]
    json.dumps(b.ignored)  # JSON-able
    assert b.tokenizer_settings == {
        "max_length": 128,
        "padding": "longest",
        "truncation": True,
        "id_dtype": "int64",
        "pair": False,
    }


def test_int32_and_max_length(tokenizer):
    b = build_batch(frame(), text_model(tokenizer), {}, spec(id_dtype="int32", max_length=4))
    assert b.tensors[INPUT_IDS].dtype == torch.int32 and b.tensors[ATTENTION_MASK].dtype == torch.int32
    assert b.tensors[INPUT_IDS].shape == (3, 4)
    assert b.tensors[INPUT_IDS][0, -1].item() == tokenizer.sep_token_id  # truncated, still ends with [SEP]
    assert b.tokenizer_settings["max_length"] == 4 and b.tokenizer_settings["id_dtype"] == "int32"


def test_max_length_capped_by_tokenizer(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.model_max_length = 5
    b = build_batch(frame(), text_model(tok), {}, spec(max_length=128))
    assert b.tensors[INPUT_IDS].shape[1] == 5 and b.tokenizer_settings["max_length"] == 5


def test_token_type_ids_only_when_taken_and_text_pairs(tokenizer):
    df = pd.DataFrame({"question": ["is the product good", "is it bad"], "answer": ["great", "ok"]})
    roles = {"question": "text", "answer": "text"}
    b = build_batch(df, text_model(tokenizer, token_types=True), roles, spec())
    assert list(b.tensors) == [INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS]
    assert b.tokenizer_settings["pair"] is True and b.text_columns == ["question", "answer"]
    tt = b.tensors[TOKEN_TYPE_IDS]
    assert tt.dtype == torch.int64 and tt[0].max().item() == 1  # the second segment is marked
    b2 = build_batch(df, text_model(tokenizer), roles, spec())
    assert TOKEN_TYPE_IDS not in b2.tensors


def test_token_type_ids_zeros_when_tokenizer_gives_none(tokenizer):
    class NoTypes:
        pad_token = "[PAD]"
        model_max_length = 512

        def __call__(self, texts, pair=None, **kw):
            enc = tokenizer(texts, pair, **kw)
            return {"input_ids": enc["input_ids"]}

    model = text_model(NoTypes(), token_types=True)
    b = build_batch(frame(), model, {}, spec())
    assert torch.equal(b.tensors[TOKEN_TYPE_IDS], torch.zeros_like(b.tensors[INPUT_IDS]))
    assert torch.equal(b.tensors[ATTENTION_MASK], torch.ones_like(b.tensors[INPUT_IDS]))


def test_one_row_sample(tokenizer):
    df = pd.DataFrame({"review": ["great product works well"], "price": [3.0]})
    mm = text_model(tokenizer, tabular=[ModelInput("num", TABULAR)])
    b = build_batch(df, mm, {}, spec())
    assert b.rows == 1 and b.tensors[INPUT_IDS].shape[0] == 1
    assert b.tensors["num"].tolist() == [[3.0]] and b.tabular == {"num": ["price"]}


def test_text_errors(tokenizer):
    df = frame()
    raises(
        lambda: build_batch(df, text_model(None), {}, spec(), file="s.csv"),
        "s.csv",
        "'review'",
        "carries no tokenizer",
        column="review",
        file="s.csv",
    )
    tab_only = make_model([ModelInput("x", TABULAR)])
    raises(
        lambda: build_batch(
            df,
            tab_only,
            {"review": "text", "price": "tabular", "quantity": "ignore", "in_stock": "ignore", "features": "ignore"},
            spec(),
        ),
        "'review'",
        "takes no text inputs",
        column="review",
    )
    raises(
        lambda: build_batch(df, text_model(tokenizer), {"review": "ignore"}, spec()),
        "no column is mapped text",
        "'review'",
        "'order_id'",
    )
    df3 = pd.DataFrame({"a": ["x y z w"] * 2, "b": ["x y z w"] * 2, "c": ["x y z w"] * 2})
    raises(lambda: build_batch(df3, text_model(tokenizer), {}, spec()), "3 columns are mapped text", "pair")
    mm = text_model(tokenizer, tabular=[ModelInput("n", TABULAR)])
    df2 = pd.DataFrame({"a": ["x y z w"] * 2, "b": ["x y z w"] * 2, "n": [1, 2]})
    raises(lambda: build_batch(df2, mm, {}, spec()), "2 columns are mapped text", "one text column")


def test_empty_and_odd_text_cells_are_text_and_warned(tokenizer):
    # an empty cell is empty text: [CLS] [SEP] then padding (ids 2, 3, 0 in VOCAB), listed in a warning
    df = pd.DataFrame({"review": ["great product", "works well", "  ", None, "ok"]})
    b = build_batch(df, text_model(tokenizer), {"review": "text"}, spec(), file="r.csv")
    ids, mask = b.tensors[INPUT_IDS].tolist(), b.tensors[ATTENTION_MASK].tolist()
    width = len(ids[0])
    assert ids[2] == ids[3] == [2, 3] + [0] * (width - 2)
    assert mask[3] == [1, 1] + [0] * (width - 2)
    assert ids[0][:4] == [2, VOCAB.index("great"), VOCAB.index("product"), 3]
    assert any(
        "r.csv" in w and "'review'" in w and "row 4 (1-based, header not counted)" in w and "empty text" in w
        for w in b.warnings
    ), b.warnings
    assert any("row 3 " in w and "blank" in w for w in b.warnings), b.warnings
    # JSON values that are not strings are tokenized as their text, and listed
    odd = pd.DataFrame({"review": ["great product", 42, [1, 2]]})
    b2 = build_batch(odd, text_model(tokenizer), {"review": "text"}, spec())
    assert b2.rows == 3 and len(b2.warnings) == 2
    assert any("row 2 " in w and "int" in w for w in b2.warnings)
    assert any("row 3 " in w and "a list" in w for w in b2.warnings)
    clean = build_batch(pd.DataFrame({"review": ["great product", "ok"]}), text_model(tokenizer), {}, spec())
    assert clean.warnings == []


# ---------------------------------------------------------------------------------------------- tabular


def test_tabular_numbers_bools_and_vectors(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text('price,flag,flag01,emb,raw\n1.5,true,1,"[1, 2.5, 3]",2\n2,False,0,"[0, 0, -1]",3\n')
    df = read_sample(p)
    model = make_model(
        [
            ModelInput("price", TABULAR, column="price", width=1),
            ModelInput("flag", TABULAR, column="flag"),
            ModelInput("flag01", TABULAR, column="flag01"),
            ModelInput("emb", TABULAR, column="emb", width=3),
            ModelInput("rest", TABULAR),
        ]
    )
    b = build_batch(df, model, {}, spec())
    assert list(b.tensors) == ["price", "flag", "flag01", "emb", "rest"]
    assert all(t.dtype == torch.float32 for t in b.tensors.values())
    assert b.tensors["price"].tolist() == [[1.5], [2.0]]
    assert b.tensors["flag"].tolist() == [[1.0], [0.0]]
    assert b.tensors["flag01"].tolist() == [[1.0], [0.0]]
    assert b.tensors["emb"].tolist() == [[1.0, 2.5, 3.0], [0.0, 0.0, -1.0]]
    assert b.tensors["rest"].tolist() == [[2.0], [3.0]]
    assert b.tabular == {"price": ["price"], "flag": ["flag"], "flag01": ["flag01"], "emb": ["emb"], "rest": ["raw"]}
    assert b.widths["emb"] == 3
    # real lists (JSON) and strings holding lists (a hand-built frame) both work
    df2 = pd.DataFrame({"emb": [[1, 2], "[3, 4]"]})
    b2 = build_batch(df2, make_model([ModelInput("v", TABULAR)]), {"emb": "tabular"}, spec())
    assert b2.tensors["v"].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_tabular_value_errors():
    model = make_model([ModelInput("x", TABULAR)])
    bad = pd.DataFrame({"price": ["1.5", "cheap", "2"]})
    raises(
        lambda: build_batch(bad, model, {"price": "tabular"}, spec(), file="p.csv"),
        "p.csv",
        "'price'",
        "row 2 (1-based, header not counted)",
        "'cheap'",
        "not a number",
        column="price",
        row=2,
    )
    empty = pd.DataFrame({"price": [1.5, None, 2.0]})
    raises(lambda: build_batch(empty, model, {"price": "tabular"}, spec()), "'price'", "row 2", "empty", row=2)
    b = build_batch(empty, model, {"price": "tabular"}, spec(fill_value=0.0))
    assert b.tensors["x"].tolist() == [[1.5], [0.0], [2.0]]
    # fill_value fills empty cells, never non-numeric text
    raises(lambda: build_batch(bad, model, {"price": "tabular"}, spec(fill_value=0.0)), "'cheap'", row=2)
    ragged = pd.DataFrame({"emb": [[1, 2], [3, 4, 5]]})
    raises(
        lambda: build_batch(ragged, model, {"emb": "tabular"}, spec()), "'emb'", "row 2", "ragged", column="emb", row=2
    )
    mixed = pd.DataFrame({"emb": ["[1, 2]", "3"]})
    raises(lambda: build_batch(mixed, model, {"emb": "tabular"}, spec()), "'emb'", "mixes", column="emb")
    nested = pd.DataFrame({"emb": ["[1, 2]", '[1, "a"]']})
    raises(lambda: build_batch(nested, model, {"emb": "tabular"}, spec()), "'emb'", "row 2", row=2)
    yes = pd.DataFrame({"flag": ["yes", "no"]})
    raises(lambda: build_batch(yes, model, {"flag": "tabular"}, spec()), "'flag'", "row 1", "'yes'")
    vec_missing = pd.DataFrame({"emb": [[1, 2], None]})
    b = build_batch(vec_missing, model, {"emb": "tabular"}, spec(fill_value=-1))
    assert b.tensors["x"].tolist() == [[1.0, 2.0], [-1.0, -1.0]]


def test_tabular_matching_errors(tokenizer):
    df = pd.DataFrame({"price": [1.0, 2.0], "qty": [3, 4], "note": ["a", "b"]})
    needs_age = make_model([ModelInput("age", TABULAR, column="age")])
    raises(
        lambda: build_batch(df, needs_age, {}, spec(), file="s.csv"),
        "s.csv",
        "tabular field 'age'",
        "'price'",
        "'qty'",
        column="age",
    )
    needs_price = make_model([ModelInput("p", TABULAR, column="price")])
    raises(
        lambda: build_batch(df, needs_price, {"price": "ignore"}, spec()), "'price'", "mapped 'ignore'", column="price"
    )
    raises(
        lambda: build_batch(df, needs_price, {"qty": "tabular"}, spec()),
        "'qty'",
        "the model takes tabular fields",
        "'p'",
        column="qty",
    )
    text_only = text_model(tokenizer)
    raises(
        lambda: build_batch(df, text_only, {"note": "text", "price": "tabular"}, spec()),
        "'price'",
        "the model takes tabular fields: none",
        column="price",
    )
    two = make_model([ModelInput("a", TABULAR), ModelInput("b", TABULAR)])
    raises(
        lambda: build_batch(df, two, {"price": "tabular", "qty": "ignore"}, spec()),
        "needs 2 tabular column(s)",
        "'price'",
    )
    wide = make_model([ModelInput("v", TABULAR, column="price", width=4)])
    raises(lambda: build_batch(df, wide, {}, spec()), "'price'", "expects width 4", "1 feature", column="price")


def test_role_errors():
    df = pd.DataFrame({"price": [1.0, 2.0]})
    model = make_model([ModelInput("x", TABULAR)])
    err = raises(
        lambda: build_batch(df, model, {"prices": "tabular"}, spec(), file="s.csv"),
        "s.csv",
        "'prices'",
        "not in the file",
        "Columns in the file: 'price'",
        column="prices",
    )
    assert "price" in err.hint
    raises(lambda: build_batch(df, model, {"price": "numeric"}, spec()), "'numeric'", "'price'")
    raises(lambda: build_batch(df.iloc[:0], model, {}, spec()), "no rows")


def test_optional_named_input_may_be_absent():
    df = pd.DataFrame({"price": [1.0, 2.0]})
    model = make_model(
        [ModelInput("p", TABULAR, column="price"), ModelInput("d", TABULAR, column="discount", required=False)]
    )
    b = build_batch(df, model, {}, spec())
    assert list(b.tensors) == ["p"] and b.tabular == {"p": ["price"]}


def test_multimodal_tensors_in_model_order(tokenizer):
    df = frame()
    mm = make_model(
        [
            ModelInput("price", TABULAR, column="price"),
            ModelInput(INPUT_IDS, INPUT_IDS),
            ModelInput(ATTENTION_MASK, ATTENTION_MASK),
            ModelInput("features", TABULAR, column="features", width=2),
        ],
        tokenizer,
    )
    b = build_batch(df, mm, {}, spec())
    assert list(b.tensors) == ["price", INPUT_IDS, ATTENTION_MASK, "features"]
    assert {t.shape[0] for t in b.tensors.values()} == {3}
    assert b.roles["quantity"] == "ignore" and b.roles["review"] == "text"


# ---------------------------------------------------------------------------------- many columns, one input


def wide_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {"id": ["a1", "a2"], "a": [1.0, 2.0], "b": [3, 4], "emb": [[5, 6], [7, 8]], "c": [9.5, 10.5], "label": [0, 1]}
    )


def test_one_tabular_input_takes_every_tabular_column_in_file_order():
    model = make_model([ModelInput("features", TABULAR)])
    b = build_batch(wide_frame(), model, {}, spec())
    assert b.roles == {
        "id": "ignore",
        "a": "tabular",
        "b": "tabular",
        "emb": "tabular",
        "c": "tabular",
        "label": "ignore",
    }
    assert b.tabular == {"features": ["a", "b", "emb", "c"]}
    assert b.tensors["features"].tolist() == [[1, 3, 5, 6, 9.5], [2, 4, 7, 8, 10.5]]
    assert b.widths == {"features": 5}
    assert b.features["features"] == [
        {"column": "a", "start": 0, "width": 1},
        {"column": "b", "start": 1, "width": 1},
        {"column": "emb", "start": 2, "width": 2},
        {"column": "c", "start": 4, "width": 1},
    ]


def test_declared_width_is_checked_naming_width_and_columns():
    model = make_model([ModelInput("features", TABULAR, width=3)])
    raises(
        lambda: build_batch(wide_frame(), model, {}, spec(), file="w.csv"),
        "w.csv",
        "'features'",
        "expects width 3",
        "5 features",
        "'a', 'b', 'emb', 'c'",
        column="a",
    )
    ok = build_batch(wide_frame(), model, {"emb": "ignore"}, spec())
    assert ok.tensors["features"].tolist() == [[1, 3, 9.5], [2, 4, 10.5]]


def test_explicit_tabular_order_and_ranges():
    model = make_model([ModelInput("features", TABULAR, width=3)])
    b = build_batch(wide_frame(), model, {}, spec(tabular={"features": ["c", "a..b"]}))
    assert b.tabular == {"features": ["c", "a", "b"]}
    assert b.tensors["features"].tolist() == [[9.5, 1, 3], [10.5, 2, 4]]
    assert b.roles["emb"] == "ignore"  # not chosen, and no input is left for it
    # a column the user mapped ignore is made tabular by --tabular when the role is left to the studio
    b2 = build_batch(wide_frame(), make_model([ModelInput("x", TABULAR)]), {}, spec(tabular={"x": ["label"]}))
    assert b2.roles["label"] == "tabular" and b2.tensors["x"].tolist() == [[0], [1]]
    raises(
        lambda: build_batch(wide_frame(), model, {}, spec(tabular={"feats": ["a"]})), "no input 'feats'", "'features'"
    )
    raises(
        lambda: build_batch(wide_frame(), model, {}, spec(tabular={"features": ["a", "z"]})),
        "'z' is not a column",
        column="z",
    )
    raises(
        lambda: build_batch(wide_frame(), model, {}, spec(tabular={"features": ["c..a"]})), "runs backwards", column="c"
    )
    raises(
        lambda: build_batch(wide_frame(), model, {"b": "ignore"}, spec(tabular={"features": ["a..c"]})),
        "'b'",
        "mapped 'ignore'",
        column="b",
    )
    raises(
        lambda: build_batch(wide_frame(), model, {}, spec(tabular={"features": ["a", "a..b"]})),
        "more than once",
        column="a",
    )


def test_widths_split_columns_between_inputs_in_file_order():
    model = make_model([ModelInput("x", TABULAR, width=2), ModelInput("y", TABULAR, width=3)])
    b = build_batch(wide_frame(), model, {}, spec())
    assert b.tabular == {"x": ["a", "b"], "y": ["emb", "c"]}
    bad = make_model([ModelInput("x", TABULAR, width=3), ModelInput("y", TABULAR, width=2)])
    raises(lambda: build_batch(wide_frame(), bad, {}, spec()), "'x'", "expects width 3", "4 feature(s)")


def test_multimodal_field_without_column_fed_by_many_columns():
    # a checkpoint field "features" of width 4 and a file with four numeric columns and no "features"
    mm = make_model([ModelInput("features", TABULAR, column="features", width=4)])
    df = wide_frame().drop(columns=["emb"]).assign(d=[0.0, 1.0])
    b = build_batch(df, mm, {}, spec())
    assert b.tabular == {"features": ["a", "b", "c", "d"]}
    raises(
        lambda: build_batch(wide_frame(), mm, {}, spec()),
        "tabular field 'features'",
        "width 4",
        "5 feature(s)",
        "--tabular features=",
        column="features",
    )
    b2 = build_batch(wide_frame(), mm, {}, spec(tabular={"features": ["a", "emb", "c"]}))
    assert b2.tensors["features"].tolist() == [[1, 5, 6, 9.5], [2, 7, 8, 10.5]]
