"""Model Explorer's ONNX adapter (`model-explorer-onnx`), run in a child process on one granted file: the graph
as the JSON Model Explorer's page draws. The parent (studio.app.graph_explorer) starts it only with a path
that GraphFiles.resolve returned, under a time limit and an address-space cap; the child reads that file alone
(without its external data: the adapter loads no weights) and writes the JSON to stdout.

    python -m studio.app.graph_adapter FILE [CONST_ELEMENT_LIMIT]

No gradio, no studio import beyond this module: the child starts fast and holds nothing of the server's."""

from __future__ import annotations

import json
import sys
from typing import Any


def _light_model_explorer() -> None:
    """`model_explorer` as the adapter needs it (Adapter, AdapterMetadata, ModelExplorerGraphs, graph_builder,
    utils), without running its package __init__, which imports its Flask server, IPython and the TF / TFLite
    adapters' native library: seconds of imports for nothing the ONNX adapter uses."""
    import importlib
    import importlib.util
    import types

    if "model_explorer" in sys.modules:
        return
    spec = importlib.util.find_spec("model_explorer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("model_explorer is not installed (pip install ai-edge-model-explorer)")
    pkg = types.ModuleType("model_explorer")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["model_explorer"] = pkg
    adapter = importlib.import_module("model_explorer.adapter")
    pkg.Adapter, pkg.AdapterMetadata = adapter.Adapter, adapter.AdapterMetadata  # type: ignore[attr-defined]
    pkg.ModelExplorerGraphs = importlib.import_module("model_explorer.types").ModelExplorerGraphs  # type: ignore[attr-defined]


def convert(path: str, const_element_count_limit: int = 16) -> dict[str, Any]:
    """The adapter's answer for `path`, as Model Explorer's own server would send it ({"graphs": [...]})."""
    _light_model_explorer()
    from model_explorer.utils import convert_adapter_response  # type: ignore[import-untyped]
    from model_explorer_onnx.main import ONNXAdapter  # type: ignore[import-untyped]

    resp = ONNXAdapter().convert(path, {"const_element_count_limit": const_element_count_limit})
    return convert_adapter_response(resp)


def main(argv: list[str]) -> int:
    import logging

    logging.disable(logging.WARNING)  # the adapter warns on stderr about shape inference; the answer is stdout
    limit = int(argv[1]) if len(argv) > 1 else 16
    json.dump(convert(argv[0], limit), sys.stdout, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
