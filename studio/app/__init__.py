"""The web studio (Gradio) over the engine's pipeline. The only package that imports gradio — and only
when the app is built, so the job processes (studio.app.worker) start without it.

    studio.app.launch(host="127.0.0.1", port=7860)            # what `studio app` runs (blocks)
    running = studio.app.start(port=0)                        # in the background: running.url, running.close()
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, fields
from typing import Any

# gradio-free: launch's defaults are read from the operator settings
from studio.app.config import HOST, PORT
from studio.app.config import AppConfig as _Config

__all__ = ["launch", "start", "create_app", "RunningApp"]


def _quiet_env() -> None:
    # nothing may be fetched at run time: no analytics / version checks
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def create_app(**config: Any):
    """Build the app without serving it. Keywords are AppConfig fields (see launch)."""
    _quiet_env()
    from studio.app.server import StudioApp

    names = {f.name for f in fields(_Config)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise TypeError(f"unknown app option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return StudioApp(_Config(**config))


def launch(
    host: str = HOST,
    port: int = PORT,
    trust_code: bool = _Config.trust_code,
    *,
    max_jobs: int = _Config.max_jobs,
    job_timeout_s: float | None = _Config.job_timeout_s,
    memory_limit_mb: int | None = _Config.memory_limit_mb,
    max_file_size: str | int | None = _Config.max_file_size,
    session_ttl_s: float = _Config.session_ttl_s,
    session_grace_s: float = _Config.session_grace_s,
    max_sessions: int | None = _Config.max_sessions,
    max_client_sessions: int | None = _Config.max_client_sessions,
    max_client_disk_mb: int | None = _Config.max_client_disk_mb,
    max_disk_mb: int | None = _Config.max_disk_mb,
    queue_size: int | None = _Config.queue_size,
    work_dir: str | None = _Config.work_dir,
    open_browser: bool = False,
    quiet: bool = False,
    max_params: int | None = None,
    sample_limits: Any = _Config.sample_limits,
    graph_max_nodes: int = _Config.graph_max_nodes,
    graph_max_mb: float = _Config.graph_max_mb,
    ray_address: str | None = _Config.ray_address,
) -> None:
    """Serve the studio until interrupted (what `studio app` runs).

    host/port: where to listen (127.0.0.1:7860). trust_code: allow checkpoints that can run code when
    loaded (TorchScript, .pt2, pickled modules) — shown as a banner in the page. max_jobs: conversions
    running at once, the rest queue (queue_size waiting at most). job_timeout_s / memory_limit_mb: limits
    of each conversion's worker process. max_file_size: per upload, e.g. "500mb". session_ttl_s: an idle
    session's files are removed after this; session_grace_s: after this when it has no heartbeat open (an
    API caller, a closed page). max_sessions / max_client_sessions: sessions open at once, in all and from
    one client address; max_client_disk_mb / max_disk_mb: the files they may hold (0: no limit). work_dir: where session folders are made (default: temp).
    max_params: most parameters an uploaded checkpoint's config may declare (default 5e9).
    sample_limits: what a sample file may hold ("rows=50000,size=200mb"; default: the studio's limits).
    graph_max_nodes / graph_max_mb: the Graph panel draws graphs up to this many nodes and .onnx files up to
    this size; above, it offers the download instead.
    ray_address: run each conversion as a Ray task on this cluster (HEAD:6379, auto, local; default: here).
    """
    extra = {"max_params": int(max_params)} if max_params else {}
    app = create_app(
        trust_code=trust_code,
        max_jobs=max_jobs,
        job_timeout_s=job_timeout_s,
        memory_limit_mb=memory_limit_mb,
        max_file_size=max_file_size,
        session_ttl_s=session_ttl_s,
        session_grace_s=session_grace_s,
        max_sessions=max_sessions,
        max_client_sessions=max_client_sessions,
        max_client_disk_mb=max_client_disk_mb,
        max_disk_mb=max_disk_mb,
        queue_size=queue_size,
        work_dir=work_dir,
        sample_limits=sample_limits,
        graph_max_nodes=graph_max_nodes,
        graph_max_mb=graph_max_mb,
        ray_address=ray_address,
        **extra,
    )
    if not quiet:
        print(f"ONNX Studio on http://{host}:{port}  (press Load demo to try it; Ctrl-C to stop)", flush=True)
    app.launch(host, port, block=True, quiet=quiet, open_browser=open_browser)


@dataclass
class RunningApp:
    app: Any
    url: str

    def close(self) -> None:
        self.app.close()

    def __enter__(self) -> RunningApp:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start(host: str = "127.0.0.1", port: int = 0, **config: Any) -> RunningApp:
    """Serve the studio in the background (tests, benchmarks, notebooks). port=0 picks a free port."""
    app = create_app(**config)
    port = port or free_port(host)
    app.launch(host, port, block=False, quiet=True)
    return RunningApp(app, f"http://{host}:{port}/")
