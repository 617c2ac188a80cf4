"""The torch modules the studio builds around a loaded checkpoint: the built-in task heads on a Hugging Face
backbone (`heads`), the studio's own multimodal classifier of the demo (`multimodal`), and a
sentence-transformers pipeline in plain torch (`sentence`). The loaders in studio.sources build them.
"""

__all__ = ["heads", "multimodal", "sentence"]
