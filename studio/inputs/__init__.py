"""The sample and what it becomes: reading a sample file under its limits, typing its cells, suggesting a
role for each column, and building the named tensors a model takes (token ids for text, float features for
tabular columns).

Public modules: `sample` (read_sample), `cells` (cell typing), `roles` (describe_columns, suggest_roles),
`tabular` (which columns feed which tabular input), `batch` (build_batch). `_tokens` is batch"s tokenizer step.
"""

__all__ = ["batch", "cells", "roles", "sample", "tabular"]
