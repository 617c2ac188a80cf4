"""Tiny random generators of every family issue 27 names, from transformers' own config classes (real model
code, random weights), saved as Hugging Face folders with a local tokenizer. Nothing is downloaded.

Decoders (`AutoModelForCausalLM`): gpt2 gpt_neox gptj opt bloom falcon llama mistral qwen2 qwen3 phi3 gemma
gemma2 olmo stablelm starcoder2 granite. Encoder-decoders (`AutoModelForSeq2SeqLM`): t5 mt5 bart mbart marian
pegasus. Sizes: 2 layers, hidden 32, 4 attention heads of 8 with 2 key/value heads where the family has GQA
(so a GQA export that writes the attention-head count into the cache is caught), the written vocabulary of
tests/tiny.py ([PAD]=0, [UNK]=1, [CLS]=2 as BOS, [SEP]=3 as EOS). The tokenizer is a WordPiece
`tokenizers.Tokenizer` over that vocabulary wrapped in `PreTrainedTokenizerFast` (saved as tokenizer.json):
decoders add no special token and pad on the left; encoder-decoders end the source with [SEP].

Generation settings are plain greedy: configs that default to a forced EOS / BOS (BART, mBART, Marian,
Pegasus) have them switched off, so `generate(do_sample=False)` is the argmax loop an ONNX file can be
compared with. `make_folder` raises `NotBuilt` when transformers itself cannot build or run the tiny model
(not a studio verdict). Used by tests/test_generate_matrix.py and benchmarks/generation.py.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import tiny
import torch

DECODERS = (
    "gpt2 gpt_neox gptj opt bloom falcon llama mistral qwen2 qwen3 phi3 gemma gemma2 olmo stablelm starcoder2 granite"
).split()
SEQ2SEQ = "t5 mt5 bart mbart marian pegasus".split()
FAMILIES = DECODERS + SEQ2SEQ
PAD, UNK, BOS, EOS = 0, 1, 2, 3
PROMPTS = [
    "the product arrived late and the box was damaged",
    "great quality and fast i would buy again",
    "it never works",
    "good price",
    "terrible product it arrived broken",
]

# Canonical size names -> small values; each goes to the config field of that name, or the field its
# attribute_map points to (GPT-2's n_embd for hidden_size, T5's d_kv for head_dim, ...), where there is one.
SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=64,
    max_position_embeddings=128,
    initializer_range=0.1,  # peakier random logits: fewer near-ties in greedy decoding
    init_std=0.1,  # the same for the BART family's field
    # decoders with their own field names
    n_inner=64,
    ffn_dim=64,
    ffn_hidden_size=64,
    rotary_dim=4,
    # encoder-decoders
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    num_layers=2,
    num_decoder_layers=2,
    d_ff=64,
    # token ids inside the written vocabulary
    pad_token_id=PAD,
    bos_token_id=BOS,
    eos_token_id=EOS,
    decoder_start_token_id=PAD,
    forced_eos_token_id=None,
    use_cache=True,
    # an LM head of its own: with tied embeddings a random model's logits are E . E[last token], so it
    # repeats the prompt's last token forever (a greedy test that cannot see the cache)
    tie_word_embeddings=False,
)
# Per family, where the generic sizes do not fit its code (each with its reason).
OVERRIDES: dict[str, dict] = {
    "opt": dict(word_embed_proj_dim=32),  # defaults to 768: the projection would not match hidden 32
    "falcon": dict(num_kv_heads=2, new_decoder_architecture=True),  # GQA form (Falcon 40B / 180B layout)
    "gemma2": dict(query_pre_attn_scalar=8, sliding_window=16),  # defaults sized for head 256 / window 4096
    "phi3": dict(original_max_position_embeddings=128, sliding_window=None),
    "starcoder2": dict(sliding_window=None),
    "mbart": dict(decoder_start_token_id=EOS),  # mBART starts the target with its EOS
    "bart": dict(decoder_start_token_id=EOS),  # BART's own convention (</s> starts the target)
    "pegasus": dict(init_std=0.3),  # at 0.1 its decoder hardly reads the encoder: every prompt, one continuation
    "t5": dict(d_kv=8, num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16),
    "mt5": dict(d_kv=8, num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16),
}
# Attributes a model's code reads that its config class does not declare as a field.
EXTRA: dict[str, dict] = {t: {"decoder_start_token_id": PAD, "tie_word_embeddings": False} for t in ("t5", "mt5")}
MAX_PARAMS = 2_000_000


class NotBuilt(Exception):
    """transformers could not build or run this tiny model (the model code or config, not the studio)."""


def is_seq2seq(model_type: str) -> bool:
    return model_type in SEQ2SEQ


def tiny_config(model_type: str):
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set(cls().to_dict())
    amap = getattr(cls, "attribute_map", {}) or {}
    kw = {}
    for key, value in {**SMALL, "vocab_size": tiny.vocab_size(), **OVERRIDES.get(model_type, {})}.items():
        real = amap.get(key, key)
        if real in fields:
            kw[real] = value
    config = cls(**kw)
    for key, value in EXTRA.get(model_type, {}).items():
        setattr(config, key, value)
    return config


def tokenizer(seq2seq: bool):
    """A fast tokenizer over tests/tiny.py's written vocabulary (WordPiece, lower case), built locally."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    with tempfile.TemporaryDirectory(prefix="tiny-vocab-") as tmp:
        words = [w for w in tiny.write_vocab(Path(tmp)).read_text().splitlines() if w]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    if seq2seq:
        tok.post_processor = processors.TemplateProcessing(single="$A [SEP]", special_tokens=[("[SEP]", EOS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[CLS]",
        eos_token="[SEP]",
        mask_token="[MASK]",
        padding_side="right" if seq2seq else "left",
    )


def build_model(model_type: str, seed: int = 0):
    """The tiny model (eval mode) for a family; NotBuilt when transformers cannot build or run it."""
    import transformers as tf

    auto = tf.AutoModelForSeq2SeqLM if is_seq2seq(model_type) else tf.AutoModelForCausalLM
    try:
        config = tiny_config(model_type)
        with torch.device("meta"):  # count first: a size the small values missed could take gigabytes
            params = sum(p.numel() for p in auto.from_config(config).parameters())
        if params > MAX_PARAMS:
            raise NotBuilt(f"{model_type}: the tiny config still declares {params:,} parameters")
        torch.manual_seed(seed)
        model = auto.from_config(config).eval()
        with torch.no_grad():  # one forward: the model code runs at these sizes
            ids = torch.tensor([[5, 6, 7]])
            if is_seq2seq(model_type):
                model(input_ids=ids, decoder_input_ids=torch.tensor([[config.decoder_start_token_id]]))
            else:
                model(input_ids=ids)
    except NotBuilt:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise NotBuilt(f"{model_type}: {type(e).__name__}: {first}") from e
    gc = model.generation_config  # plain greedy: nothing forced, no length or repetition rules
    for key in ("forced_eos_token_id", "forced_bos_token_id", "no_repeat_ngram_size", "min_length", "num_beams"):
        if hasattr(gc, key):
            setattr(gc, key, None)
    gc.do_sample = False
    return model


def make_folder(folder: Path, model_type: str, seed: int = 0) -> Path:
    """Save the tiny model of a family + its tokenizer as a Hugging Face folder (config.json,
    model.safetensors, generation_config.json, tokenizer.json, ...)."""
    model = build_model(model_type, seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer(is_seq2seq(model_type)).save_pretrained(str(folder))
    return folder


def reference_greedy(folder: Path, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """transformers' own greedy `generate` (its cache, default attention), one prompt at a time: the new
    token ids of each prompt (a sequence that reached EOS ends there). The independent reference."""
    import transformers as tf

    config = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    auto = tf.AutoModelForSeq2SeqLM if config.is_encoder_decoder else tf.AutoModelForCausalLM
    model = auto.from_pretrained(str(folder), local_files_only=True).eval()
    tok = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    out = []
    for p in prompts:
        enc = tok(p, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=PAD)
        new = ids[0].tolist() if config.is_encoder_decoder else ids[0, enc["input_ids"].shape[1] :].tolist()
        if config.is_encoder_decoder:
            new = new[1:]  # the decoder start token is not generated
        if EOS in new:
            new = new[: new.index(EOS) + 1]
        out.append(new)
    return out


def ort_greedy(path_or_session, prompt_ids: list[int], max_new_tokens: int, eos: int | None, threads: int = 1):
    """A plain greedy loop over a decoder file with optimum's text-generation-with-past names (input_ids,
    attention_mask, position_ids when the graph has it, past_key_values.{i}.key/.value -> logits,
    present.{i}.key/.value), batch 1, written here without studio.generate: what a third party's loop does with
    the file. Takes a path or an open onnxruntime session (benchmarks/generation.py times two files with it).
    Returns (new ids up to and with EOS, seconds of the whole decode, seconds to the first new token)."""
    import time

    import numpy as np
    import onnxruntime as ort

    sess = path_or_session
    if not isinstance(sess, ort.InferenceSession):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path_or_session), opts, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    pasts = [n for n in inputs if n.startswith("past_key_values.")]
    outs = [o.name for o in sess.get_outputs()]
    float_type = np.float16 if pasts and inputs[pasts[0]].type == "tensor(float16)" else np.float32
    feeds: dict = {}
    for n in pasts:
        shape = inputs[n].shape  # [batch, kv_heads, past, head_dim]
        feeds[n] = np.zeros((1, int(shape[1]), 0, int(shape[3])), dtype=float_type)
    ids = np.asarray([prompt_ids], dtype=np.int64)
    seen = ids.shape[1]
    new: list[int] = []
    first = None
    start = time.perf_counter()
    for _ in range(max_new_tokens):
        feeds["input_ids"] = ids
        feeds["attention_mask"] = np.ones((1, seen), dtype=np.int64)
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(seen - ids.shape[1], seen, dtype=np.int64)[None, :]
        result = dict(zip(outs, sess.run(outs, feeds)))
        token = int(result["logits"][0, -1].argmax())
        first = time.perf_counter() - start if first is None else first
        new.append(token)
        if eos is not None and token == eos:
            break
        for n in pasts:
            feeds[n] = result["present." + n[len("past_key_values.") :]]
        ids = np.asarray([[token]], dtype=np.int64)
        seen += 1
    return new, time.perf_counter() - start, first
