"""The graph view: Netron's viewer (the static files of the `netron` package), served by the studio itself,
showing a session's model.onnx and variants. Nothing is fetched from outside: the viewer's page is served
with a Content-Security-Policy allowing only this server (`connect-src 'self'`), without Netron's usage
reporting (it runs only for a "packaged" version: the page says 0.0.0), its "please update" nag (driven by
the build date, removed) or its cookie prompt (which first asks ipinfo.io for the country; the consent cookie
is set by studio-viewer.js).

What is served, and to whom. A conversion's files are granted under a random token (the capability URL
`studio/graph/<token>/<name>`), given only to the session that made them. A request is answered only for a
name granted under that token (model.onnx, its .data, the variant files), a regular file, no symlink on
the way, inside the session folders' root; any other path, `..`, a symlink, another token's file, a file
gone with its pruned job folder or closed session: 404. No gradio in here (starlette only)."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import secrets
import stat
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.report.render import size_text

VIEWER = "studio/netron"  # the viewer's static files (relative to the app's root)
FILES = "studio/graph"  # the granted model files
VIEWER_SCRIPT = "studio-viewer.js"
VIEWER_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; frame-src 'none'; object-src 'none'; "
    "base-uri 'self'; form-action 'none'"
)
KEEP_GRANTS = 3  # per session: the newest conversions' files (a session keeps 3 job folders)

# Loaded before Netron's own scripts: no consent prompt (nothing is reported anywhere), then, when the URL
# says ?select=NODE, that node is selected and its properties shown once the graph is drawn.
VIEWER_JS = r"""// ONNX Studio: Netron offline, and the node named by ?select= selected.
(function () {
  "use strict";
  var here = window.location.pathname.replace(/[^/]*$/, "");
  document.cookie = "consent=" + Date.now() + "; path=" + here + "; SameSite=Strict";
  var name = new URLSearchParams(window.location.search).get("select");
  if (!name) { return; }
  var tries = 0;
  var timer = setInterval(function () {
    tries += 1;
    var v = window.__view__;
    var t = v && v._target;
    if (t && t._table) {
      var entries = Array.from(t._table.entries());
      for (var i = 0; i < entries.length; i++) {
        var key = entries[i][0], obj = entries[i][1];
        if (obj && obj.class === "graph-node" && key && key.name === name) {
          clearInterval(timer);
          t.scrollTo(t.activate(key, "sidebar"));
          document.body.setAttribute("data-studio-selected", name);
          return;
        }
      }
      if (entries.length && tries > 50) {  // drawn, and no node of that name
        clearInterval(timer);
        document.body.setAttribute("data-studio-selected", "");
      }
    }
    if (tries > 1200) { clearInterval(timer); }
  }, 100);
})();
"""


@functools.lru_cache(maxsize=1)
def netron_dir() -> Path | None:
    """The `netron` package's folder (its index.html and scripts), or None when it is not installed."""
    spec = importlib.util.find_spec("netron")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if (folder / "index.html").is_file() else None


def viewer_index(folder: Path) -> str:
    """Netron's index.html as the studio serves it (see the module text)."""
    page = (folder / "index.html").read_text(encoding="utf-8")
    page = re.sub(
        r'<meta http-equiv="Content-Security-Policy"[^>]*>',
        lambda _: f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        page,
        count=1,
    )
    page = re.sub(r'<meta name="version" content="[^"]*">', '<meta name="version" content="0.0.0">', page, count=1)
    page = re.sub(r'<meta name="date" content="[^"]*">\s*', "", page, count=1)
    script = f'<script type="text/javascript" src="{VIEWER_SCRIPT}"></script>\n'
    return page.replace(
        '<script type="text/javascript" src="index.js">', script + '<script type="text/javascript" src="index.js">', 1
    )


def viewer_url(file_url: str, select: str | None = None) -> str:
    """The viewer's address for a granted file (both relative to the app's root), with a node selected."""
    query = {"url": "../../" + file_url}  # relative to studio/netron/index.html
    if select:
        query["select"] = select
    return f"{VIEWER}/index.html?{urllib.parse.urlencode(query)}"


@dataclass
class Grant:
    key: str
    out: Path  # real path of the conversion's output folder
    names: frozenset[str]  # what may be served, relative to out ("model.onnx", "variants/model.int8.onnx")
    docs: dict[str, str] = field(default_factory=dict)  # in-memory JSON by name: the graph's overlays


@dataclass
class GraphFiles:
    """Tokens granting a session's conversion files to the viewer (see the module text)."""

    root: Path  # the session folders' root: nothing outside it is ever served
    _grants: dict[str, Grant] = field(default_factory=dict)
    _views: dict[str, tuple] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.root = Path(os.path.realpath(self.root))

    def grant(self, key: str, out: Path, names: list[str], docs: dict[str, str] | None = None) -> str:
        """A new token for these files of `out` (and these in-memory documents), for session `key` only."""
        token = secrets.token_urlsafe(18)
        with self._lock:
            mine = [t for t, g in self._grants.items() if g.key == key]
            for t in mine[: max(len(mine) - KEEP_GRANTS + 1, 0)]:
                del self._grants[t]
            for t in [t for t, g in self._grants.items() if not g.out.is_dir()]:  # sessions gone
                del self._grants[t]
            self._grants[token] = Grant(key, Path(os.path.realpath(out)), frozenset(names), dict(docs or {}))
            live = {g.key for g in self._grants.values()}
            for k in [k for k in self._views if k not in live]:  # expired sessions' panels
                del self._views[k]
        return token

    def revoke(self, key: str) -> None:
        with self._lock:
            for t in [t for t, g in self._grants.items() if g.key == key]:
                del self._grants[t]
            self._views.pop(key, None)

    def remember(self, key: str, found: list[GraphEntry], node: str | None) -> None:
        """The session's latest Graph panel (what choosing another file redraws)."""
        with self._lock:
            self._views[key] = (found, node)

    def view(self, key: str) -> tuple[list[GraphEntry], str | None]:
        with self._lock:
            return self._views.get(key, ([], None))

    def live(self, token: str) -> bool:
        """Whether `token` grants anything now (the viewer's own files are served only under a live token)."""
        with self._lock:
            return token in self._grants

    def doc(self, token: str, name: str) -> str | None:
        """The in-memory document granted as `name` under `token` (an overlay's JSON), or None."""
        with self._lock:
            g = self._grants.get(token)
            return None if g is None else g.docs.get(name)

    def resolve(self, token: str, name: str) -> Path | None:
        """The file granted as `name` under `token`, or None (what the route answers 404 to)."""
        with self._lock:
            g = self._grants.get(token)
        if g is None or name not in g.names:
            return None
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
            return None
        path = g.out.joinpath(*parts)
        real = os.path.realpath(path)
        if real != str(path) or os.path.commonpath([real, str(self.root)]) != str(self.root):
            return None  # a symlink on the way, or outside the session folders
        try:
            if not stat.S_ISREG(os.lstat(real).st_mode):
                return None
        except OSError:  # pruned with its job folder, or the session was closed
            return None
        return path


def routes(files: GraphFiles) -> list[Any]:
    """The starlette routes of the viewer and of the granted files (passed to gradio's FastAPI app)."""
    from starlette.responses import FileResponse, PlainTextResponse, Response
    from starlette.routing import Route

    folder = netron_dir()
    served = {n for n in os.listdir(folder) if Path(n).suffix in VIEWER_TYPES} if folder else set()
    index = viewer_index(folder) if folder else None
    not_found = lambda: PlainTextResponse("Not Found", status_code=404)
    safe = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

    def viewer(request):
        name = request.path_params["name"]
        if name == "index.html" and index is not None:
            return Response(
                index,
                media_type=VIEWER_TYPES[".html"],
                headers={**safe, "Content-Security-Policy": CSP, "Cache-Control": "no-store"},
            )
        if name == VIEWER_SCRIPT:
            return Response(VIEWER_JS, media_type=VIEWER_TYPES[".js"], headers=safe)
        if name not in served:
            return not_found()
        return FileResponse(
            folder / name,
            media_type=VIEWER_TYPES[Path(name).suffix],
            headers={**safe, "Cache-Control": "public, max-age=3600"},
        )

    def model_file(request):
        path = files.resolve(request.path_params["token"], request.path_params["name"])
        if path is None:
            return not_found()
        download = request.query_params.get("download") is not None
        return FileResponse(
            path,
            media_type="application/octet-stream",
            filename=path.name if download else None,
            headers={**safe, "Cache-Control": "private, no-store"},
        )

    return [
        Route(f"/{VIEWER}/{{name}}", viewer, methods=["GET", "HEAD"]),
        Route(f"/{FILES}/{{token}}/{{name:path}}", model_file, methods=["GET", "HEAD"]),
    ]


# --- what the page's Graph panel shows ---------------------------------------------------------------


@dataclass
class GraphEntry:
    """One viewable file of a conversion."""

    label: str  # "model.onnx", "int8 · variants/model.int8.onnx"
    name: str  # relative to the output folder
    size_bytes: int
    nodes: int | None  # nodes in the graph (subgraphs included); None when not counted
    data: str | None = None  # its external-data file, when it has one
    url: str | None = None  # the granted file (relative to the app's root)
    too_big: str | None = None  # why the viewer is not loaded for it
    token: str | None = None  # the grant it is served under
    graph_id: str = ""  # its main graph's id as Model Explorer's ONNX adapter names it
    overlays: list = field(default_factory=list)  # studio.app.graph_overlay.Overlay: the numbers painted on it
    node_names: frozenset[str] = frozenset()  # its nodes' names (which the view can select)
    # --exporter compare's other file: what model.onnx is called beside it ("model.onnx (dynamo)"); else ""
    beside: str = ""


def _nodes(path: Path) -> int | None:
    from studio.checks.graph_info import graph_info

    try:
        return sum(graph_info(path).op_counts.values())
    except Exception:  # noqa: BLE001 - an unreadable file is shown by Netron's own message
        return None


def entries(report: Any, out: Path, max_nodes: int, max_bytes: int) -> list[GraphEntry]:
    """model.onnx, each variant file written and --exporter compare's other file, with its size and node count, and whether it is too big
    for the viewer (above max_nodes nodes or max_bytes bytes of .onnx file: the browser would freeze)."""
    found: list[GraphEntry] = []
    model = (getattr(report, "files", None) or {}).get("model")
    graph = getattr(report, "graph", None)
    candidates = [("model.onnx", model, sum(graph.op_counts.values()) if graph and graph.op_counts else None)]
    for v in getattr(report, "variants", None) or []:
        if v.file:
            candidates.append((f"{v.name} · {v.file}", v.file, None))
    beside: dict[str, str] = {}  # --exporter compare: the other exporter's file (report.comparison's rows)
    comparison: Any = getattr(report, "comparison", None)
    for row in comparison.rows if comparison is not None else []:
        if row.file and row.file != model:
            candidates.append((f"{row.exporter} · {row.file}", row.file, row.nodes))
            beside[row.file] = f"model.onnx ({comparison.winner})"
    for label, name, nodes in candidates:
        if not name or not (out / name).is_file():
            continue
        size = (out / name).stat().st_size
        if nodes is None and size <= max_bytes:
            nodes = _nodes(out / name)
        data = f"{name}.data" if (out / f"{name}.data").is_file() else None
        e = GraphEntry(label, name, size, nodes, data, beside=beside.get(name, ""))
        if size > max_bytes:
            e.too_big = (
                f"its graph file is {size_text(size)} (the viewer loads at most {size_text(max_bytes)}): "
                "too big to draw here without freezing the tab"
            )
        elif nodes is not None and nodes > max_nodes:
            e.too_big = (
                f"it has {nodes:,} nodes (the viewer draws at most {max_nodes:,}): too big to draw here "
                "without freezing the tab"
            )
        elif netron_dir() is None:
            e.too_big = "the graph viewer is not installed on this server (pip install netron)"
        found.append(e)
    return found


def divergence_node(report: Any) -> str | None:
    """The node where ONNX Runtime first leaves PyTorch, when the report has a divergence section (a dict
    as in report.json, or the locator's object); None otherwise."""
    div = getattr(report, "divergence", None)
    if div is None:
        return None
    first = div.get("first") if isinstance(div, dict) else getattr(div, "first", None)
    if first is None:
        return None
    node = first.get("node") if isinstance(first, dict) else getattr(first, "node", None)
    return str(node) if node else None
