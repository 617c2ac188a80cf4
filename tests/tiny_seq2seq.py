"""Tiny encoder-decoders for tests: transformers configs (2 layers, d_model 32, random weights, the real model code)
over the vocabulary of tests/tiny.py, so its BERT tokenizer writes their ids. Nothing is downloaded.

Special tokens: pad [PAD] (0), EOS [SEP] (3); the decoder starts from [PAD] (T5, Marian, Pegasus, as their
checkpoints do) or from [CLS] (2) for the BART family. No forced BOS / EOS. The weights are drawn large, so the
greedy continuations vary from step to step and from prompt to prompt."""

from __future__ import annotations

from typing import Any

from tests.tiny import vocab_size

SEQ2SEQ_ARCHS = ("t5", "mt5", "umt5", "bart", "mbart", "marian", "pegasus", "m2m_100")
PAD, CLS, EOS = 0, 2, 3
_BART = dict(
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
    max_position_embeddings=64,
    pad_token_id=PAD,
    eos_token_id=EOS,
    forced_eos_token_id=None,
    init_std=0.3,  # random weights this large decode varied tokens (at 0.02 every step is the same token)
)
_T5 = dict(
    d_model=32,
    d_kv=16,
    d_ff=48,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=2,
    pad_token_id=PAD,
    eos_token_id=EOS,
    decoder_start_token_id=PAD,
    initializer_factor=1.5,  # as init_std above
)


def make_seq2seq(arch: str, seed: int = 0) -> Any:
    """A tiny *ForConditionalGeneration in eval mode, its weights drawn from `seed`."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    v = vocab_size()
    if arch == "t5":
        model = tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=v, **_T5))
    elif arch == "mt5":
        model = tf.MT5ForConditionalGeneration(tf.MT5Config(vocab_size=v, **_T5))
    elif arch == "umt5":
        model = tf.UMT5ForConditionalGeneration(tf.UMT5Config(vocab_size=v, **_T5))
    elif arch == "bart":
        model = tf.BartForConditionalGeneration(
            tf.BartConfig(vocab_size=v, bos_token_id=CLS, decoder_start_token_id=CLS, **_BART)
        )
    elif arch == "mbart":
        model = tf.MBartForConditionalGeneration(tf.MBartConfig(vocab_size=v, decoder_start_token_id=CLS, **_BART))
    elif arch == "marian":
        model = tf.MarianMTModel(tf.MarianConfig(vocab_size=v, decoder_start_token_id=PAD, **_BART))
    elif arch == "m2m_100":
        model = tf.M2M100ForConditionalGeneration(tf.M2M100Config(vocab_size=v, decoder_start_token_id=EOS, **_BART))
    elif arch == "pegasus":
        model = tf.PegasusForConditionalGeneration(tf.PegasusConfig(vocab_size=v, decoder_start_token_id=PAD, **_BART))
    else:
        raise ValueError(f"no tiny seq2seq config for {arch!r}")
    return model.eval()


PROMPTS = [
    "the product arrived late and the box was damaged",
    "great quality",
    "it never works and i want a refund for this",
]
