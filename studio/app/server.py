"""The app's event handlers: each one runs its work in a job process (worker.py), keeps its files in
the session's folder (jobs.py) and turns results / StudioErrors into page updates (cards.py, render.py),
returned as {component: value} dicts keyed by the names of page.Page."""

from __future__ import annotations

import atexit
import functools
import html
import inspect
import json
import logging
import os
import shutil
import signal
import threading
import urllib.parse
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr

from studio.app import (
    cards,
    convert_outputs,
    events,
    graph,
    graph_explorer,
    graph_overlay,
    graph_panel,
    layout,
    worker,  # noqa: F401 - registers the app's job tasks (preview, check, convert) with studio.jobs.isolate
)
from studio.app import handlers as h
from studio.app import render as r
from studio.app.config import AppConfig
from studio.app.convert_outputs import STAGE_TEXT, error_title, stage_text
from studio.app.jobs import HeartbeatWatch, SessionLimitError, SessionLimits, Sessions, link_inputs
from studio.app.page import DEMO_OUTPUTS, GRAPH_OUTPUTS, PER_INPUT_OUTPUTS, PREVIEW_OUTPUTS
from studio.app.uploads import UploadGuard, Uploads
from studio.errors import StudioError
from studio.jobs.isolate import Job, Limits, Progress, default_start_method, error_text, stop_fork_server
from studio.jobs.protocol import new_job
from studio.sources import scratch
from studio.spec import DYNAMIC_AXES, ConvertSpec, parse_sample_limits

log = logging.getLogger("studio.app")


_GRADIO_CACHE: str | None = None
UPLOADS_PREFIX = "onnx-studio-uploads-"  # UPLOADS_PREFIX<pid>-<host>-<random>: swept once that pid is gone


def _private_gradio_cache() -> None:
    """Gradio's upload/download cache is content-addressed, and an app deletes what it cached when it
    stops: in the shared /tmp/gradio, one server stopping deletes files another server is using. Each
    studio process gets its own cache folder (removed at exit) unless the operator set GRADIO_TEMP_DIR.
    It is never inside the session folders, so a session's files stay unreachable over HTTP. Its name
    carries the pid and host tag: the caches of servers killed outright are removed here first."""
    global _GRADIO_CACHE
    if os.environ.get("GRADIO_TEMP_DIR") and os.environ["GRADIO_TEMP_DIR"] != _GRADIO_CACHE:
        return
    import tempfile

    scratch.sweep(tempfile.gettempdir(), UPLOADS_PREFIX)
    if _GRADIO_CACHE is None:
        _GRADIO_CACHE = tempfile.mkdtemp(prefix=UPLOADS_PREFIX + scratch.name_tail())
        os.environ["GRADIO_TEMP_DIR"] = _GRADIO_CACHE
        atexit.register(shutil.rmtree, _GRADIO_CACHE, True)


def _key(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


def _client(request: gr.Request | None) -> str:
    """The address the request came from (the proxy's behind a reverse proxy: headers are not believed)."""
    return str(getattr(getattr(request, "client", None), "host", None) or "local")


def toast(message: str) -> str:
    """A message as the text of gradio's error popup, which renders its message as HTML (gradio 6: "Can be
    HTML, which will be rendered in the modal"): `& < >` become entities, so a column name like
    `<img src=x>` shows as written. Quotes stay as they are (harmless in element content), so an API
    client reads the words the CLI prints."""
    return html.escape(message, quote=False)


def _refused(e: StudioError, title: str = "Not accepted") -> gr.Error:
    return gr.Error(toast(str(e)), title=title, print_exception=False)


def _name(path: str | None) -> str | None:
    return Path(path).name if path else None


def _convert_endpoint(fn):
    """Expose `fn(self, values, request, progress)` as the /convert function: one parameter per
    handlers.CONVERT_PARAMS entry, in the table's order and with its API default (gradio names the API's
    parameters, and gradio_client fills the ones left out, from this signature), then gradio's request and
    progress. `values` is {parameter name: value}."""
    P = inspect.Parameter
    sig = inspect.Signature(
        [P("self", P.POSITIONAL_OR_KEYWORD)]
        + [P(p.name, P.POSITIONAL_OR_KEYWORD, default=p.api_default) for p in h.CONVERT_PARAMS]
        + [
            P("request", P.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request),
            P("progress", P.POSITIONAL_OR_KEYWORD, default=gr.Progress()),
        ]
    )

    @functools.wraps(fn)
    def convert(*args, **kwargs):
        call = sig.bind(*args, **kwargs)
        call.apply_defaults()
        a = call.arguments
        yield from fn(a["self"], {n: a[n] for n in h.CONVERT_NAMES}, a["request"], a["progress"])

    convert.__dict__["__signature__"] = sig  # what inspect.signature (and so gradio) reads, PEP 362
    convert.__annotations__ = {"request": gr.Request}
    return convert


class StudioApp:
    def __init__(self, config: AppConfig | None = None):
        self.config = config or AppConfig()
        self.start_method = self.config.start_method or default_start_method()
        self._ray_started = self._connect_ray()  # an unreachable cluster stops the studio here, saying so
        cfg = self.config
        for flag, value in (
            ("--max-sessions", cfg.max_sessions),
            ("--max-client-sessions", cfg.max_client_sessions),
            ("--max-client-disk", cfg.max_client_disk_mb),
            ("--max-disk", cfg.max_disk_mb),
        ):
            if value is not None and value < 0:
                raise StudioError(f"{flag} must be 0 (no limit) or more, got {value}.")
        if not cfg.session_grace_s > 0:
            raise StudioError(f"--session-grace must be more than 0 s, got {cfg.session_grace_s:g}.")
        limits = SessionLimits(
            max_sessions=cfg.max_sessions or None,
            max_client_sessions=cfg.max_client_sessions or None,
            client_disk_mb=cfg.max_client_disk_mb or None,
            disk_mb=cfg.max_disk_mb or None,
            grace_s=cfg.session_grace_s,
        )
        self.sessions = Sessions(cfg.work_dir, cfg.session_ttl_s, limits)
        self.graphs = graph.GraphFiles(self.sessions.root)  # what the graph viewer may load, by token
        self.explorer = graph_explorer.Converter()  # Model Explorer's ONNX adapter, in a child per file
        self.sessions.on_close = self.graphs.revoke
        _private_gradio_cache()
        # gradio's upload cache counts against the same disk caps (studio.app.uploads)
        self.uploads = Uploads(
            lambda: os.environ.get("GRADIO_TEMP_DIR"),
            self.sessions,
            client_disk_mb=limits.client_disk_mb,
            disk_mb=limits.disk_mb,
            grace_s=max(10.0, 2 * cfg.session_grace_s),
        )
        self.sessions.also_sweep.append(self.uploads.sweep)
        self.ui = layout.build(cfg, events.Events(self))  # the page's components by name (page.Page), wired
        self.blocks = self.ui.blocks
        self._warm_thread: threading.Thread | None = None

    # --- jobs ------------------------------------------------------------------------------------
    def limits(self, task: str) -> Limits:
        timeout = self.config.job_timeout_s if task == "convert" else self.config.preview_timeout_s
        return Limits(timeout_s=timeout, memory_mb=self.config.memory_limit_mb)

    def _connect_ray(self) -> bool:
        """With --ray: join the cluster now (StudioError when it cannot be reached); True if Ray was started here."""
        if not self.config.ray_address:
            return False
        from studio.jobs.ray_fleet import connect

        return connect(self.config.ray_address)

    def run_job(
        self,
        task: str,
        payload: dict[str, Any],
        request: gr.Request | None,
        on_progress: Progress | None = None,
        label: str | None = None,
    ) -> Any:
        key = _key(request)
        job = new_job(
            task,
            payload,
            self.limits(task),
            label=label or task,
            start_method=self.start_method,
            ray_address=self.config.ray_address if task == "convert" else None,  # previews stay local
        )
        self.sessions.add_job(key, job)
        try:
            job.start()
            return job.wait(on_progress)
        finally:
            self.sessions.remove_job(key, job)

    def warm_up(self, wait: bool = False) -> None:
        """Start the fork server (it imports torch & co. once) so the first person's job starts fast."""
        if self._warm_thread is None:

            def go():
                try:
                    Job("selftest", {}, Limits(timeout_s=300, memory_mb=None), self.start_method).start().wait()
                except Exception as e:  # noqa: BLE001 - a failed warm-up only costs the first job time
                    log.warning("worker warm-up failed: %s", e)

            self._warm_thread = threading.Thread(target=go, name="studio-warm-up", daemon=True)
            self._warm_thread.start()
        if wait:
            self._warm_thread.join()

    def _scratch(self, request: gr.Request | None) -> str:
        """Where a preview or mapping check unpacks an uploaded zip: inside the session's folder (removed with
        the session), in a folder named by the job's pid, which the next job sweeps once that pid is gone."""
        folder = self.sessions.session(_key(request), _client(request)).folder / "scratch"
        folder.mkdir(mode=0o700, exist_ok=True)
        return str(folder)

    def preview_spec(
        self, checkpoint: str | None, sample: str | None, fill_value: Any = None, tabular: Any = None
    ) -> ConvertSpec:
        """Options a preview / mapping check needs (the loader's trust setting, the fill value)."""
        fill = None
        try:
            fill = None if fill_value in (None, "") else float(fill_value)
        except (TypeError, ValueError):
            pass
        try:
            feeds = h.parse_tabular_value(tabular)
        except StudioError:
            feeds = {}
        return ConvertSpec(
            checkpoint=str(checkpoint or "-"),
            data=str(sample or "-"),
            trust_code=self.config.trust_code,
            fill_value=fill,
            tabular=feeds,
            max_params=self.config.max_params,
            sample_limits=parse_sample_limits(self.config.sample_limits),
        )

    # --- 1. inputs -------------------------------------------------------------------------------
    def load_demo(self, request: gr.Request | None = None):
        """Copy the demo checkpoint and sample into this session's folder and put them in the uploads."""
        if not (h.DEMO_CHECKPOINT.is_file() and h.DEMO_SAMPLE.is_file()):
            raise gr.Error(toast(f"The demo files are missing from {h.DEMO_DIR}."), title="No demo")
        try:
            folder = self.sessions.new_dir(_key(request), "demo", keep=2, client=_client(request))
        except SessionLimitError as e:
            raise _refused(e, "Too many sessions") from None
        ckpt = shutil.copy2(h.DEMO_CHECKPOINT, folder / h.DEMO_CHECKPOINT.name)
        sample = shutil.copy2(h.DEMO_SAMPLE, folder / h.DEMO_SAMPLE.name)
        return self.ui.updates(DEMO_OUTPUTS, checkpoint=str(ckpt), sample=str(sample))

    def preview(
        self,
        checkpoint: str | None,
        sample: str | None,
        dynamic: list[str] | None = None,
        request: gr.Request | None = None,
    ):
        """After an upload: what was detected, the first rows, the columns with their suggested roles."""
        try:
            h.bounded_all({"checkpoint": checkpoint, "sample": sample, "dynamic": dynamic})
            h.parse_axes(dynamic)  # a bad value is said now, before the job
        except StudioError as e:
            raise _refused(e) from None
        res = self._preview_job(checkpoint, sample, request)
        scrub = lambda text: text and h.scrub_paths(text, [checkpoint, sample])  # noqa: E731
        model, columns, mapping = res["model"], res["columns"] or [], res["mapping"]
        if mapping and mapping.get("error"):
            mapping["error"] = scrub(mapping["error"])
        roles = cards.initial_roles(columns, mapping)
        state = {
            "nonce": uuid.uuid4().hex,
            "columns": [{**c, "role": roles.get(c["name"], "ignore")} for c in columns],
            "tabular_inputs": [i["name"] for i in (model or {}).get("inputs") or [] if i.get("kind") == "tabular"],
        }
        per_rows = h.per_input_rows(model, dynamic if dynamic is not None else DYNAMIC_AXES)
        rows = res["rows"] or []
        return self.ui.updates(
            PREVIEW_OUTPUTS,
            model_card=cards.model_html(model, scrub(res["model_error"]), _name(checkpoint)),
            sample_card=cards.sample_html(columns, rows, scrub(res["data_error"]), _name(sample)),
            preview_table=gr.update(value=cards.preview_frame(rows, columns), visible=bool(rows)),
            columns_state=state,
            roles_box=json.dumps(roles),
            mapping_box=cards.mapping_html(mapping, model is not None, bool(columns)),
            preview_info={"model": model, "has_sample": bool(columns)},
            per_input=gr.update(value=per_rows or None, visible=bool(per_rows)),
            per_input_json="",
        )

    def _preview_job(self, checkpoint: str | None, sample: str | None, request: gr.Request | None) -> dict:
        """The preview job's result (model, columns, rows, mapping, and what was wrong with each upload)."""
        res: dict[str, Any] = {
            "model": None,
            "model_error": None,
            "columns": None,
            "rows": None,
            "data_error": None,
            "mapping": None,
        }
        if not (checkpoint or sample):
            return res
        try:
            res.update(
                self.run_job(
                    "preview",
                    {
                        "checkpoint": checkpoint,
                        "data": sample,
                        "workdir": self._scratch(request),
                        "spec": self.preview_spec(checkpoint, sample),
                        "label": "upload preview",
                    },
                    request,
                    label="upload preview",
                )
            )
        except Exception as e:  # noqa: BLE001 - shown in the cards, never as a traceback
            if not isinstance(e, StudioError):
                log.exception("preview failed unexpectedly")
            message = error_text(e)
            res["model_error"] = message if checkpoint else None
            res["data_error"] = message if sample else None
        return res

    # --- 2. field mapping ------------------------------------------------------------------------
    @staticmethod
    def set_role(roles_json: str, column: str, role: str) -> str:
        try:
            h.bounded_all({"roles": roles_json, "column": column, "role": role})
            roles = h.parse_roles_value(roles_json) if roles_json else {}
        except StudioError as e:
            raise _refused(e) from None
        roles[str(column)] = str(role)
        return json.dumps(roles)

    @staticmethod
    def set_feed(tabular: str, state: dict | None, column: str, choice: str) -> str:
        try:
            h.bounded_all({"tabular": tabular, "column": column, "choice": choice})
        except StudioError as e:
            raise _refused(e) from None
        columns = [c["name"] for c in (state or {}).get("columns") or []]
        return h.set_feed(tabular or "", columns, column, choice)

    def check_mapping(
        self,
        checkpoint: str | None,
        sample: str | None,
        roles_json: str,
        info: dict | None,
        fill_value: float | None = None,
        tabular: str | None = None,
        request: gr.Request | None = None,
    ) -> str:
        have_model = bool(info and info.get("model"))
        have_sample = bool(info and info.get("has_sample"))
        if not (checkpoint and sample and have_model and have_sample):
            return cards.mapping_html(None, have_model, have_sample)
        try:
            h.bounded_all({"roles": roles_json, "fill_value": fill_value, "tabular": tabular})
            roles = h.parse_roles_value(roles_json)
            h.parse_tabular_value(tabular)  # a typing error is said here, not ignored
            mapping = self.run_job(
                "check",
                {
                    "checkpoint": checkpoint,
                    "data": sample,
                    "roles": roles,
                    "workdir": self._scratch(request),
                    "spec": self.preview_spec(checkpoint, sample, fill_value, tabular),
                    "label": "mapping check",
                },
                request,
                label="mapping check",
            )
        except StudioError as e:
            mapping = {"ok": False, "error": str(e)}
        except Exception as e:  # noqa: BLE001
            log.exception("mapping check failed unexpectedly")
            mapping = {"ok": False, "error": error_text(e)}
        if mapping.get("error"):
            mapping["error"] = h.scrub_paths(mapping["error"], [checkpoint, sample])
        return cards.mapping_html(mapping, True, True)

    # --- 3. options ------------------------------------------------------------------------------
    def reset_per_input(self, dynamic: list[str], info: dict | None):
        try:
            h.bounded("dynamic", dynamic)
            rows = h.per_input_rows((info or {}).get("model"), dynamic)
        except StudioError as e:
            raise _refused(e) from None
        return self.ui.updates(
            PER_INPUT_OUTPUTS, per_input=gr.update(value=rows or None, visible=bool(rows)), per_input_json=""
        )

    @staticmethod
    def per_input_edited(rows) -> str:
        try:
            return json.dumps(h.per_input_from_rows(h.bounded("per-input table", rows)))
        except StudioError as e:
            raise _refused(e) from None

    # --- 4-6. export, results, downloads ------------------------------------------------------------
    @_convert_endpoint
    def convert(self, values: dict[str, Any], request: gr.Request | None = None, progress=gr.Progress()):  # noqa: B008 - gradio injects its tracker through this default
        """Convert the uploaded checkpoint with the sample rows; returns the artifacts and the report.
        variants: faster artifacts to build beside model.onnx, checked and timed like it: any of
        optimized, int8, int8-static, fp16, as a list or a comma string (default none); repair: a variant that
        fails its verdict is rebuilt with its worst nodes kept in float (default true).
        max_new_tokens: new tokens each prompt is continued by, for a language model (default 20).
        tabular: the columns feeding each tabular input, in order: `INPUT=COL1,COL2,...` lines (FIRST..LAST
        is a range) or a JSON object {input: [columns]} (default: the columns mapped tabular, in file order).
        task: what a model folder is exported as (the CLI's --task; default auto)."""
        key = _key(request)
        error: StudioError | None = None
        job_dir = None
        try:
            h.bounded_all(values)  # every field, before any work: a clear error naming the one too large
            progress(0.0, desc="starting — " + STAGE_TEXT["starting"])
            job_dir = self.sessions.new_dir(key, "job", busy=True, client=_client(request))
            values["checkpoint"], values["sample"] = link_inputs(job_dir, values["checkpoint"], values["sample"])
            spec = h.spec_from_ui(
                **values,
                out=job_dir / "out",
                trust_code=self.config.trust_code,
                sample_limits=self.config.sample_limits,
            )
            spec = replace(spec, max_params=self.config.max_params).validated()

            def on_progress(stage: str, fraction: float) -> None:
                progress(min(max(fraction, 0.0), 1.0), desc=f"{stage} — {stage_text(stage, spec.variants)}")

            result = self.run_job(
                "convert",
                {"spec": spec, "zip_stem": h.zip_stem(values["checkpoint"]), "label": "conversion"},
                request,
                on_progress,
                label="conversion",
            )
        except StudioError as e:
            error = e
        except Exception as e:  # a bug of ours: the same words as the CLI, the traceback in the server log
            log.exception("conversion failed unexpectedly")
            error = StudioError(error_text(e))
        try:
            if error is not None:
                message = h.scrub_paths(str(error), [values["checkpoint"], values["sample"], job_dir and job_dir / "x"])
                yield self._error_outputs(error, message)
                raise gr.Error(toast(message), title=error_title(error), print_exception=False)
            yield self._report_outputs(result, Path(spec.out), key)
        finally:  # after Gradio copied the downloads out of the job folder: it may be pruned later
            if job_dir is not None:
                self.sessions.release(key, job_dir)

    def _report_outputs(self, result: dict[str, Any], out: Path, key: str = "local") -> dict:
        found, node = self._graph_files(key, result["report"], out)
        return convert_outputs.report_updates(self.ui, result, out, found, node)

    def _graph_files(self, key: str, report, out: Path) -> tuple[list[graph.GraphEntry], str | None]:
        """model.onnx and the variants, granted to this session's viewer (studio.app.graph), and the node
        where ONNX Runtime first leaves PyTorch when the report says."""
        cfg = self.config
        found = graph.entries(report, out, cfg.graph_max_nodes, int(cfg.graph_max_mb * 2**20))
        names = [n for e in found for n in (e.name, e.data) if n]
        docs = graph_overlay.attach(found, report, out)  # the numbers painted on each graph
        token = self.graphs.grant(key, out, names, docs)
        for e in found:
            e.url, e.token = f"{graph.FILES}/{token}/{urllib.parse.quote(e.name)}", token
        self.explorer.prewarm([out / e.name for e in found if not e.too_big])
        node = graph.divergence_node(report)
        self.graphs.remember(key, found, node)
        return found, node

    def show_graph(self, choice: str | None, request: gr.Request | None = None):
        """Another file chosen in the Graph panel."""
        found, node = self.graphs.view(_key(request))
        return self.ui.updates(GRAPH_OUTPUTS, graph_view=graph_panel.graph_html(found, choice, node))

    def _error_outputs(self, error: StudioError, message: str) -> dict:
        return convert_outputs.error_updates(self.ui, error, message)

    def cancel(self, request: gr.Request | None = None) -> str:
        """Stop this session's running conversion (its worker process is killed)."""
        n = self.sessions.cancel(_key(request), ("convert",), "The conversion was cancelled.")
        if n:
            return r.error_html("The conversion was cancelled; its worker process was stopped.", title="Cancelled")
        return gr.skip()

    def close_session(self, request: gr.Request | None = None) -> None:
        self.graphs.revoke(_key(request))
        self.sessions.close(_key(request))

    # --- serving ---------------------------------------------------------------------------------
    def launch(
        self,
        host: str = "127.0.0.1",
        port: int | None = 7860,
        *,
        block: bool = True,
        quiet: bool = False,
        open_browser: bool = False,
        **kwargs,
    ):
        from studio.app.theme import CSS, THEME

        self.blocks.queue(max_size=self.config.queue_size, default_concurrency_limit=self.config.max_jobs)
        if self.config.warm_up:
            self.warm_up()
        self.sessions.start_sweeper()
        atexit.register(self.sessions.shutdown)  # session folders never outlive the process
        if block and threading.current_thread() is threading.main_thread():
            # `kill` / a service manager stops the studio like Ctrl-C: jobs killed, folders removed
            signal.signal(signal.SIGTERM, self._terminated)
        app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
        app_kwargs["routes"] = [*app_kwargs.get("routes", []), *graph.routes(self.graphs)]  # the graph viewer
        app_kwargs["routes"] += graph_explorer.routes(self.graphs, self.explorer)  # and Model Explorer
        from starlette.middleware import Middleware

        # which sessions keep a heartbeat open (the others are closed after --session-grace)
        app_kwargs["middleware"] = [
            *app_kwargs.get("middleware", []),
            Middleware(HeartbeatWatch, sessions=self.sessions),
            Middleware(UploadGuard, uploads=self.uploads),  # gradio's upload cache under the disk caps
        ]
        try:
            return self.blocks.launch(
                server_name=host,
                server_port=port,
                prevent_thread_lock=not block,
                quiet=quiet,
                inbrowser=open_browser,
                max_file_size=self.config.max_file_size,
                show_error=False,
                ssr_mode=False,
                theme=THEME,
                css=CSS,
                footer_links=["api"],
                app_kwargs=app_kwargs,
                **kwargs,
            )
        finally:
            if block:
                self.close()

    def close(self) -> None:
        try:
            self.blocks.close()
        except Exception:  # noqa: BLE001
            pass
        self._stop_jobs()
        if self._ray_started:  # a cluster this app started (--ray local) ends with it; a joined one goes on
            import ray

            ray.shutdown()
            self._ray_started = False

    def _stop_jobs(self) -> None:
        self.sessions.shutdown()
        stop_fork_server()

    def _terminated(self, signum, frame):
        """SIGTERM: the jobs are killed at once (their requests end, so the server's graceful stop does not
        wait for them), then the server stops as on Ctrl-C."""
        threading.Thread(target=self._stop_jobs, name="studio-stop-jobs", daemon=True).start()
        server = getattr(self.blocks, "server", None)
        if server is not None:  # uvicorn's second Ctrl-C: stop without waiting for open requests to end
            server.force_exit = True
        raise KeyboardInterrupt
