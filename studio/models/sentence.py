"""A sentence-transformers pipeline in plain torch: Transformer -> Pooling -> Dense -> Normalize.

Built by studio.sources.sbert from a folder's modules.json; the studio never imports sentence_transformers.
Every module works on a features dict as sentence-transformers' do ("token_embeddings", "attention_mask",
"sentence_embedding"), so a Dense or Normalize that names another key (module_input_name /
module_output_name) behaves the same. Pooling follows sentence_transformers.models.Pooling's padded path
(left or right padding), mode by mode; several modes are concatenated in the order the config gives.
"""

from __future__ import annotations

import torch
from torch import nn

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# the boolean keys of sentence-transformers' older configs, in its concatenation order
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
EPS = 1e-9


class Pooling(nn.Module):
    """token_embeddings [batch, seq, hidden] + attention_mask -> sentence_embedding [batch, hidden x modes]."""

    def __init__(self, modes: tuple[str, ...]):
        super().__init__()
        bad = [m for m in modes if m not in POOLING_MODES]
        if not modes or bad:
            raise ValueError(f"pooling modes {bad or modes!r}: expected some of {', '.join(POOLING_MODES)}")
        self.modes = tuple(modes)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = features["token_embeddings"]
        mask = features["attention_mask"].to(h.dtype)  # [batch, seq], 1 = real token
        m3 = mask.unsqueeze(-1)
        vectors = []
        for mode in self.modes:
            if mode == "cls":  # the first real token (left padding: not position 0)
                first = mask.argmax(dim=1)
                vectors.append(_take(h, first))
            elif mode == "max":
                vectors.append(h.masked_fill(m3 == 0, float("-inf")).max(dim=1).values)
            elif mode in ("mean", "mean_sqrt_len_tokens"):
                total = (h * m3).sum(dim=1)
                count = torch.clamp(m3.sum(dim=1), min=EPS)
                vectors.append(total / (count if mode == "mean" else torch.sqrt(count)))
            elif mode == "weightedmean":  # weights 1, 2, ... from the first real token
                positions = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype).view(1, -1, 1)
                weights = m3 * (positions - mask.argmax(dim=1).to(h.dtype).view(-1, 1, 1))
                vectors.append((h * weights).sum(dim=1) / torch.clamp(weights.sum(dim=1), min=EPS))
            else:  # lasttoken: the last real token (right padding: not the last position)
                positions = torch.arange(h.shape[1], device=h.device, dtype=h.dtype).view(1, -1)
                last = (positions * mask).argmax(dim=1)
                vectors.append(_take(h * m3, last))
        features["sentence_embedding"] = vectors[0] if len(vectors) == 1 else torch.cat(vectors, dim=-1)
        return features


def _take(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """h[b, index[b], :] for every row b."""
    idx = index.to(torch.int64).view(-1, 1, 1).expand(-1, 1, h.shape[-1])
    return torch.gather(h, 1, idx).squeeze(1)


class Dense(nn.Module):
    """sentence-transformers' Dense: activation(linear(x)) (+ residual), features[input] -> features[output]."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        activation: nn.Module,
        input_name: str = "sentence_embedding",
        output_name: str | None = None,
        residual: bool = False,
    ):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = activation
        self.input_name, self.output_name = input_name, output_name or input_name
        self.use_residual = residual
        projected = residual and in_features != out_features
        self.residual = nn.Linear(in_features, out_features, bias=False) if projected else None

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = features[self.input_name]
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (x if self.residual is None else self.residual(x))
        features[self.output_name] = out
        return features


class Normalize(nn.Module):
    """L2 normalisation over the last axis (torch.nn.functional.normalize, eps 1e-12)."""

    def __init__(self, input_name: str = "sentence_embedding", output_name: str | None = None):
        super().__init__()
        self.input_name, self.output_name = input_name, output_name or input_name

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features[self.output_name] = nn.functional.normalize(features[self.input_name], p=2.0, dim=-1)
        return features


class SentenceEncoder(nn.Module):
    """The transformer plus the folder's modules, in modules.json order.

    forward(input_ids, attention_mask, token_type_ids=None) -> (sentence_embedding, token_embeddings).
    takes: the keyword inputs the transformer itself accepts (attention_mask always feeds the pooling)."""

    def __init__(self, transformer: nn.Module, steps: list[nn.Module], takes: tuple[str, ...]):
        super().__init__()
        self.transformer = transformer
        self.steps = nn.ModuleList(steps)
        self.takes = tuple(takes)
        self.config = getattr(transformer, "config", None)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        kwargs = {k: v for k, v in given.items() if k in self.takes and v is not None}
        hidden = self.transformer(**kwargs, return_dict=True).last_hidden_state
        features = {"token_embeddings": hidden, "attention_mask": attention_mask}
        for step in self.steps:
            features = step(features)
        return features["sentence_embedding"], features["token_embeddings"]
