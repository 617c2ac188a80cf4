"""The graph view in Google's Model Explorer (the web app shipped in `ai-edge-model-explorer`, ONNX files read by
the `model-explorer-onnx` adapter), served by the studio itself the way Netron's viewer is (studio.app.graph):
per-node numbers on the graph (Model Explorer's "node data": a value per node id, colour ranges, the values
on click) and two graphs side by side, their navigation synchronised by node id.

Model Explorer's own Flask server is never run: it reads any path a request names (`read_text_file?path=`,
`send_command` with any `modelPath`), takes uploads and asks GitHub for a newer version. Instead the studio
serves the web app's static files under a session's capability token (`studio/explorer/<token>/`) and answers
the few calls the page makes, each only from what that token grants:
- `apipost/v1/send_command` (convert): the adapter runs in a child process (studio.app.graph_adapter) on a
  file GraphFiles.resolve grants under this token, never on a path the request wrote; nothing else is run.
- `api/v1/read_text_file?path=NAME`: only an in-memory document granted under the token (an overlay's JSON).
- `get_extensions` names the ONNX adapter only; the version check, the file watch and the server's event
  stream answer without doing anything. Uploads, `load_graphs_json`, `update_config`: 404.
The page is rewritten to run offline: its Google-fonts faces point at the copies the package ships (a face
with no local copy is dropped), absolute paths become relative to the token's folder, and it is served with
the strict Content-Security-Policy of the Netron view (`connect-src 'self'`). No gradio in here."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from studio.app.graph import CSP, GraphFiles

EXPLORER = "studio/explorer"  # /studio/explorer/<token>/ : the web app and its calls, per token
ADAPTER_ID = "onnx_adapter"
CONVERT_TIMEOUT_S = 180.0
CONVERT_MEMORY_BYTES = 8 * 2**30  # the adapter child's address-space cap
CONVERT_CACHE = 8  # converted graphs kept (by file, size and mtime)
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
}
EXTENSIONS = [  # what get_extensions answers: the ONNX adapter alone
    {
        "id": ADAPTER_ID,
        "name": "ONNX adapter",
        "description": "ONNX adapter for Model Explorer (model-explorer-onnx), run by the studio on its own files",
        "source_repo": "",
        "fileExts": ["onnx"],
        "type": "adapter",
    }
]
SAFE = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
API_PATHS = ('"/api/v1/', '"/apipost/v1/', '"/apistream/')


@functools.lru_cache(maxsize=1)
def explorer_dir() -> Path | None:
    """Model Explorer's web app folder (index.html, its scripts, static_files/), or None when not installed
    (or when its ONNX adapter is not)."""
    spec = importlib.util.find_spec("model_explorer")
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("model_explorer_onnx") is None:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "web_app"
    return folder if (folder / "index.html").is_file() else None


def _fonts(page: str, local: set[str]) -> str:
    """Google-fonts faces pointed at the package's own copies; a face without a local copy is dropped."""

    def face(m: re.Match) -> str:
        rule = m.group(0)
        for url in re.findall(r"url\((https?://[^)]+)\)", rule):
            name = url.rsplit("/", 1)[-1]
            if name not in local:
                return ""
            rule = rule.replace(url, f"static_files/{name}")
        return rule

    return re.sub(r"@font-face\{[^}]*\}", face, page)


def explorer_index(folder: Path, base: str) -> str:
    """Model Explorer's index.html as the studio serves it under `base` (the token's folder, ending in /)."""
    page = (folder / "index.html").read_text(encoding="utf-8")
    local = {p.name for p in (folder / "static_files").glob("*.woff2")}
    page = re.sub(r'<link rel="preconnect"[^>]*>', "", page)
    # the stylesheet loads at once: its media="print" onload="this.media='all'" is an inline script
    page = re.sub(r'(<link rel="stylesheet"[^>]*?) media="print" onload="[^"]*"', r"\1", page)
    page = page.replace('<base href="/">', f'<base href="{base}">', 1)
    page = page.replace("url(/static_files/", "url(static_files/").replace(
        'href="/static_files/', 'href="static_files/'
    )
    page = _fonts(page, local)
    meta = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
    return page.replace('<meta charset="utf-8">', '<meta charset="utf-8">\n  ' + meta, 1)


@functools.lru_cache(maxsize=8)
def _static(path: Path) -> bytes:
    """A web app file as served: the page's calls to its server and its absolute asset paths made relative
    to the token's folder (the <base> of the page, or the stylesheet's own address)."""
    data = path.read_bytes()
    if path.suffix == ".js":
        text = data.decode("utf-8")
        for prefix in API_PATHS:
            text = text.replace(prefix, '"' + prefix[2:])
        return text.encode("utf-8")
    if path.suffix == ".css":
        return data.replace(b"url(/static_files/", b"url(static_files/")
    return data


def explorer_url(
    token: str,
    models: list[tuple[str, str]],
    overlays: list[tuple[str, str]] | None = None,
    select: str | list[str] | None = None,
    split: bool = False,
    flatten: bool = False,
) -> str:
    """The page's address (relative to the app's root) for granted files, as (name, main graph id): one model,
    or two side by side (split) with navigation synchronised by node id; `overlays` are (document name, model
    name) pairs loaded as node data (the last one painted first), `select` the node selected in the first
    pane (or one per pane, "" for none); `flatten`: every op drawn
    (no collapsed layers), so each painted node shows its colour."""
    select = [select] if isinstance(select, str) else select or []
    panes: list[dict[str, Any]] = [
        {
            "deepestExpandedGroupNodeIds": [],
            "selectedNodeId": (select[i] if i < len(select) else "") if isinstance(select, list) else "",
            "selectedGraphId": models[i][1],
            "selectedCollectionLabel": models[i][0].rsplit("/", 1)[-1],  # the page labels a file by its base name
            "widthFraction": 0.5 if split else 1,
            "flattenLayers": flatten,
        }
        for i in range(2 if split and len(models) > 1 else 1)
    ]
    data: dict[str, Any] = {
        "models": [{"url": m, "adapterId": ADAPTER_ID} for m, _ in models],
        "nodeData": [d for d, _ in overlays or []],
        "nodeDataTargets": [m.rsplit("/", 1)[-1] for _, m in overlays or []],  # by the file's label
        "uiState": {"paneStates": panes},
    }
    if len(panes) > 1:
        data["sync"] = {"mode": "match_node_id"}
    query = urllib.parse.urlencode({"data": json.dumps(data, separators=(",", ":")), "renderer": "webgl"})
    return f"{EXPLORER}/{token}/?{query}"


class Converter:
    """The adapter's JSON for a file, run once per file version in a child process (studio.app.graph_adapter),
    the answers of the last few kept; callers for the same file wait for the one run."""

    def __init__(self, timeout_s: float = CONVERT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.warm = False  # prewarm only once served (routes() was asked for): not in a page built for a test
        self._lock = threading.Lock()
        self._done: dict[tuple, bytes] = {}
        self._running: dict[tuple, threading.Lock] = {}

    def __call__(self, path: Path, const_limit: int = 16) -> bytes:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, const_limit)
        with self._lock:
            if key in self._done:
                return self._done[key]
            gate = self._running.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._done:
                    return self._done[key]
            answer = self._run(path, const_limit)
            with self._lock:
                self._done[key] = answer
                self._running.pop(key, None)
                while len(self._done) > CONVERT_CACHE:
                    self._done.pop(next(iter(self._done)))
        return answer

    def prewarm(self, paths: list[Path]) -> None:
        """Convert these files in the background, one after the other (a conversion's files, just granted),
        so the view finds them ready; a file asked for meanwhile waits for its one run."""
        if not self.warm or explorer_dir() is None or not paths:
            return

        def run() -> None:
            for p in paths:
                try:
                    self(p)
                except OSError:  # gone meanwhile (pruned): the page's own request says so
                    pass

        threading.Thread(target=run, name="studio-explorer-prewarm", daemon=True).start()

    def _run(self, path: Path, const_limit: int) -> bytes:
        def cap() -> None:  # in the child, before exec: bounded memory
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (CONVERT_MEMORY_BYTES, CONVERT_MEMORY_BYTES))

        try:
            done = subprocess.run(
                [sys.executable, "-I", "-m", "studio.app.graph_adapter", str(path), str(const_limit)],
                capture_output=True,
                timeout=self.timeout_s,
                preexec_fn=cap if os.name == "posix" else None,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return _error(f"the graph of {path.name} was not read within {self.timeout_s:g} s")
        if done.returncode != 0:
            last = (done.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[-1]
            return _error(f"the ONNX adapter could not read {path.name}: {last[:300]}")
        return done.stdout


def _error(text: str) -> bytes:
    return json.dumps({"error": text}).encode("utf-8")


def routes(files: GraphFiles, convert: Converter | None = None) -> list[Any]:
    """The starlette routes of the web app and of its calls, per token (passed to gradio's FastAPI app)."""
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    folder = explorer_dir()
    convert = convert or Converter()
    convert.warm = True
    not_found = lambda: PlainTextResponse("Not Found", status_code=404)
    served: dict[str, Path] = {}
    if folder is not None:
        served = {p.name: p for p in folder.iterdir() if p.suffix in TYPES and p.is_file() and p.name != "index.html"}
        served.update({f"static_files/{p.name}": p for p in (folder / "static_files").iterdir() if p.suffix in TYPES})

    def live(request) -> bool:
        return folder is not None and files.live(request.path_params["token"])

    def index(request):
        if folder is None or not live(request):
            return not_found()
        root = request.scope.get("root_path", "").rstrip("/")
        page = explorer_index(folder, f"{root}/{EXPLORER}/{request.path_params['token']}/")
        headers = {**SAFE, "Content-Security-Policy": CSP, "Cache-Control": "no-store"}
        return Response(page, media_type=TYPES[".html"], headers=headers)

    def static(request):
        path = served.get(request.path_params["name"])
        if path is None or not live(request):
            return not_found()
        headers = {**SAFE, "Cache-Control": "private, max-age=3600"}
        return Response(_static(path), media_type=TYPES[path.suffix], headers=headers)

    def api(request):
        if not live(request):
            return not_found()
        what = request.path_params["call"]
        if what == "get_extensions":
            return JSONResponse(EXTENSIONS, headers=SAFE)
        if what == "check_new_version":
            return JSONResponse({"version": "", "runningVersion": "", "releaseUrl": "", "desktopAppUrl": ""})
        if what == "notify_user_provided_model_path":
            return JSONResponse({"status": "ok"})
        if what == "read_text_file":
            doc = files.doc(request.path_params["token"], request.query_params.get("path", ""))
            if doc is None:
                return JSONResponse({"error": "not granted"}, status_code=404)
            return JSONResponse({"content": doc}, headers={**SAFE, "Cache-Control": "private, no-store"})
        return not_found()

    async def command(request):
        if not live(request):
            return not_found()
        try:
            cmd = await request.json()
        except ValueError:
            return JSONResponse({"error": "not JSON"}, status_code=400)
        if not isinstance(cmd, dict) or cmd.get("cmdId") != "convert" or cmd.get("extensionId") != ADAPTER_ID:
            return JSONResponse({"error": "only the ONNX adapter's convert is served here"}, status_code=400)
        path = files.resolve(request.path_params["token"], str(cmd.get("modelPath", "")))
        if path is None:
            return JSONResponse({"error": "not granted"}, status_code=404)
        limit = (cmd.get("settings") or {}).get("const_element_count_limit", 16)
        limit = min(max(int(limit), 0), 1024) if isinstance(limit, (int, float)) else 16
        from starlette.concurrency import run_in_threadpool

        body = await run_in_threadpool(convert, path, limit)
        return Response(body, media_type="application/json", headers={**SAFE, "Cache-Control": "private, no-store"})

    def stream(request):  # the server's event stream: nothing is ever pushed (204 stops EventSource's retries)
        return Response(status_code=204) if live(request) else not_found()

    base = f"/{EXPLORER}/{{token}}"
    return [
        Route(f"{base}/", index, methods=["GET", "HEAD"]),
        Route(f"{base}/api/v1/{{call}}", api, methods=["GET"]),
        Route(f"{base}/apipost/v1/send_command", command, methods=["POST"]),
        Route(f"{base}/apistream/server_director", stream, methods=["GET"]),
        Route(f"{base}/{{name:path}}", static, methods=["GET", "HEAD"]),
    ]
