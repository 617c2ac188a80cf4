"""The one place that wires the page to the handlers: the mapping check after an edit, the uploads, Load demo
and the option edits that redraw the preview (the /preview endpoint), Export (the /convert endpoint, its
inputs from handlers.CONVERT_PARAMS), Cancel and leaving the page, and each mapping row's role / feed edits.
What each event reads and updates is a tuple of Page field names in studio.app.page.

studio.app.server builds the page with `layout.build(config, Events(app))`; this module knows the app only
as `Handlers` (the methods the events call), never studio.app.server itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from studio.app import handlers as h
from studio.app.config import AppConfig
from studio.app.page import (
    CHECK_INPUTS,
    CONVERT_OUTPUTS,
    DEMO_OUTPUTS,
    GRAPH_OUTPUTS,
    PER_INPUT_OUTPUTS,
    PREVIEW_INPUTS,
    PREVIEW_OUTPUTS,
    MappingRow,
    Page,
)

# gradio calls a handler with what its event's inputs hold and reads its signature (gr.Request, gr.Progress,
# the API's parameter names): to the wiring a handler is any callable.
Handler = Callable[..., Any]


class Handlers(Protocol):
    """What the events call: studio.app.server.StudioApp's handlers and its config. Read-only members
    (properties), so that the app's methods and staticmethods match them as they are."""

    @property
    def config(self) -> AppConfig: ...

    @property
    def check_mapping(self) -> Handler: ...

    @property
    def preview(self) -> Handler: ...

    @property
    def load_demo(self) -> Handler: ...

    @property
    def reset_per_input(self) -> Handler: ...

    @property
    def per_input_edited(self) -> Handler: ...

    @property
    def set_role(self) -> Handler: ...

    @property
    def set_feed(self) -> Handler: ...

    @property
    def convert(self) -> Handler: ...

    @property
    def show_graph(self) -> Handler: ...

    @property
    def cancel(self) -> Handler: ...

    @property
    def close_session(self) -> Handler: ...


class Events:
    """studio.app.page.Wiring over an app's handlers."""

    def __init__(self, app: Handlers):
        self.app = app

    def page(self, page: Page) -> None:
        preview_events(page, self.app)
        convert_events(page, self.app)

    def mapping_row(self, page: Page, row: MappingRow) -> None:
        mapping_row_events(page, self.app, row)


def check_mapping_kw(page: Page, app: Handlers) -> dict[str, Any]:
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


def preview_events(page: Page, app: Handlers) -> None:
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


def convert_events(page: Page, app: Handlers) -> None:
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


def mapping_row_events(page: Page, app: Handlers, row: MappingRow) -> None:
    """A role (or feed) chosen in one mapping row: the roles (or tabular inputs) text, then the mapping check."""
    row.role.input(
        app.set_role,
        inputs=[page.roles_box, row.name, row.role],
        outputs=[page.roles_box],
        api_visibility="private",
        queue=False,
    ).then(**check_mapping_kw(page, app))
    if row.feed is not None:
        row.feed.input(
            app.set_feed,
            inputs=[page.tabular_box, page.columns_state, row.name, row.feed],
            outputs=[page.tabular_box],
            api_visibility="private",
            queue=False,
        ).then(**check_mapping_kw(page, app))
