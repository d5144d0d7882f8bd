"""Run options, decided in one place: ortbind's defaults, asynchronous runs, CUDA graph ids, checks.

Every run of a session (plain call, bound call, verifying run) gets its ``RunOptions`` from
:meth:`RunPolicy.choose`, which also says whether the run is asynchronous (so the stream ordering
knows what to record).
"""

from __future__ import annotations

from typing import Final

import onnxruntime as ort

from .errors import ConfigError

__all__ = ["GRAPH_ID", "NO_SYNC", "RunPolicy", "config_entry", "default_run_options"]

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


class RunPolicy:
    """The RunOptions of one session's runs.

    Args:
        synchronize: The session's default: block until ORT's stream is done (CUDA only).
        cuda_graph: The session captures CUDA graphs: every run names a ``gpu_graph_id`` (-1 for
            runs outside graphs).
        can_defer: Whether a run may return before ORT's stream is done: only when ortbind knows
            ORT's stream and orders it by events. An adopted session built without a
            ``user_compute_stream`` runs on a stream ortbind cannot order, so it must synchronize.
    """

    def __init__(self, *, synchronize: bool, cuda_graph: bool, can_defer: bool) -> None:
        if not synchronize and not can_defer:
            raise self._cannot_defer()
        self.cuda_graph = cuda_graph
        self.can_defer = can_defer
        self.synchronize = synchronize
        self._sync = default_run_options(synchronize=True, cuda_graph=cuda_graph)
        self._async = default_run_options(synchronize=False, cuda_graph=cuda_graph)
        self.default = self._sync if synchronize else self._async
        """What plain calls use when given nothing (``TorchSession.run_options``)."""
        self.asynchronous = not synchronize
        """Whether runs with :attr:`default` return before ORT's stream is done."""

    @staticmethod
    def _cannot_defer() -> ConfigError:
        return ConfigError(
            "synchronize=False: this session was built without a user_compute_stream, so ORT runs on a stream "
            "ortbind cannot order against torch's; its runs must block until they are done; build it with "
            "provider_options={'CUDAExecutionProvider': {'user_compute_stream': str(stream.cuda_stream)}}",
            kind="option",
            name="synchronize",
        )

    def graph_options(self, graph_id: int) -> tuple[ort.RunOptions, ort.RunOptions]:
        """A bound call's own (synchronous, asynchronous) options, naming its CUDA graph."""
        return (
            default_run_options(synchronize=True, cuda_graph=True, graph_id=graph_id),
            default_run_options(synchronize=False, cuda_graph=True, graph_id=graph_id),
        )

    def choose(
        self,
        run_options: ort.RunOptions | None,
        synchronize: bool | None,
        graph: tuple[ort.RunOptions, ort.RunOptions] | None = None,
        graph_id: int = -1,
    ) -> tuple[ort.RunOptions, bool]:
        """The options for one run and whether it is asynchronous.

        Args:
            run_options: The caller's, used as given (checked against the session), or ``None``.
            synchronize: The caller's override of the session's ``synchronize``, or ``None``.
            graph: A bound call's own options (see :meth:`graph_options`), in a cuda_graph session.
            graph_id: That bound call's graph id (-1 outside graphs).

        Raises:
            ConfigError: ``run_options`` is not a RunOptions, contradicts ``synchronize``, names
                another graph than this run's, or asks for an asynchronous run that cannot be ordered.
        """
        if synchronize is not None and type(synchronize) is not bool:
            raise ConfigError(
                f"synchronize: expected True, False or None (the session's default), got {synchronize!r}",
                kind="option",
                name="synchronize",
            )
        if run_options is None:
            wait = self.synchronize if synchronize is None else synchronize
            if not wait and not self.can_defer:
                raise self._cannot_defer()
            if graph is not None:
                return graph[0 if wait else 1], not wait
            if synchronize is None:
                return self.default, not wait
            return (self._sync if wait else self._async), not wait
        if not isinstance(run_options, ort.RunOptions):
            raise ConfigError(
                f"run_options: expected an onnxruntime.RunOptions, got {type(run_options).__name__}",
                kind="option",
                name="run_options",
            )
        deferred = config_entry(run_options, NO_SYNC) == "1"
        if synchronize is not None and deferred == synchronize:
            raise ConfigError(
                f"synchronize={synchronize}: the run_options given say {NO_SYNC}={'1' if deferred else '0'}; "
                f"set it there, or leave run_options out",
                kind="option",
                name="synchronize",
            )
        if deferred and not self.can_defer:
            raise self._cannot_defer()
        if self.cuda_graph:
            entry = config_entry(run_options, GRAPH_ID)
            if entry != str(graph_id):
                raise ConfigError(
                    f"run_options: this run needs gpu_graph_id {graph_id} in a cuda_graph session, the options given "
                    f"have {entry or 'none'}; add run_options.add_run_config_entry('gpu_graph_id', '{graph_id}')",
                    kind="option",
                    name="gpu_graph_id",
                )
        return run_options, deferred
