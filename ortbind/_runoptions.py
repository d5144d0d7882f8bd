"""ORT RunOptions as ortbind uses them: quiet logs, synchronous or not, a CUDA graph id."""

from __future__ import annotations

from typing import Final

import onnxruntime as ort

__all__ = ["GRAPH_ID", "NO_SYNC", "config_entry", "default_run_options"]

NO_SYNC: Final = "disable_synchronize_execution_providers"
GRAPH_ID: Final = "gpu_graph_id"


def default_run_options(*, synchronize: bool, cuda_graph: bool, graph_id: int = -1) -> ort.RunOptions:
    """Fresh RunOptions: ORT's own error log off, and the sync and graph entries asked for."""
    options = ort.RunOptions()
    # Every run error reaches the caller as a RunError carrying ORT's message; ORT's own log
    # line for it would only repeat that (and would fire for the handled shape retry).
    options.log_severity_level = 4
    if not synchronize:
        options.add_run_config_entry(NO_SYNC, "1")
    if cuda_graph:
        options.add_run_config_entry(GRAPH_ID, str(graph_id))
    return options


def config_entry(options: ort.RunOptions, key: str) -> str | None:
    """A run config entry of ``options``, or ``None`` when it is not set (ORT raises for that)."""
    try:
        return str(options.get_run_config_entry(key))
    except RuntimeError:
        return None
