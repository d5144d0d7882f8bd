"""Rule (c): ONNX shape inference on concrete input shapes, in a worker process.

A trimmed copy of the graph (the skeleton) is made once: large or external initializers, and
Constant nodes holding large tensors, become typed graph inputs, so no weight bytes are copied or
serialized per call, while small integer initializers (reshape targets, slice bounds) keep their
values for data propagation. Declared
output and intermediate shapes are cleared so a wrong declaration cannot veto the inference.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import onnx
import onnx.shape_inference

from ._dimexpr import Shape
from .errors import OrtbindWarning, _warn

__all__ = ["ShapeInferencer"]

_log = logging.getLogger("ortbind")

# Initializers at most this many elements, of an integer type, stay in the skeleton: they are the
# ones data propagation needs (shape tensors); float weights never decide a shape.
_KEEP_MAX_ELEMENTS: Final = 4096
_INTEGER_TYPES: Final = frozenset(
    {
        onnx.TensorProto.INT64,
        onnx.TensorProto.INT32,
        onnx.TensorProto.INT16,
        onnx.TensorProto.INT8,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.UINT16,
        onnx.TensorProto.UINT32,
        onnx.TensorProto.UINT64,
        onnx.TensorProto.BOOL,
    }
)


def _numel(tensor: onnx.TensorProto) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _keeps_values(tensor: onnx.TensorProto) -> bool:
    """Whether shape inference may need this constant's values (a small integer shape tensor)."""
    return tensor.data_type in _INTEGER_TYPES and _numel(tensor) <= _KEEP_MAX_ELEMENTS and not _is_external(tensor)


def _large_constant(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The value of a Constant node that holds a tensor not worth keeping, else ``None``."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    for attribute in node.attribute:
        if attribute.name == "value" and attribute.type == onnx.AttributeProto.TENSOR:
            return None if _keeps_values(attribute.t) else attribute.t
    return None


def _make_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    # Field by field rather than CopyFrom: a model loaded from bytes carries its weights inline,
    # and copying them only to drop them would double peak memory.
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    source, graph = model.graph, skeleton.graph
    graph.name = source.name
    for node in source.node:
        value = _large_constant(node)
        if value is None:
            graph.node.append(node)
        else:
            # A weight stored as a Constant node: its values never decide a shape, so a typed
            # graph input of the same name stands in for it.
            graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], value.data_type, list(value.dims)))
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.sparse_initializer.extend(source.sparse_initializer)
    declared = {value.name for value in source.input}
    for tensor in source.initializer:
        if _keeps_values(tensor):
            graph.initializer.append(tensor)
        elif tensor.name not in declared:  # an overridable initializer is already typed as an input
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    for output in graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")
    return skeleton


class ShapeInferencer:
    """Infers output dims from concrete input shapes, in a worker process; thread-safe.

    ONNX's C++ shape inference can abort the whole process on a model ONNX Runtime runs fine (a
    ``Split`` whose ``num_outputs`` is below its output count indexes past a vector, a failed
    assertion, SIGABRT), and which models do that cannot be told by looking at them. So it runs
    in a separate process (:mod:`._inference_worker`, which imports only ``onnx``), shared by all
    sessions of this process and started on first use; a crash there costs rule (c) for this
    model, never the caller's process: the outputs rules (a) and (b) cannot resolve are left to
    ORT (rule d), with one warning.

    Args:
        model: The parsed model (weights may be absent). Only a weightless skeleton of it is kept.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self._skeleton: bytes | None = None
        self._key = next(_KEYS)
        self._failed = False
        weakref.finalize(self, _WORKER.drop, self._key)

    def __call__(self, shapes: Mapping[str, Shape]) -> dict[str, tuple[int | None, ...] | None]:
        """Output name -> inferred dims (``None`` for an unknown dim or rank); ``{}`` if inference failed."""
        if self._failed:
            return {}
        skeleton = self._skeleton
        if skeleton is None:
            # No lock: a child forked while another thread held one here would wait on it for good.
            # Threads that race both build it; the skeleton is stored before the model is dropped,
            # so a thread that finds no model finds the skeleton.
            model = self._model
            if model is None:
                skeleton = self._skeleton
            else:
                skeleton = self._skeleton = _make_skeleton(model).SerializeToString()
                self._model = None  # type: ignore[assignment]  # only the skeleton is needed from now on
        assert skeleton is not None
        try:
            return _WORKER.infer(self._key, skeleton, {k: tuple(v) for k, v in shapes.items()})
        except _WorkerLostError as exc:
            self._failed = True
            _warn(
                f"ONNX shape inference failed on this model ({exc}); outputs whose shapes the declared dims do "
                f"not give are allocated by ONNX Runtime from now on",
                OrtbindWarning,
            )
            return {}


class _WorkerLostError(Exception):
    """The inference worker died (or could not start, or hung) while serving a request."""


_KEYS = itertools.count()

_WORKER_PATH: Final = Path(__file__).with_name("_inference_worker.py")

_MARK: Final = b"ortbind\n"
"""What every reply of the worker starts with (``MARK`` in :mod:`._inference_worker`)."""

_MAX_REPLY: Final = 1 << 32
"""Bytes a reply may announce; more means the worker's stdout carries something else."""

_TIMEOUT_S: Final = 120.0
"""The longest one inference may take before the worker is taken for hung and killed."""


class _Worker:
    """The process that runs ONNX shape inference for every session of this process.

    Requests are length-prefixed pickles over its stdin/stdout: ``("load", key, skeleton)``,
    ``("infer", key, shapes)``, ``("drop", key)``; each reply starts with ``_MARK``, so anything
    else written to the worker's stdout is told apart at once. A process forked from this one starts its own
    worker rather than talk over pipes it shares with its parent.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._owner: int | None = None  # the thread inside a request (see infer)
        self._process: subprocess.Popen[bytes] | None = None
        self._pid = -1
        self._loaded: set[int] = set()
        # Keys of sessions gone, sent at the next request: a finalizer may run (cyclic GC) while
        # this thread holds the lock, so drop() must never wait for it.
        self._dropped: collections.deque[int] = collections.deque()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        """In a forked child: the parent's lock may be held by a thread that does not exist here, and
        its worker is the parent's. Start afresh (the child starts a worker of its own on first use)."""
        self._lock = threading.RLock()
        self._owner = None
        self._process, self._pid, self._loaded = None, -1, set()
        self._dropped.clear()

    def _start(self) -> subprocess.Popen[bytes]:
        if not sys.executable:
            raise _WorkerLostError("no Python interpreter to start the inference worker with (sys.executable is empty)")
        code = f"import runpy; runpy.run_path({str(_WORKER_PATH)!r}, run_name='__main__')"
        try:
            # -P: no working directory on sys.path, so no onnx.py or pickle.py of the caller's runs there.
            process = subprocess.Popen(
                [sys.executable, "-P", "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise _WorkerLostError(f"the inference worker could not start: {exc}") from exc
        self._process, self._pid, self._loaded = process, os.getpid(), set()
        return process

    def _request(self, message: tuple[Any, ...]) -> Any:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            process.stdin.write(struct.pack("<Q", len(payload)) + payload)
            process.stdin.flush()
            head = self._read(process, 16)
            if head[:8] != _MARK:
                raise EOFError(f"a reply starting {head[:8]!r}: something else writes to the worker's stdout")
            (size,) = struct.unpack("<Q", head[8:])
            if size > _MAX_REPLY:
                raise EOFError(f"a reply of {size} bytes: something else writes to the worker's stdout")
            reply = pickle.loads(self._read(process, size))
            if reply != "ok" and not (message[0] == "infer" and type(reply) is tuple and len(reply) == 2):
                raise EOFError(f"an answer that is not one: {reply!r:.80}")
        except Exception as exc:  # the answer is lost, or not one: nothing later could be trusted
            self._stop()
            raise _WorkerLostError(str(exc) or type(exc).__name__) from exc
        except BaseException:  # interrupted mid-request: the answer would be read by the next request
            self._stop()
            raise
        return reply

    def _read(self, process: subprocess.Popen[bytes], count: int) -> bytes:
        assert process.stdout is not None
        chunks, left = [], count
        while left:
            ready, _, _ = select.select([process.stdout], [], [], _TIMEOUT_S)
            if not ready:
                process.kill()
                raise EOFError(f"no answer within {_TIMEOUT_S:.0f} s; the worker was stopped")
            chunk = os.read(process.stdout.fileno(), left)
            if not chunk:
                code = process.wait()
                raise EOFError(f"the inference worker exited with code {code}")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()

    def infer(self, key: int, skeleton: bytes, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
        """Output name -> inferred dims; ``{}`` where inference failed, or where this thread is inside a
        request already: a signal handler that calls a session (waiting for the lock would deadlock,
        and a nested request would read the outer one's answer). That call lets ORT allocate instead."""
        with self._lock:  # reentrant: a nested call finds the owner set, or the pipe idle
            if self._owner is not None:
                _log.debug("shape inference skipped for %s: this thread is inside a request already", shapes)
                return {}
            self._owner = threading.get_ident()
            try:
                kind, value = self._infer(key, skeleton, shapes)
            finally:
                self._owner = None
        if kind == "error":
            _log.debug("shape inference failed for %s: %s", shapes, value)
            return {}
        return dict(value)

    def _infer(self, key: int, skeleton: bytes, shapes: dict[str, tuple[int, ...]]) -> tuple[str, Any]:
        """One request and its answer, under the lock."""
        process = self._process
        if process is None or self._pid != os.getpid() or process.poll() is not None:
            self._stop()  # a worker that died: its pipes closed, the process reaped
            self._start()  # and every model is loaded again, on its next request
        while self._dropped:
            gone = self._dropped.popleft()
            if gone in self._loaded:
                self._loaded.discard(gone)
                self._request(("drop", gone))
        if key not in self._loaded:
            self._request(("load", key, skeleton))
            self._loaded.add(key)
        return self._request(("infer", key, shapes))  # type: ignore[no-any-return]

    def drop(self, key: int) -> None:
        """Forget a session's model in the worker, at its next request (never blocks: see ``_dropped``)."""
        self._dropped.append(key)

    def close(self) -> None:
        """End the worker: it exits when its stdin closes (at the latest, when this process exits)."""
        with self._lock:
            process, self._process = self._process, None
            if process is None or self._pid != os.getpid():
                return
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


_WORKER = _Worker()
atexit.register(_WORKER.close)
