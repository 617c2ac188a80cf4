"""Built-in task heads for state-dict checkpoints of a Hugging Face backbone plus a custom head.

The common training class looks like

    class Model(nn.Module):
        def __init__(self):
            self.model = AutoModel.from_pretrained(...)    # the backbone (any attribute name)
            self.dropout = nn.Dropout(p)                   # no weights; identity in eval mode
            self.fc = nn.Linear(hidden_size, num_labels)   # the head (any attribute name)
        def forward(self, input_ids, attention_mask):
            h = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.fc(self.dropout(h[:, 0]))          # "sequence"   (first token)
            # or self.fc(self.dropout(out.pooler_output))  # "pooled"     (the backbone's pooler)
            # or self.fc(self.dropout(h))                  # "token"      (every position)

saved with torch.save(model.state_dict()). The head is one Linear layer; num_labels is read from its
weight's shape. `BackboneWithHead` rebuilds that forward so the model exports to ONNX as trained.
"""

from __future__ import annotations

import torch
from torch import nn

# head name -> what the Linear layer reads (documented in docs/cli.md, `--head`)
HEAD_HELP = {
    "sequence": "the first token's last hidden state ([CLS] / <s>), one row of logits per example",
    "pooled": "the backbone's pooled output (BERT-style pooler: tanh(dense(first token)))",
    "token": "every position's last hidden state, one row of logits per token",
}


class BackboneWithHead(nn.Module):
    """A transformers backbone (AutoModel) + dropout + Linear head. forward returns logits.

    head: "sequence" -> [batch, num_labels]; "pooled" -> [batch, num_labels];
          "token" -> [batch, sequence, num_labels].
    """

    def __init__(
        self, backbone: nn.Module, head: str, num_labels: int, in_features: int, bias: bool = True, dropout: float = 0.0
    ):
        super().__init__()
        if head not in HEAD_HELP:
            raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEAD_HELP)}")
        self.backbone = backbone
        self.head_kind = head
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(in_features, num_labels, bias=bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs = {"input_ids": input_ids}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.backbone(**kwargs, return_dict=True)
        if self.head_kind == "pooled":
            features = out.pooler_output
        elif self.head_kind == "sequence":
            features = out.last_hidden_state[:, 0]
        else:
            features = out.last_hidden_state
        return self.head(self.dropout(features))


def has_pooler(backbone: nn.Module) -> bool:
    return getattr(backbone, "pooler", None) is not None
