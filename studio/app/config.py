"""AppConfig: the operator's settings of the web studio (the `studio app` flags), with their defaults in one
place: studio.app.launch reads them from here. No gradio in here, so it is importable before the app is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from studio.spec import default

HOST, PORT = "127.0.0.1", 7860  # where `studio app` listens (studio.app.launch's defaults)


@dataclass
class AppConfig:
    """Operator settings (the `studio app` flags)."""

    trust_code: bool = False  # allow TorchScript / .pt2 / pickled modules: shown as a banner
    max_jobs: int = 2  # conversions running at once (the rest wait in the queue)
    queue_size: int | None = 64  # requests waiting at most; None = unbounded
    job_timeout_s: float | None = 600.0  # wall time of one conversion
    preview_timeout_s: float | None = 180.0  # wall time of one upload preview / mapping check
    memory_limit_mb: int | None = 8192  # per job process tree
    max_params: int = default("max_params")  # parameters a checkpoint's config may declare (sources.sizing)
    max_file_size: str | int | None = "2gb"  # per upload
    session_ttl_s: float = 3600.0  # idle sessions' files are removed after this
    session_grace_s: float = 15.0  # ... and after this when no heartbeat is open (API callers, closed pages)
    max_sessions: int | None = 100  # sessions open at once (0 / None: no limit); studio.app.jobs.SessionLimits
    max_client_sessions: int | None = 10  # ... from one client address
    max_client_disk_mb: int | None = 20_000  # files one client address's sessions may hold
    max_disk_mb: int | None = 100_000  # files all sessions may hold
    work_dir: str | None = None  # parent of the private working root (default: system temp)
    start_method: str | None = None  # "forkserver" (default where available) or "spawn"
    warm_up: bool = True  # start the worker fork server at launch so the first job starts fast
    graph_max_nodes: int = 5000  # the Graph panel draws graphs of at most this many nodes (else: the download)
    graph_max_mb: float = 200.0  # ... and .onnx files of at most this size (external .data not counted)
    sample_limits: Any = None  # what a sample file may hold: "rows=N,..." / SampleLimits (default: the studio's)
    # run each conversion as a Ray task on this cluster (HEAD:6379, auto, local; studio.jobs.ray_fleet.RayJob);
    # previews and mapping checks stay local. None: every job runs on this machine
    ray_address: str | None = None
