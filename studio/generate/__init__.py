"""Generators: causal LMs and encoder-decoders exported with their cache, judged by generating the user's prompts.

The contract the modules share is in `studio.generate.base`: a `Steps` record of a greedy decode (new token ids and
the logits of every step) that transformers' `generate` (the reference) and ONNX Runtime through the exported
file(s) both produce, and the `OrtGenerator` protocol each exported kind (decoder with past, encoder + decoder)
implements. Results go into `studio.report.model.GenerationInfo`.

Decoders (causal LMs): `facts` (per-architecture cache layout and position_ids, refusals), `decoder`
(`export_decoder` -> one model.onnx with past_key_values / present, optimum's names), `ort_decoder` (`OrtDecoder`,
greedy decoding with ONNX Runtime), `reference` (transformers' `generate`), `verify` (`check_generation` -> runs
and shape probes; `compare_steps` for any two decodes), `locate_step` (the divergence locator on a diverging step).
Encoder-decoders: `seq2seq` (`export_seq2seq` -> encoder_model.onnx, decoder_model.onnx,
decoder_with_past_model.onnx), `ort_seq2seq` (`OrtSeq2Seq`), `seq2seq_check` (`check_seq2seq`).
Both: `speed` (time to first token, tokens/s), `variants` (int8 / fp16 judged by generating), `example`
(inference_example.py), `run` (`convert_generator`, the pipeline's generation branch).
"""

__all__ = [
    "base",
    "decoder",
    "example",
    "facts",
    "locate_step",
    "ort_decoder",
    "ort_seq2seq",
    "reference",
    "run",
    "seq2seq",
    "seq2seq_check",
    "speed",
    "variants",
    "verify",
]
