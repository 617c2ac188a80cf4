"""A small GPT-2 trained here, on CPU in seconds, on real text nobody here wrote: the docstrings of the Python
standard library (`inspect.getdoc` of stdlib modules and their public functions and classes: on every machine,
no download). Its tokenizer is a byte-level BPE trained on the same text with the `tokenizers` library.

Random-weight models tie often and repeat themselves, so greedy decoding of them is a weak test; this model's
continuations of real prompts are real choices among likely tokens. `train(folder)` writes a Hugging Face folder
(config.json, model.safetensors, generation_config.json, tokenizer.json, ...) and returns what it learned
(first and last loss), so a test can assert the model is not degenerate. Used by tests/test_trained_gpt2.py.
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

MODULES = (
    "argparse collections contextlib csv dataclasses datetime decimal difflib enum fractions functools glob gzip "
    "heapq hashlib inspect io itertools json logging os pathlib pickle random re shutil socket statistics string "
    "subprocess tarfile tempfile textwrap threading time typing unittest urllib.parse uuid zipfile"
).split()
PROMPTS = [
    "Return a new",
    "If the file does not exist,",
    "This module provides",
    "The default value is",
    "Raise an exception if",
]
EOT = "<|endoftext|>"
VOCAB = 768
CONTEXT = 64
STEPS = 300
BATCH = 16


@dataclass
class Trained:
    folder: Path
    characters: int  # of stdlib docstrings trained on
    tokens: int
    parameters: int
    first_loss: float  # mean of the first 10 steps
    last_loss: float  # mean of the last 10 steps
    seconds: float


def corpus() -> str:
    """The docstrings of MODULES and of their public functions, classes and methods, one per paragraph, read in a
    fresh interpreter that has imported nothing else: what a test session's other imports (torch, gradio, pytest,
    ...) add to the stdlib's modules changed the text, and the trained model with it (a CI run's model repeated
    one token where the same test alone did not)."""
    code = (
        f"import importlib, inspect, sys\nMODULES = {MODULES!r}\n"
        + inspect.getsource(_corpus)
        + "\nsys.stdout.buffer.write(_corpus().encode('utf-8'))\n"
    )
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, timeout=120, check=True)
    return done.stdout.decode("utf-8")


def _corpus() -> str:
    seen: set[int] = set()
    parts: list[str] = []

    def add(obj) -> None:
        doc = inspect.getdoc(obj)
        if doc and id(obj) not in seen and len(doc) > 40:
            seen.add(id(obj))
            parts.append(doc.strip())

    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:  # a trimmed interpreter: the rest is enough
            continue
        add(mod)
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                add(obj)
            if inspect.isclass(obj):
                for meth_name, meth in sorted(vars(obj).items()):
                    if not meth_name.startswith("_") and inspect.isfunction(meth):
                        add(meth)
    return "\n\n".join(parts)


def tokenizer(text: str):
    """A byte-level BPE (GPT-2's scheme) trained on `text`, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT)


def train(folder: Path, steps: int = STEPS, seed: int = 0) -> Trained:
    """Train the tokenizer and a 2-layer GPT-2 (hidden 64) on the stdlib's docstrings; save both in `folder`."""
    import transformers as tf

    start = time.perf_counter()
    text = corpus()
    tok = tokenizer(text)
    eot = tok.convert_tokens_to_ids(EOT)
    ids = [i for para in tok(text.split("\n\n"))["input_ids"] for i in para + [eot]]
    data = torch.tensor(ids, dtype=torch.long)
    config = tf.GPT2Config(
        vocab_size=len(tok),
        n_positions=CONTEXT * 2,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=eot,
        eos_token_id=eot,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    model = tf.GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread (and spins the least on a busy box)
    try:
        losses = _steps(model, opt, sched, data, gen, steps)
    finally:
        torch.set_num_threads(threads)
    model.eval()

    model.generation_config.do_sample = False
    model.generation_config.pad_token_id = eot
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    info = Trained(
        folder=folder,
        characters=len(text),
        tokens=len(ids),
        parameters=sum(p.numel() for p in model.parameters()),
        first_loss=sum(losses[:10]) / 10,
        last_loss=sum(losses[-10:]) / 10,
        seconds=round(time.perf_counter() - start, 1),
    )
    (folder / "trained.json").write_text(json.dumps({**asdict(info), "folder": str(folder)}, indent=1))
    return info


def _steps(model, opt, sched, data: torch.Tensor, gen: torch.Generator, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        at = torch.randint(0, len(data) - CONTEXT - 1, (BATCH,), generator=gen)
        batch = torch.stack([data[i : i + CONTEXT] for i in at.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss))
    return losses


if __name__ == "__main__":  # python tests/trained_gpt2.py /tmp/gpt2-stdlib
    import sys

    got = train(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gpt2-stdlib"))
    print(got)
