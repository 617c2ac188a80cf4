"""int8 / fp16 (and optimized) variants of a generator's file(s), judged by the same generation as the file itself.

`judge_variants` builds each requested variant of every file of the export (a decoder's model.onnx; an
encoder-decoder's encoder and decoder files) with the builders of studio.variants (VARIANT_TABLE: the same int8
quantizer, fp16 converter and fusers as any other model's variants, written to `<out>/variants/<stem>.<name>.onnx`),
then greedily decodes the sample's prompts through the variant (an OrtGenerator made by `make_generator`, as the
generation check made one for model.onnx) and compares its new tokens with transformers' (`reference`, the check's
own Steps: the reference is not run again).

What each row says (GenerationInfo.variants, one dict per variant):
- identical_share: the share of transformers' new tokens (each prompt's, up to its EOS) that the variant produced
  at the same step (a token the variant did not produce, because it ended earlier, counts as different);
- first_divergence: {prompt, step, expected, got, margin} of the earliest step where any prompt's tokens differ
  (margin: transformers' top-1 minus top-2 logit at that step; a small one is a near-tie that rounding can flip);
  None when every token is identical; divergences: every diverging prompt's first step;
- ok: identical_share >= MIN_SHARE[name] (`rule` says so in the row). Reduced precision moves the logits a little,
  and greedy decoding follows any flipped near-tie into a different continuation, so a variant is not held to
  exact identity: fp16 (~3 significant digits) must keep 90% of the tokens, int8 (dynamic, per-column weight
  scales) half of them, optimized (fp32 fusions, float noise only) 95%. A broken variant (a wrong scale, a lost
  head) keeps almost none, from the first step.
A variant that cannot be built or run gets ok False and its error, never a share.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from studio.artifacts import artifact_files, remove_model, reraise_disk_full
from studio.checks import runtime
from studio.errors import first_line
from studio.generate.base import GeneratorFiles, OrtGenerator, Steps
from studio.quiet import quiet
from studio.report.model import VariantInfo
from studio.spec import VariantOptions
from studio.variants.table import BUILD_ORDER, VARIANT_TABLE, Built, Context

FOLDER = "variants"
MIN_SHARE = {"optimized": 0.95, "fp16": 0.9, "int8": 0.5}
RULE = "ok when at least {share:.0%} of transformers' new tokens are identical, at the same step"
GENERATION_VARIANTS = tuple(MIN_SHARE)


@dataclass
class GenerationVariants:
    """What judge_variants made: the rows of GenerationInfo.variants, and a VariantInfo per variant (its files,
    size, how it was built, the generation verdict as its ok) for the report's downloads."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    infos: list[VariantInfo] = field(default_factory=list)

    def add(self, row: dict[str, Any], info: VariantInfo) -> None:
        self.rows.append(row)
        self.infos.append(info)


def _top2_margin(logits: np.ndarray) -> float | None:
    if logits.size < 2:
        return None
    top = np.partition(logits.astype(np.float64), -2)[-2:]
    return float(abs(top[1] - top[0])) if np.all(np.isfinite(top)) else float("nan")


def compare(reference: Steps, got: Steps) -> dict[str, Any]:
    """identical_share, first_divergence and every prompt's first diverging step (module docstring)."""
    same = total = 0
    divergences = []
    for b, length in enumerate(reference.lengths):
        expected = [int(t) for t in reference.ids[b, :length]]
        mine = [int(t) for t in got.ids[b, : got.lengths[b]]] if b < got.ids.shape[0] else []
        total += len(expected)
        hits = [t < len(mine) and mine[t] == e for t, e in enumerate(expected)]
        same += sum(hits)
        if not all(hits) or len(mine) != len(expected):
            step = hits.index(False) if not all(hits) else len(expected)
            at = reference.logits[step][b] if step < len(reference.logits) else None
            divergences.append(
                {
                    "prompt": b,
                    "step": step,
                    "expected": expected[step] if step < len(expected) else None,
                    "got": mine[step] if step < len(mine) else None,
                    "margin": _top2_margin(np.asarray(at)) if at is not None else None,
                }
            )
    first = min(divergences, key=lambda d: (d["step"], d["prompt"])) if divergences else None
    return {
        "identical_share": round(same / total, 4) if total else None,
        "first_divergence": first,
        "divergences": divergences,
    }


def _build_all(
    name: str, ctx: Context, files: GeneratorFiles, built: dict[str, GeneratorFiles]
) -> tuple[GeneratorFiles, list[Built]]:
    """Every file of the export as variant `name` (from the variant it is built from, when that was built here)."""
    variant = VARIANT_TABLE[name]
    source = next((built[b] for b in variant.built_from if b in built), files)
    out: dict[str, str] = {}
    made: list[Built] = []
    folder = Path(files.folder)
    for role, file in files.files.items():
        src = folder / source.files[role]
        dest = folder / FOLDER / f"{Path(file).name.removesuffix('.onnx')}.{name}.onnx"
        dest.parent.mkdir(parents=True, exist_ok=True)
        step = replace(ctx, model_path=src, folder=dest.parent)
        try:
            with quiet(("",)):  # the quantizer and converters log advice to the root logger
                made.append(variant.build(step, src, dest))
        except Exception:
            remove_model(dest)
            for m in made:
                remove_model(m.path)
            raise
        out[role] = dest.relative_to(folder).as_posix()
    return replace(files, files=out), made


def judge_variants(
    spec: VariantOptions,
    loaded: Any,
    files: GeneratorFiles,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    reference: Steps,
    make_generator: Callable[[GeneratorFiles], OrtGenerator],
    names: tuple[str, ...] | None = None,
) -> GenerationVariants:
    """Build each variant of `names` (default: spec.variants) and judge it by generating the prompts
    (`input_ids` / `attention_mask`, as the check fed them) for as many new tokens as `reference` holds.
    `loaded`: the studio.sources LoadedModel (the builders may read it; None is fine for int8 and fp16)."""
    wanted = [n for n in BUILD_ORDER if n in (names if names is not None else spec.variants) and n in MIN_SHARE]
    threads = spec.threads or runtime.default_threads()
    folder = Path(files.folder)
    ctx = Context(
        spec,
        loaded,
        folder / files.files[next(iter(files.files))],
        folder / FOLDER,
        threads,
        external=files.external_data,
    )
    result = GenerationVariants()
    built: dict[str, GeneratorFiles] = {}
    new_tokens = int(reference.ids.shape[1])
    for name in wanted:
        rule = RULE.format(share=MIN_SHARE[name])
        row: dict[str, Any] = {
            "name": name,
            "file": None,
            "files": {},
            "ok": False,
            "rule": rule,
            "identical_share": None,
            "first_divergence": None,
            "error": None,
        }
        info = VariantInfo(name=name, file=None, ok=False, tolerance={"rule": rule})
        started = time.perf_counter()
        try:
            variant_files, made = _build_all(name, ctx, files, built)
        except Exception as e:
            reraise_disk_full(e)
            row["error"] = info.error = f"could not be built: {first_line(e, with_type=True)}"
            result.add(row, info)
            continue
        built[name] = variant_files
        info.seconds = round(time.perf_counter() - started, 2)
        paths = [folder / f for f in variant_files.files.values()]
        every = [p for path in paths for p in artifact_files(path)]
        row["files"] = dict(variant_files.files)
        row["file"] = info.file = variant_files.files.get("model") or next(iter(variant_files.files.values()))
        info.files = [p.relative_to(folder).as_posix() for p in every]
        info.size_bytes = sum(p.stat().st_size for p in every)
        info.method = made[0].method
        info.source = ", ".join(sorted({m.source.name for m in made}))
        notes = [n for m in made for n in m.notes]
        try:
            generator = make_generator(variant_files)
            steps = generator.greedy(input_ids, attention_mask, new_tokens)
            info.provider = row["provider"] = next(iter(generator.providers()), None)
        except Exception as e:
            row["error"] = info.error = f"could not generate: {first_line(e, with_type=True)}"
            info.notes = " ".join(notes)
            result.add(row, info)
            continue
        finally:
            gc.collect()
        row.update(compare(reference, steps))
        share = row["identical_share"]
        row["ok"] = info.ok = share is not None and share >= MIN_SHARE[name]
        verdict = (
            f"Judged by generation: {share:.0%} of transformers' new tokens identical" if share is not None else ""
        )
        first = row["first_divergence"]
        if first is not None:
            verdict += f", first divergence at prompt {first['prompt']}, step {first['step']}"
        info.notes = " ".join([*notes, verdict + f" ({rule})."])
        if not row["ok"]:
            row["error"] = info.error = f"failed: {verdict.lower()} ({rule})"
        result.add(row, info)
    return result
