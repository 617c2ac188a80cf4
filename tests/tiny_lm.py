"""Tiny causal LMs for the generation tests: transformers configs (2 layers, hidden 32, random weights, real
architecture code) and a word-level tokenizer written here. Nothing is downloaded.

Random-weight tiny models tie often (their logits are nearly flat), which makes greedy decoding a weak test: the
weights are drawn 10x wider than transformers' default (initializer_range 0.2, so the context changes the tokens)
and the untied output projection is scaled (`sharpen`), so the top-1 / top-2 margins are far above float32 noise.
"""

from __future__ import annotations

import torch

WORDS = (
    "the a an is was it this that product great terrible broken arrived late fast love hate return refund keep "
    "works fine bad good quality price cheap expensive box damaged again never always would buy recommend not very "
    "and or but to of for with my i you we they he she one two three red blue green small big old new day night"
).split()
SPECIALS = ["<unk>", "</s>", "<s>"]
EOS, BOS = 1, 2
PROMPTS = [
    "the product arrived late",
    "great quality and fast i would buy again",
    "it never works",
    "good price",
]


def vocab() -> dict[str, int]:
    return {w: i for i, w in enumerate(SPECIALS + WORDS)}


def tokenizer():
    """A word-level tokenizer without a pad token (the generation code pads with EOS then, as transformers does)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=vocab(), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", bos_token="<s>")


def config(model_type: str, **over):
    import transformers as tf

    v = len(SPECIALS) + len(WORDS)
    # untied output projection: tied tiny models repeat their last token (the residual's own embedding wins)
    # initializer_range 0.2 (10x the default): the attention matters, so a wrong cache changes the tokens
    common = dict(vocab_size=v, eos_token_id=EOS, bos_token_id=BOS, tie_word_embeddings=False, initializer_range=0.2)
    if model_type == "gpt2":
        c = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **common)
    elif model_type == "llama":  # GQA: 4 attention heads, 2 key/value heads
        c = tf.LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            max_position_embeddings=128,
            **common,
        )
    elif model_type == "mixtral":  # mixture of experts: 4 experts, 2 per token
        c = tf.MixtralConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            max_position_embeddings=128,
            num_local_experts=4,
            num_experts_per_tok=2,
            **common,
        )
    elif model_type == "mistral":  # a sliding window shorter than the prompts plus their new tokens
        c = tf.MistralConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            max_position_embeddings=128,
            sliding_window=4,
            **common,
        )
    elif model_type == "bloom":  # ALiBi: no position_ids
        c = tf.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **common)
    else:
        raise ValueError(model_type)
    for k, val in over.items():
        setattr(c, k, val)
    return c


def sharpen(model, scale: float = 16.0):
    """Scale the (untied) output projection so greedy choices are far from ties."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    return model


def model(model_type: str, seed: int = 0, **over):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(config(model_type, **over)).eval()
    return sharpen(m)
