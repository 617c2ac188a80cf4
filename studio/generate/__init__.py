"""Generators: causal LMs and encoder-decoders exported with their cache, judged by generating the user's prompts.

The contract the modules share is in `studio.generate.base`: a `Steps` record of a greedy decode (new token ids and
the logits of every step) that transformers' `generate` (the reference) and ONNX Runtime through the exported
file(s) both produce, and the `OrtGenerator` protocol each exported kind (decoder with past, encoder + decoder)
implements. Results go into `studio.report.model.GenerationInfo`.

Decoders (causal LMs): `facts` (per-architecture cache layout and position_ids, refusals), `decoder`
(`export_decoder` -> one model.onnx with past_key_values / present, optimum's names), `ort_decoder` (`OrtDecoder`,
greedy decoding with ONNX Runtime), `reference` (transformers' `generate`), `verify` (`check_generation` -> runs
and shape probes; `compare_steps` for any two decodes).
"""

__all__ = ["base", "decoder", "facts", "ort_decoder", "reference", "verify"]
