"""The page's events, wired by name: the mapping check after an edit, the uploads, Load demo and the option
edits that redraw the preview (the /preview endpoint), Export (the /convert endpoint, its inputs from
handlers.CONVERT_PARAMS), Cancel and leaving the page. What each event reads and updates is a tuple of
Page field names in studio.app.page."""

from __future__ import annotations

from typing import TYPE_CHECKING

from studio.app import handlers as h
from studio.app.page import (
    CHECK_INPUTS,
    CONVERT_OUTPUTS,
    DEMO_OUTPUTS,
    GRAPH_OUTPUTS,
    PER_INPUT_OUTPUTS,
    PREVIEW_INPUTS,
    PREVIEW_OUTPUTS,
    Page,
)

if TYPE_CHECKING:
    from studio.app.server import StudioApp


def check_mapping_kw(page: Page, app: StudioApp) -> dict:
    """The mapping check, after a role / feed / tabular-inputs edit: the latest edit wins."""
    cfg = app.config
    return dict(
        fn=app.check_mapping,
        inputs=page.of(CHECK_INPUTS),
        outputs=[page.mapping_box],
        api_visibility="private",
        concurrency_id="preview",
        concurrency_limit=cfg.max_jobs,
        trigger_mode="always_last",
        show_progress="minimal",
    )


def preview_events(page: Page, app: StudioApp) -> None:
    """Uploads, Load demo and the option edits that redraw the preview / mapping / per-input table."""
    cfg = app.config
    page.columns_state.change(lambda: "", outputs=[page.tabular_box], api_visibility="private", queue=False)
    for ev in (page.tabular_box.submit, page.tabular_box.blur):
        ev(**check_mapping_kw(page, app))
    preview_kw = dict(
        fn=app.preview,
        inputs=page.of(PREVIEW_INPUTS),
        outputs=page.of(PREVIEW_OUTPUTS),
        concurrency_id="preview",
        concurrency_limit=cfg.max_jobs,
        show_progress="minimal",
        show_progress_on=[page.model_card, page.sample_card],
    )
    page.demo_btn.click(  # two file copies: answered at once, not through the queue (a round trip less)
        app.load_demo, outputs=page.of(DEMO_OUTPUTS), api_name="load_demo", show_progress="hidden", queue=False
    ).then(**preview_kw, api_name="preview_demo", api_visibility="private")
    page.checkpoint.upload(**preview_kw, api_name="preview")
    page.sample.upload(**preview_kw, api_name="preview_sample", api_visibility="private")
    page.checkpoint.clear(**preview_kw, api_name="preview_clear_checkpoint", api_visibility="private")
    page.sample.clear(**preview_kw, api_name="preview_clear_sample", api_visibility="private")
    page.dynamic.change(
        app.reset_per_input,
        inputs=[page.dynamic, page.preview_info],
        outputs=page.of(PER_INPUT_OUTPUTS),
        api_name="reset_per_input",
        api_visibility="private",
        queue=False,
    )
    page.per_input.input(
        app.per_input_edited,
        inputs=[page.per_input],
        outputs=[page.per_input_json],
        api_name="per_input_edited",
        api_visibility="private",
        queue=False,
    )


def convert_events(page: Page, app: StudioApp) -> None:
    """Export (the /convert endpoint: its inputs from handlers.CONVERT_PARAMS), Cancel, leaving the page."""
    cfg = app.config
    export_event = page.export_btn.click(
        app.convert,
        inputs=[getattr(page, p.component) for p in h.CONVERT_PARAMS],
        outputs=page.of(CONVERT_OUTPUTS),
        api_name="convert",
        concurrency_id="convert",
        concurrency_limit=cfg.max_jobs,
        show_progress_on=[page.verdict],
        scroll_to_output=True,
    )
    page.graph_choice.input(
        app.show_graph,
        inputs=[page.graph_choice],
        outputs=page.of(GRAPH_OUTPUTS),
        api_name="show_graph",
        api_visibility="private",
        queue=False,
    )
    page.cancel_btn.click(app.cancel, outputs=[page.verdict], api_name="cancel", cancels=[export_event], queue=False)
    page.blocks.unload(app.close_session)
