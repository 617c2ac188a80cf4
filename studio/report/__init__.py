"""The report: every result as data (`model`, a leaf that every stage fills), the stage timings
(`timings`), the divergence record (`divergence`), and what people read of it (`render`: the tables of the CLI,
report.md and the app).
"""

__all__ = ["divergence", "model", "render", "timings"]
