"""Imported once by the job fork server (never by the web server itself): runs one tiny export with the
new exporter so that its one-time set-up (op registry, tracing caches, lazy imports: ~half of the first
export's time) is paid once at launch instead of in every job. Each job is forked from this warmed state.

It runs single-threaded (torch.set_num_threads(1)) so that no OpenMP worker threads exist when the fork
server forks; jobs set their own thread count. Any failure here is ignored: jobs then warm up themselves.
"""

from __future__ import annotations

import os

THREADS: int | None = None  # torch's thread count before warming: each job restores it


def _warm() -> None:
    global THREADS
    import tempfile

    import torch

    from studio.quiet import quiet
    from studio.spec import default

    THREADS = torch.get_num_threads()
    torch.set_num_threads(1)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(16, 8)
            self.norm = torch.nn.LayerNorm(8)
            self.lin = torch.nn.Linear(9, 3)

        def forward(self, input_ids, attention_mask, tabular):
            h = self.norm(self.emb(input_ids)) * attention_mask.unsqueeze(-1).to(torch.float32)
            h = torch.nn.functional.gelu(h.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1))
            return torch.softmax(self.lin(torch.cat([h, tabular], dim=-1)), dim=-1)

    ids = torch.randint(0, 16, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    tab = torch.randn(2, 1)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with quiet(), torch.no_grad():
        program = torch.onnx.export(
            Tiny().eval(),
            (ids, mask, tab),
            dynamo=True,
            input_names=["input_ids", "attention_mask", "tabular"],
            output_names=["probs"],
            opset_version=default("opset"),
            verbose=False,
            dynamic_shapes={
                "input_ids": {0: batch, 1: seq},
                "attention_mask": {0: batch, 1: seq},
                "tabular": {0: batch},
            },
        )
        if program is not None:
            with tempfile.TemporaryDirectory(prefix="studio-warm-") as tmp:
                program.save(os.path.join(tmp, "warm.onnx"))


if os.environ.get("STUDIO_WORKER_WARM", "1") != "0":
    try:
        _warm()
    except Exception:  # noqa: BLE001 - only a speed-up
        pass
