"""The page's components by name (Page) and what each event reads and updates, by Page field.

layout.build fills a Page and hands it to a `Wiring` (studio.app.events) that connects its events to the
handlers; the handlers in studio.app.server return {component: value} dicts made with Page.updates, keyed by
these names, so that moving a component can break nothing silently."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import gradio as gr

# What each event updates, by Page field; the order is the API's (gradio_client returns the values of
# /convert in this order: downloads and report.json first, as docs/web-app.md and the tests read them).
CONVERT_OUTPUTS = (
    "downloads",
    "report_json",
    "verdict",
    "summary",
    "io_table",
    "parity_table",
    "probe_table",
    "latency_table",
    "latency_plot",
    "diff_plot",
    "predictions",
    "attempts",
    "diagnosis",
    "diag_acc",
    "results_col",
    "downloads_col",
    "variants_note",
    "variants_table",
    "graph_col",
    "graph_choice",
    "graph_view",
    "generation",
)
PREVIEW_OUTPUTS = (
    "model_card",
    "sample_card",
    "preview_table",
    "columns_state",
    "roles_box",
    "mapping_box",
    "preview_info",
    "per_input",
    "per_input_json",
)
PREVIEW_INPUTS = ("checkpoint", "sample", "dynamic")  # the /preview endpoint's parameters, in its order
CHECK_INPUTS = ("checkpoint", "sample", "roles_box", "preview_info", "fill_value", "tabular_box")
PER_INPUT_OUTPUTS = ("per_input", "per_input_json")
DEMO_OUTPUTS = ("checkpoint", "sample")
GRAPH_OUTPUTS = ("graph_view",)


@dataclass(slots=True)  # slots: a misspelt name is an AttributeError, never a new attribute
class Page:
    """The page's components by name (what the events wire and the handlers update)."""

    blocks: Any = None
    preview_info: Any = None  # gr.State {"model": ..., "has_sample": ...}
    columns_state: Any = None  # gr.State {"nonce", "columns", "tabular_inputs"}: redraws the mapping rows
    # 1. inputs
    checkpoint: Any = None
    sample: Any = None
    demo_btn: Any = None
    model_card: Any = None
    sample_card: Any = None
    preview_table: Any = None
    # 2. field mapping
    roles_box: Any = None
    mapping_box: Any = None
    tabular_box: Any = None
    # 3. options
    opset: Any = None
    exporter: Any = None
    dynamic: Any = None
    max_length: Any = None
    id_dtype: Any = None
    variants: Any = None
    task: Any = None
    atol: Any = None
    rtol: Any = None
    fill_value: Any = None
    latency_budget: Any = None
    per_input: Any = None
    per_input_json: Any = None
    locate: Any = None
    repair: Any = None
    max_new_tokens: Any = None
    # 4. export
    export_btn: Any = None
    cancel_btn: Any = None
    # 5. results
    verdict: Any = None
    summary: Any = None
    diag_acc: Any = None
    diagnosis: Any = None
    results_col: Any = None
    io_table: Any = None
    parity_table: Any = None
    probe_table: Any = None
    latency_table: Any = None
    variants_note: Any = None
    variants_table: Any = None
    latency_plot: Any = None
    diff_plot: Any = None
    predictions: Any = None
    attempts: Any = None
    generation: Any = None  # the Generation panel (studio.app.generation): generators only
    # the graph (after Export: model.onnx or a variant in Netron's viewer)
    graph_col: Any = None
    graph_choice: Any = None
    graph_view: Any = None
    # 6. downloads
    downloads_col: Any = None
    downloads: Any = None
    report_json: Any = None

    def of(self, names: tuple[str, ...]) -> list:
        """The components of these names, in this order (an event's inputs or outputs)."""
        return [getattr(self, n) for n in names]

    def api_names(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """The names among `names` whose values an API client receives, in order (a layout block such as
        an accordion or a column is updated on the page only)."""
        return tuple(n for n in names if isinstance(getattr(self, n), gr.components.Component))

    def updates(self, names: tuple[str, ...], **values: Any) -> dict:
        """{component: value} for an event whose outputs are `names`: each named exactly once (a missing
        one would silently keep its old value, a stray one is not an output)."""
        missing, extra = set(names) - set(values), set(values) - set(names)
        if missing or extra:
            raise ValueError(f"outputs {sorted(names)}: missing {sorted(missing)}, not outputs {sorted(extra)}")
        return {getattr(self, n): v for n, v in values.items()}


@dataclass(slots=True)
class MappingRow:
    """The controls of one sample column in the field mapping (drawn again each time the columns change)."""

    name: Any  # gr.State: the column's name
    role: Any  # gr.Dropdown: its role
    feed: Any = None  # gr.Dropdown: which tabular input it feeds (only when the model has tabular inputs)


class Wiring(Protocol):
    """What layout.build calls to connect the page's events (studio.app.events.Events): the layout makes the
    components, the wiring says what each event runs. Both calls happen inside the page's gr.Blocks."""

    def page(self, page: Page) -> None:
        """Every event of the page, once, after all its components exist."""

    def mapping_row(self, page: Page, row: MappingRow) -> None:
        """The edits of one mapping row, each time the rows are drawn."""
