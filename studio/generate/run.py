"""The generation branch of the pipeline: a generator (text-generation, text2text-generation) exported with its
cache and judged by generating the sample's prompts.

    convert_generator(spec, loaded, df, work, say) -> Report

studio.pipeline calls it for a loaded generator when `spec.cache` is true (`--no-cache` goes through the ordinary
pipeline: the plain forward, logits only). Stages, each announced through `say` as the pipeline's are:

- batch: the prompts are the cells of the sample's text column (roles as for any model: explicit `--role`, else the
  suggestion); a sample with no text column, or with two, is refused naming the file;
- export: studio.generate.decoder (decoders: model.onnx) or studio.generate.seq2seq (encoder_model.onnx and the
  decoder files), with the studio's metadata beside the cache layout the exporter records;
- checker: the onnx checker and the graph's facts (of the decoder file);
- parity: the first step's logits (every prompt position, past length 0) against the PyTorch module's own forward,
  prompt by prompt: the report's parity table stays meaningful;
- generation: every prompt decoded greedily one by one and all together (left-padded) by transformers' `generate`
  and by ONNX Runtime through the file(s) (studio.generate.verify), and the shape probes over batch, sequence and
  past length (Report.dynamic);
- locate: when a prompt's tokens really differ (not a near tie), or with --locate, the divergence locator on that
  step (studio.generate.locate_step): report.json's `divergence`, the first node of model.onnx where ONNX Runtime
  leaves PyTorch on the prompt and the reference's tokens before the step (decoders; encoder-decoders are not located);
- variants: int8 / fp16 / optimized judged by the same generation (studio.generate.variants);
- latency: time to first token and tokens/s, PyTorch against ONNX Runtime (studio.generate.speed);
- writing: the tokenizer, config.json and generation_config.json at the folder's root (what optimum's ORTModel*,
  transformers.js and ONNX Runtime GenAI read beside the .onnx files), inference_example.py (a greedy loop with ONNX
  Runtime and the tokenizer), the sample and the rows it reads.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from studio import artifacts
from studio.checks import graph_info as inspect_mod
from studio.checks import parity as parity_mod
from studio.checks import runtime
from studio.errors import StudioError
from studio.generate.base import TEXT2TEXT_GENERATION, TEXT_GENERATION, GeneratorFiles, OrtGenerator
from studio.inputs import roles as roles_mod
from studio.inputs.cells import is_missing
from studio.inputs.sample import file_error, row_label
from studio.report.model import (
    DynamicInfo,
    ExportAttempt,
    ExportInfo,
    GenerationInfo,
    GenerationRun,
    LatencyInfo,
    ParityInfo,
    Probe,
    Report,
    VariantInfo,
)
from studio.sources.base import LoadedModel
from studio.spec import ConvertSpec

FRACTION = {
    "batch": 0.1,
    "export": 0.15,
    "checker": 0.5,
    "parity": 0.55,
    "generation": 0.6,
    "locate": 0.7,
    "variants": 0.75,
    "latency": 0.85,
    "writing": 0.97,
}
# what each task's files can do, for GenerationInfo.can and the report
CAN = {
    TEXT_GENERATION: "generates text: model.onnx takes the new tokens with the key/value cache of the tokens before "
    "them (past_key_values.*) and returns the next token's logits with the cache grown by them (present.*)",
    TEXT2TEXT_GENERATION: "generates text from an input text: encoder_model.onnx runs once per input, "
    "decoder_model.onnx takes the first decoder token, decoder_with_past_model.onnx every later one with the cache",
}
# the latency table's rows for a generator: its speed is in tokens, in the Generation section
SPEED_ELSEWHERE = "a generator is timed by generating: time to first token and tokens/s (Generation section)"
LATENCY_KEYS = ("torch_cpu", "ort_cpu", "ort_cuda", "torch_cuda")
Say = Any  # Callable[[str, float], None] (the pipeline's progress)


def convert_generator(spec: ConvertSpec, loaded: LoadedModel, df: pd.DataFrame, work: Path, say: Say) -> Report:
    """Export `loaded` (a generator) with its cache into `work`, verify it by generating the prompts of `df`
    (the sample, read), and return the Report (report.json / report.md are written by the pipeline)."""
    task = str(loaded.task)
    loaded.info["task_reason"] = f"{loaded.info.get('task_reason', '')}; the file {CAN[task]}"
    say("batch", FRACTION["batch"])
    file = str(spec.data)
    roles, column, prompts, warnings = prompts_of(df, loaded, spec.roles, file)
    if loaded.tokenizer is None:
        raise StudioError(
            f"{loaded.path} carries no tokenizer: the prompts of column {column!r} cannot be turned into tokens.",
            hint="Include the tokenizer files (tokenizer.json, tokenizer_config.json, ...) in the model folder.",
        )
    module, tokenizer = loaded.module, loaded.tokenizer
    from studio.generate.reference import special_tokens

    eos, pad = special_tokens(module, tokenizer)
    check_positions(module, tokenizer, prompts, pad, spec.max_new_tokens, file, column)
    warnings += _option_warnings(spec)

    say("export", FRACTION["export"])
    threads = spec.threads or runtime.default_threads()
    ahead = Ahead(module, tokenizer, prompts, spec.max_new_tokens, pad, threads) if Ahead.fits(task, module) else None
    files, export_info = export_files(task, loaded, spec, work, on_exported=ahead.start if ahead else None)
    main = work / files.files["model" if "model" in files.files else "decoder"]
    for f in files.files.values():
        artifacts.annotate(work / f, _metadata(loaded, roles, column, task, spec, files.exporter))
    runtime.release_memory()

    say("checker", FRACTION["checker"])
    checker = inspect_mod.check(main)
    graph = inspect_mod.graph_info(main)
    generator = make_generator(files, eos, pad, threads)
    if ahead is not None:
        warnings += ahead.join()

    say("parity", FRACTION["parity"])
    forwards = ahead.forwards if ahead is not None else None
    parity = first_step_parity(module, tokenizer, generator, prompts, pad, spec.atol, spec.rtol, forwards)

    say("generation", FRACTION["generation"])
    timings: list[Any] = []  # the check's decode pairs, timed: the speed rows of decoders
    before = machine_load()
    references = ahead.references if ahead is not None else None
    runs, probes = _check(module, tokenizer, files, generator, prompts, spec, threads, timings, references)
    if ahead is not None:
        ahead.mark(timings)
    busy = busy_since(before)
    divergence = _locate(spec, loaded, files, generator, runs, prompts, pad, say)
    ids, mask = _encoder(task)(tokenizer, prompts, pad)  # as the batched check fed them
    variant_rows, variant_infos = _variants(spec, loaded, files, ids, mask, eos, pad, threads, say)

    say("latency", FRACTION["latency"])
    speed = _speed(spec, module, generator, files, ids, mask, threads, timings, busy)
    generation = GenerationInfo(
        task=task,
        with_past=files.cache is not None,
        ok=bool(runs) and all(r.ok for r in runs) and all(bool(p.get("ok")) for p in probes),
        files=dict(files.files),
        io=dict(files.io),
        cache=asdict(files.cache) if files.cache is not None else {},
        max_new_tokens=spec.max_new_tokens,
        runs=runs,
        probes=probes,
        speed=speed,
        variants=variant_rows,
        can=CAN[task],
    )
    report = Report(
        source=loaded.describe(),
        roles=roles,
        export=export_info,
        graph=graph,
        checker=checker,
        parity=parity,
        dynamic=probe_info(probes, files),
        latency=LatencyInfo(errors=dict.fromkeys(LATENCY_KEYS, SPEED_ELSEWHERE), threads=threads),
        predictions=_predictions(df, roles, column, runs),
        variants=variant_infos,
        warnings=warnings + list(loaded.info.get("warnings") or []),
        generation=generation,
        divergence=divergence,
    )
    say("writing", FRACTION["writing"])
    report.files = write_files(spec, loaded, files, df, column, eos, work)
    return report


def plain_forward(loaded: LoadedModel) -> None:
    """--no-cache: the generator goes through the ordinary pipeline as its plain forward (input_ids, attention_mask
    -> logits at every position, checked as any logits model); its task reason says what that file can do. An
    encoder-decoder has no single plain forward on the sample's columns (its decoder needs decoder tokens): refused."""
    if loaded.task == TEXT2TEXT_GENERATION:
        raise StudioError(
            f"--no-cache: {loaded.path} is an encoder-decoder ({loaded.info.get('architecture')}); it is exported "
            "as encoder_model.onnx with its decoder files and their cache only.",
            hint="Leave out --no-cache.",
        )
    loaded.info["task_reason"] = (
        f"{loaded.info.get('task_reason', '')}; --no-cache: model.onnx is the plain forward (input_ids, "
        "attention_mask -> logits at every position, no key/value cache): a generation loop must re-run the whole "
        "sequence for every new token"
    )
    tok = loaded.tokenizer
    if tok is not None and getattr(tok, "pad_token", None) is None and getattr(tok, "eos_token", None) is not None:
        tok.pad_token = tok.eos_token  # as transformers' generate pads; the logits of real tokens are judged
        loaded.info["warnings"] = [
            *(loaded.info.get("warnings") or []),
            f"the tokenizer has no padding token: rows are padded with its EOS token {tok.eos_token!r} (as "
            "transformers' generate does); the saved tokenizer pads so too.",
        ]


# --- the prompts ---------------------------------------------------------------------------------------------


def prompts_of(
    df: pd.DataFrame, loaded: LoadedModel, roles: dict[str, str], file: str
) -> tuple[dict[str, str], str, list[str], list[str]]:
    """(every column's role, the text column, its prompts, warnings): the sample's one text-role column, chosen as
    for any text model (explicit roles win, else the suggestion). Refused, naming the file: no rows, a role for a
    column the file lacks, no text column or more than one, a missing cell."""
    df = roles_mod.prepared_frame(df, file)
    if len(df) == 0:
        raise file_error(file, "the sample has no rows: a generator needs at least one prompt.")
    for col in roles:
        if col not in df.columns:
            raise file_error(
                file,
                f"a role is given for column {col!r}, which is not in the file. Columns in the file: "
                + ", ".join(map(repr, df.columns))
                + ".",
                column=col,
            )
    final = roles_mod.resolve_roles(df, loaded, {str(c): str(r) for c, r in roles.items()})
    text = [c for c in df.columns if final[c] == "text"]
    if not text:
        strings = [c for c in df.columns if roles_mod.describe_column(c, df[c]).detected == "text"]
        raise file_error(
            file,
            f"a {loaded.task} model continues prompts, but no column is mapped text"
            + (
                f" (string columns: {', '.join(map(repr, strings))})."
                if strings
                else " and the file has no string column."
            )
            + f" Columns in the file: {', '.join(map(repr, df.columns))}.",
            hint=f"Map the prompt column with --role {strings[0]}=text." if strings else "Give one prompt per row.",
        )
    if len(text) > 1:
        raise file_error(
            file,
            f"{len(text)} columns are mapped text ({', '.join(map(repr, text))}); a generator continues one prompt "
            "column.",
            column=text[1],
            hint=f"Map the others to ignore (e.g. --role {text[1]}=ignore).",
        )
    column = text[0]
    prompts, warnings = [], []
    for i, v in enumerate(df[column].tolist()):
        if is_missing(v) or not str(v).strip():
            raise file_error(
                file, f"column {column!r}, {row_label(i)}: the prompt is empty; there is nothing to continue.",
                column=column, row=i,
            )  # fmt: skip
        if not isinstance(v, str):
            warnings.append(f"{file}: column {column!r}, {row_label(i)}: not text ({type(v).__name__}); used as {v!s}.")
        prompts.append(str(v))
    for c in df.columns:
        if final[c] == "tabular":
            final[c] = "ignore"
    return dict(final), column, prompts, warnings


def check_positions(
    module: Any, tokenizer: Any, prompts: list[str], pad: int, max_new_tokens: int, file: str, column: str
) -> None:
    """A prompt plus the new tokens must fit the model's position table (when it has one): refused naming the row."""
    from studio.generate.reference import encode

    config = module.config.get_text_config(decoder=True)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not isinstance(limit, int) or getattr(module.config, "is_encoder_decoder", False):
        return
    for i, text in enumerate(prompts):
        tokens = int(encode(tokenizer, [text], pad)[0].shape[1])
        if tokens + max_new_tokens > limit:
            raise file_error(
                file,
                f"column {column!r}, {row_label(i)}: the prompt is {tokens} tokens; with --max-new-tokens "
                f"{max_new_tokens} it needs {tokens + max_new_tokens} positions, and the model has {limit}.",
                column=column,
                row=i,
                hint="Shorten the prompt or lower --max-new-tokens.",
            )


def _option_warnings(spec: ConvertSpec) -> list[str]:
    out = []
    if spec.exporter == "compare":
        out.append(
            "--exporter compare does not apply to a generator: its file is exported with the cache by auto's order "
            "(TorchScript, as optimum does, then the dynamo exporter when TorchScript fails)."
        )
    if tuple(spec.dynamic) != ("batch", "sequence") or spec.dynamic_per_input:
        out.append("--dynamic / --static do not apply to a generator: batch, sequence and past length stay dynamic.")
    return out


# --- export, generators --------------------------------------------------------------------------------------


class Ahead:
    """The PyTorch side of the check, run in a thread beside the decoder's export once torch.onnx.export has
    returned (the export's `on_exported`; the model is no longer traced then: is_in_onnx_export() is
    process-wide), so it overlaps the weights' writing, the checker and the ORT session's creation: the first
    step's logits of every prompt (parity), then transformers' decodes one by one and batched (the generation
    check). What it got done is used; what it did not (an exception: kept in `error`) is redone by the caller
    where the results are used, which meets and reports the error there. Each decode notes whether it began
    while the main thread still worked (its time is then shared with that work: said in the speed rows)."""

    def __init__(self, module: Any, tokenizer: Any, prompts: list[str], new_tokens: int, pad: int, threads: int):
        import threading

        self.module, self.tokenizer, self.prompts, self.new_tokens, self.pad = (
            module,
            tokenizer,
            prompts,
            new_tokens,
            pad,
        )
        self.threads = threads
        self.forwards: list[np.ndarray] = []
        self.references: dict[str, Any] = {}
        self.overlapped: list[bool] = []  # per decode, in the check's order (one by one, then batched)
        self.error: BaseException | None = None
        self.free = threading.Event()  # the main thread waits for the thread: decodes from now on run alone
        self.thread = threading.Thread(target=self._run, name="studio-beside-decoder-export", daemon=True)
        self.started = False

    @staticmethod
    def fits(task: str, module: Any) -> bool:
        """Decoders whose export leaves the module as it runs: not while a mixture of experts is switched to
        batched_mm for the trace (the reference must run the model's own experts)."""
        experts = getattr(getattr(module, "config", None), "_experts_implementation", None)
        can = getattr(module, "_can_set_experts_implementation", None)
        switched = experts not in (None, "batched_mm") and callable(can) and bool(can())
        return task == TEXT_GENERATION and not switched

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.thread.start()

    def _run(self) -> None:
        from studio.generate.reference import encode, forward_logits
        from studio.generate.verify import reference_decodes

        try:
            with torch_threads(self.threads):
                for text in self.prompts:
                    ids, mask = encode(self.tokenizer, [text], self.pad)
                    self.forwards.append(forward_logits(self.module, ids, mask)[0])
                reference_decodes(self.module, self.tokenizer, self.prompts, self.new_tokens, self.references,
                                  before=lambda: self.overlapped.append(not self.free.is_set()))  # fmt: skip
        except Exception as e:  # noqa: BLE001 - redone, and reported, by the caller
            self.error = e

    def join(self) -> list[str]:
        """Wait for the thread; a warning when it stopped early (the rest is redone in its stage)."""
        self.free.set()
        if self.started:
            self.thread.join()
        if self.error is None:
            return []
        return [
            "the PyTorch decodes run beside the export stopped "
            f"({type(self.error).__name__}: {str(self.error)[:200]}); what was left was redone in its stage"
        ]

    def mark(self, timings: list[Any]) -> None:
        """The check's decode pairs whose PyTorch decode ran beside the export's work."""
        for t, shared in zip(timings, self.overlapped):
            t.reference_shared = shared


def export_files(
    task: str, loaded: LoadedModel, spec: ConvertSpec, work: Path, on_exported: Any = None
) -> tuple[GeneratorFiles, ExportInfo]:
    """The generator's files in `work`, and the ExportInfo of the report (TorchScript, the opset read back).
    `on_exported`: a decoder's export calls it once torch.onnx.export (TorchScript) has returned."""
    started = time.perf_counter()
    module = loaded.module
    if task == TEXT_GENERATION:
        from studio.generate.decoder import export_decoder

        exporter = spec.exporter if spec.exporter in ("torchscript", "dynamo") else "auto"  # compare: auto's order
        files = export_decoder(
            module, module.config, work, opset=spec.opset, with_past=True, exporter=exporter, on_exported=on_exported
        )
    else:
        from studio.generate.seq2seq import export_seq2seq

        files = export_seq2seq(module, module.config, work, opset=spec.opset, with_past=True)
        if spec.exporter == "dynamo":
            files.warnings.append("--exporter dynamo: an encoder-decoder's files are exported by TorchScript")
    module.eval()  # the export's wrapper may hand the model back in train mode (dropout on): never run it so
    seconds = round(time.perf_counter() - started, 2)
    main = work / files.files["model" if "model" in files.files else "decoder"]
    opset = inspect_mod.graph_info(main).opset
    names = ", ".join(files.files.values())
    used = files.exporter
    how = "TorchScript, as optimum does" if used == "torchscript" else f"the {used} exporter"
    note = "; ".join(files.warnings) or None
    return files, ExportInfo(
        exporter=used,
        opset_requested=spec.opset,
        opset=opset,
        seconds=seconds,
        attempts=[ExportAttempt(used, True, seconds=seconds, opset_written=opset, note=note)],
        external_data=files.external_data,
        reason=f"a generator is exported with its key/value cache by {how} ({names})" + (f"; {note}" if note else ""),
    )


def make_generator(files: GeneratorFiles, eos: Any, pad: int, threads: int) -> OrtGenerator:
    """The ONNX Runtime generator (CPU) for the files: a decoder's, or an encoder-decoder's."""
    if files.task == TEXT_GENERATION:
        from studio.generate.ort_decoder import OrtDecoder

        return OrtDecoder(files, eos_token_id=eos, pad_token_id=pad, threads=threads)
    from studio.generate.ort_seq2seq import OrtSeq2Seq

    return OrtSeq2Seq(files, eos_token_id=eos, pad_token_id=pad, threads=threads)


def _metadata(
    loaded: LoadedModel, roles: dict[str, str], column: str, task: str, spec: ConvertSpec, exporter: str
) -> dict[str, str]:
    from studio._version import __version__

    return {
        "studio.version": __version__,
        "studio.source_kind": loaded.kind,
        "studio.roles": json.dumps(roles),
        "studio.task": task,
        "studio.prompt_column": column,
        "studio.opset": str(spec.opset),
        "studio.exporter": exporter,
    }


# --- the checks ----------------------------------------------------------------------------------------------


def first_step_parity(
    module: Any, tokenizer: Any, generator: Any, prompts: list[str], pad: int, atol: float, rtol: float,
    forwards: list[np.ndarray] | None = None,
) -> ParityInfo:  # fmt: skip
    """The first step's logits (every prompt position, past length 0) of the file against the module's forward,
    prompt by prompt (no padding: both sides see the same positions); rows padded with zeros on both sides to the
    longest prompt, the real tokens judged."""
    encode = _encoder(TEXT_GENERATION)  # one prompt at a time: no padding either way

    provider = next(iter(generator.providers()), "CPUExecutionProvider")
    seq2seq = not hasattr(generator, "step")  # an encoder-decoder: its encoder's states and first decoder step
    pairs: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    try:
        for i, text in enumerate(prompts):
            ids, mask = encode(tokenizer, [text], pad)
            known = forwards[i] if forwards is not None and i < len(forwards) else None
            found = (
                _seq2seq_first_step(module, generator, ids, mask)
                if seq2seq
                else _first_step(module, generator, ids, mask, known)
            )
            for name, (want, got) in found.items():
                pairs.setdefault(name, ([], []))[0].append(want)
                pairs[name][1].append(got)
    except Exception as e:  # noqa: BLE001 - the file cannot run a prompt: parity fails with the reason
        return ParityInfo(ok=False, atol=atol, rtol=rtol, outputs=[], rows=len(prompts), provider=provider,
                          error=f"ONNX Runtime could not run the first step: {type(e).__name__}: {e}"[:600])  # fmt: skip
    expected, actual, real = {}, {}, None
    for name, (torch_side, onnx_side) in pairs.items():
        expected[name], actual[name], mask_of = _stacked(torch_side, onnx_side)
        # the real positions: of the prompt's tokens (a decoder's logits, an encoder's states)
        real = mask_of if name == ("last_hidden_state" if seq2seq else "logits") else real
    kinds = {"logits": "logits", "last_hidden_state": "hidden"}
    diffs = parity_mod.compare(expected, actual, atol, rtol, kinds, real)
    return ParityInfo(ok=all(d.ok for d in diffs), atol=atol, rtol=rtol, outputs=diffs, rows=len(prompts),
                      provider=provider)  # fmt: skip


def _first_step(
    module: Any, generator: Any, ids: np.ndarray, mask: np.ndarray, known: np.ndarray | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A decoder's logits at every prompt position with past length 0: (PyTorch's forward, the file's);
    `known`: PyTorch's, computed beforehand (beside the export)."""
    from studio.generate.reference import forward_logits

    feeds = {"input_ids": ids, "attention_mask": mask, **generator.empty_past(1)}
    feeds["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None]
    got = np.asarray(generator.step(feeds)["logits"], dtype=np.float32)[0]
    want = known if known is not None else forward_logits(module, ids, mask)[0]
    return {"logits": (want, got)}


def _seq2seq_first_step(
    module: Any, generator: Any, ids: np.ndarray, mask: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """An encoder-decoder's encoder states and its first decoder step's logits (from the decoder start token):
    (PyTorch's, the files')."""
    import torch

    start = np.array([[generator.start]], dtype=np.int64)
    with torch.no_grad():
        t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
        hidden = module.get_encoder()(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
        logits = module(input_ids=t_ids, attention_mask=t_mask, decoder_input_ids=torch.from_numpy(start)).logits
    got_hidden = generator.encode(ids, mask)
    feeds = {"encoder_attention_mask": mask, "input_ids": start, "encoder_hidden_states": got_hidden}
    got_logits = generator.sessions["decoder"].run(["logits"], feeds)[0]
    return {
        "last_hidden_state": (hidden.float().numpy()[0], np.asarray(got_hidden, dtype=np.float32)[0]),
        "logits": (logits.float().numpy()[0], np.asarray(got_logits, dtype=np.float32)[0]),
    }


def _stacked(want: list[np.ndarray], got: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-prompt [positions, ...] arrays stacked into [prompts, longest, ...], zeros on both sides past a prompt's
    end (a shape the file got wrong is NaN: a failure, never a number); and the mask of the real positions."""
    longest = max(w.shape[0] for w in want)
    expected = np.zeros((len(want), longest, *want[0].shape[1:]), dtype=np.float32)
    actual, real = np.zeros_like(expected), np.zeros((len(want), longest), dtype=bool)
    for i, (w, g) in enumerate(zip(want, got)):
        expected[i, : w.shape[0]] = w
        actual[i, : w.shape[0]] = g if g.shape == w.shape else np.nan
        real[i, : w.shape[0]] = True
    return expected, actual, real


def _locate(
    spec: ConvertSpec, loaded: LoadedModel, files: GeneratorFiles, generator: Any, runs: list[GenerationRun],
    prompts: list[str], pad: int, say: Say,
) -> dict[str, Any] | None:  # fmt: skip
    """The divergence locator on the step where a prompt's tokens first really differ (not a near tie), or on
    request (--locate): report.json's `divergence` (studio.generate.locate_step); it does not change the verdict."""
    real = any(p.divergence is not None and not p.divergence.near_tie for r in runs for p in r.prompts)
    if not (spec.locate or real):
        return None
    say("locate", FRACTION["locate"])
    from studio.generate.locate_step import for_generation

    found = for_generation(spec, loaded, files, generator, runs, prompts, pad)
    runtime.release_memory()
    return found


def machine_load() -> dict[str, Any]:
    from studio.timing.latency import machine

    return machine()


def busy_since(before: dict[str, Any]) -> str | None:
    from studio.generate.speed import busy_note

    return busy_note(before, machine_load())


def _speed(
    spec: ConvertSpec, module: Any, generator: Any, files: GeneratorFiles, ids: np.ndarray, mask: np.ndarray,
    threads: int, timings: list[Any], busy: str | None,
) -> list[Any]:  # fmt: skip
    """The speed rows. A decoder's CPU rows are the generation check's own timed decodes (no decode of their own);
    ORT CUDA (IO binding) is timed by repeated decodes where CUDA is really in use. An encoder-decoder's check is
    not timed: its rows are measure_speed's repeated decodes."""
    from studio.generate import speed as speed_mod

    if files.task != TEXT_GENERATION or not timings:
        return speed_mod.measure_speed(
            module, generator, ids, mask, spec.max_new_tokens, threads=threads, budget_s=spec.latency_budget_s,
            cuda=spec.cuda, files=files,
        )  # fmt: skip
    attention = getattr(module.config, "_attn_implementation", None)
    how = f"{attention} attention, as the check's reference ran (the export traced eager)" if attention else None
    rows = speed_mod.speed_from_check(timings, generator.providers(), threads, how, busy)
    return rows + speed_mod.cuda_speed(
        files, timings, ids, mask, threads=threads, budget_s=spec.latency_budget_s, cuda=spec.cuda
    )


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to the studio's (what the ORT sessions use) for the block, then restored."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check(
    module: Any, tokenizer: Any, files: GeneratorFiles, generator: Any, prompts: list[str], spec: ConvertSpec,
    threads: int, timings: list[Any], references: dict[str, Any] | None = None,
) -> tuple[list[GenerationRun], list[dict[str, Any]]]:  # fmt: skip
    if files.task == TEXT2TEXT_GENERATION:
        from studio.generate.seq2seq_check import check_seq2seq

        return check_seq2seq(
            module, tokenizer, files, prompts, spec.max_new_tokens, spec.atol, spec.rtol, ort_generator=generator
        )
    from studio.generate.verify import check_generation

    module.eval()
    with torch_threads(threads):  # PyTorch's decodes are timed (the speed rows): with the threads ORT has
        return check_generation(
            module, tokenizer, files, prompts, spec.max_new_tokens, spec.atol, spec.rtol, ort_generator=generator,
            timings=timings, references=references,
        )  # fmt: skip


def _encoder(task: str) -> Any:
    """How the task's prompts are batched: decoders left-padded, encoder-decoders right-padded."""
    if task == TEXT2TEXT_GENERATION:
        from studio.generate.seq2seq_check import encode_right

        return encode_right
    from studio.generate.reference import encode

    return encode


def probe_info(probes: list[dict[str, Any]], files: GeneratorFiles) -> DynamicInfo:
    """The generation probes (batch, sequence, past length) as the report's dynamic-dimension probes."""
    rows = []
    for p in probes:
        worst = p.get("max_abs_diff")
        message = f"past length {p.get('past')}" + (f": {p['error']}" if p.get("error") else "")
        changed = "past" if p.get("past") else ("batch" if int(p.get("batch") or 1) > 1 else "sequence")
        diff = None if worst is None else float(worst)
        rows.append(Probe(int(p["batch"]), p.get("sequence"), bool(p.get("ok")), diff, message, changed))
    requested = {
        name: (["batch", "past_sequence"] if name.startswith("past_key_values.") else ["batch", "sequence"])
        for role in files.io.values()
        for name in role
        if name.startswith(("input_ids", "attention_mask", "position_ids", "past_key_values."))
    }
    return DynamicInfo(ok=all(r.ok for r in rows) if rows else None, probes=rows, requested=requested)


def _variants(
    spec: ConvertSpec,
    loaded: LoadedModel,
    files: GeneratorFiles,
    ids: np.ndarray,
    mask: np.ndarray,
    eos: Any,
    pad: int,
    threads: int,
    say: Say,
) -> tuple[list[dict[str, Any]], list[VariantInfo]]:
    """int8 / fp16 / optimized of the files, judged by the same generation (none unless asked)."""
    if not spec.variants:
        return [], []
    say("variants", FRACTION["variants"])
    from studio.generate.variants import judge_variants

    if files.task == TEXT2TEXT_GENERATION:
        from studio.generate.seq2seq_check import reference_seq2seq

        reference = reference_seq2seq(loaded.module, ids, mask, spec.max_new_tokens, eos, pad)
    else:
        from studio.generate.reference import reference_steps

        reference = reference_steps(loaded.module, ids, mask, spec.max_new_tokens, eos, pad)
    judged = judge_variants(spec, loaded, files, ids, mask, reference, lambda f: make_generator(f, eos, pad, threads))
    runtime.release_memory()
    return judged.rows, judged.infos


def _predictions(
    df: pd.DataFrame, roles: dict[str, str], column: str, runs: list[GenerationRun]
) -> list[dict[str, Any]]:
    """Per row: the ignored columns beside the prompt's ONNX Runtime continuation (the one-by-one run)."""
    from studio.inputs.cells import jsonable

    one = next((r for r in runs if r.mode == "one by one"), None)
    texts = {p.prompt: p.onnx_text for p in (one.prompts if one else [])}
    rows = []
    for i, row in enumerate(df.itertuples(index=False, name=None)):
        cells = dict(zip(map(str, df.columns), row))
        out = {c: jsonable(cells[c]) for c in roles if roles[c] == "ignore" and c in cells}
        out["continuation"] = texts.get(i)
        rows.append(out)
    return rows


# --- the output folder ---------------------------------------------------------------------------------------


def write_files(
    spec: ConvertSpec, loaded: LoadedModel, files: GeneratorFiles, df: pd.DataFrame, column: str, eos: Any, work: Path
) -> dict[str, str]:
    """The tokenizer, config.json and generation_config.json at the root (transformers' own save of the loaded
    ones), inference_example.py, the sample copy and the rows it reads; their report.files entries."""
    from studio.generate import example
    from studio.generate.ort_decoder import eos_ids

    module: Any = loaded.module
    saved = set(loaded.tokenizer.save_pretrained(str(work)))
    module.config.save_pretrained(str(work))
    if getattr(module, "generation_config", None) is not None:
        module.generation_config.save_pretrained(str(work))
    sample = "sample" + Path(spec.data).suffix.lower()
    shutil.copyfile(spec.data, work / sample)
    artifacts.write_rows(df, work / artifacts.SAMPLE_ROWS)
    script = example.script(files, column, spec.max_new_tokens, sorted(eos_ids(eos)))
    (work / example.FILE).write_text(script)
    out = {role: name for role, name in files.files.items()}
    for role, name in files.files.items():
        if (work / f"{name}.data").exists():
            out[f"{role}_data"] = f"{name}.data"
    out.update(
        {
            "report_json": "report.json",
            "report_md": "report.md",
            "example": example.FILE,
            "sample": sample,
            "sample_rows": artifacts.SAMPLE_ROWS,
            "config": "config.json",
        }
    )
    if (work / "generation_config.json").exists():
        out["generation_config"] = "generation_config.json"
    tokenizer_files = sorted(Path(p).name for p in saved if Path(p).is_file() and Path(p).parent == work)
    if tokenizer_files:
        out["tokenizer"] = ", ".join(tokenizer_files)
    return out
