"""The shape-inference worker (rule c) under a hostile process: finalizers, forks, interrupts, stray files.

One worker process serves every session of this process. Each case once hung the caller, fed later
requests the answers to earlier ones, or ran a file from the working directory.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from onnx import TensorProto, helper

import ortbind
from ortbind import Rule, _inference
from ortbind._inference import _WORKER, _Worker


def _doubled() -> bytes:
    """y = x stacked twice, its shape not declared: only shape inference (rule c) tells it ahead."""
    graph = helper.make_graph(
        [helper.make_node("Concat", ["x", "x"], ["y"], axis=0)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


DOUBLED = _doubled()


@pytest.fixture
def fresh_worker() -> Iterator[None]:
    """A worker started by the test (in its environment), and none left behind for later tests."""
    _WORKER.close()
    yield
    _WORKER.close()


def _inferred(sess: ortbind.TorchSession, rows: int) -> tuple[Rule, tuple[int, ...] | None]:
    plan = sess.resolve_shapes({"x": (rows, 3)})["y"]
    return plan.rule, plan.shape


def _fork_a_child_that_infers(sess: ortbind.TorchSession) -> int:
    """Fork; the child infers once (killed after 30 s if it hangs) and exits 0 if the answer is right."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running
        pid = os.fork()
    if pid == 0:
        signal.alarm(30)
        ok = _inferred(sess, 5) == (Rule.INFERRED, (10, 3))
        os._exit(0 if ok else 1)
    return pid


def _exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_drop_never_waits_for_the_worker() -> None:
    """A session's finalizer may run (cyclic GC) while this very thread holds the worker's lock."""
    done = threading.Event()

    def collect_inside_a_request() -> None:
        with _WORKER._lock:
            _WORKER.drop(10**9)  # what weakref.finalize calls for a session gone
        done.set()

    thread = threading.Thread(target=collect_inside_a_request, daemon=True)
    thread.start()
    assert done.wait(10), "drop() blocked on the lock its own thread holds"
    sess = ortbind.TorchSession(DOUBLED)
    assert _inferred(sess, 4) == (Rule.INFERRED, (8, 3))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_infers_even_if_the_parent_held_the_lock() -> None:
    sess = ortbind.TorchSession(DOUBLED)
    assert _inferred(sess, 2) == (Rule.INFERRED, (4, 3))
    with _WORKER._lock:  # another thread of the parent is mid-request when the process forks
        pid = _fork_a_child_that_infers(sess)
    assert _exit_code(pid) == 0
    assert _inferred(sess, 3) == (Rule.INFERRED, (6, 3))


def test_an_interrupted_request_does_not_shift_later_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    sess = ortbind.TorchSession(DOUBLED)
    assert _inferred(sess, 2) == (Rule.INFERRED, (4, 3))
    read = _Worker._read

    def interrupted(self: _Worker, process: object, count: int) -> bytes:
        monkeypatch.setattr(_Worker, "_read", read)
        raise KeyboardInterrupt  # Ctrl-C after the request was sent, before its answer was read

    monkeypatch.setattr(_Worker, "_read", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _inferred(sess, 3)
    for rows in (4, 5, 6):
        assert _inferred(sess, rows) == (Rule.INFERRED, (2 * rows, 3))
    expected = torch.cat([torch.ones(7, 3)] * 2)
    out = torch.empty(14, 3)
    assert torch.equal(sess.run({"x": torch.ones(7, 3)}, out={"y": out})["y"], expected)


def test_the_worker_runs_no_file_of_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_worker: None
) -> None:
    marker = tmp_path / "ran"
    for module in ("onnx", "pickle", "struct"):
        (tmp_path / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n")
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ortbind.OrtbindWarning)  # the worker must not die
        sess = ortbind.TorchSession(DOUBLED)
        assert _inferred(sess, 4) == (Rule.INFERRED, (8, 3))
    assert not marker.exists()


@pytest.mark.parametrize("noise", ["x", "hello from the environment"])
def test_a_worker_whose_stdout_carries_other_output_is_given_up_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_worker: None, noise: str
) -> None:
    """Given up at once: a short print once left the parent waiting two minutes for the rest of a reply."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"print({noise!r})\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), *sys.path]))
    sess = ortbind.TorchSession(DOUBLED)
    with pytest.warns(ortbind.OrtbindWarning, match="something else writes to the worker's stdout") as caught:
        plan = sess.resolve_shapes({"x": (4, 3)})["y"]
    assert (plan.rule, plan.shape) == (Rule.ORT, None)
    assert caught[0].filename == __file__  # the warning names the caller's line, not ortbind's
    assert torch.equal(sess(x=torch.ones(4, 3))["y"], torch.ones(8, 3))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_infers_while_another_thread_of_the_parent_builds_the_skeleton(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The skeleton (made once per session, seconds for a large model) is made without a lock: a
    lock held by a parent's thread when the process forks is held in the child for good."""
    parent = os.getpid()
    building, release = threading.Event(), threading.Event()
    make = _inference._make_skeleton

    def slow(model: object) -> object:
        if os.getpid() == parent:
            building.set()
            release.wait(30)
        return make(model)

    monkeypatch.setattr(_inference, "_make_skeleton", slow)
    sess = ortbind.TorchSession(DOUBLED)
    answers: list[object] = []
    thread = threading.Thread(target=lambda: answers.append(_inferred(sess, 2)), daemon=True)
    thread.start()
    assert building.wait(30)
    try:
        code = _exit_code(_fork_a_child_that_infers(sess))
    finally:
        release.set()
        thread.join(30)
    assert code == 0
    assert answers == [(Rule.INFERRED, (4, 3))]
    assert _inferred(sess, 3) == (Rule.INFERRED, (6, 3))


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_a_signal_handler_that_calls_a_session_mid_inference_gets_a_right_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The handler runs on the thread that is inside a request: it may neither wait for the worker's
    lock (a deadlock) nor send a request of its own (it would read the outer one's answer)."""
    outer, inner = ortbind.TorchSession(DOUBLED), ortbind.TorchSession(DOUBLED)
    assert _inferred(outer, 1) == (Rule.INFERRED, (2, 3))
    got: list[torch.Tensor] = []
    read = _Worker._read

    def signalled(self: _Worker, process: object, count: int) -> bytes:
        monkeypatch.setattr(_Worker, "_read", read)
        os.kill(os.getpid(), signal.SIGUSR1)  # its handler runs at the next bytecode, here
        return read(self, process, count)  # type: ignore[arg-type]

    def handler(signum: int, frame: object) -> None:
        got.append(inner(x=torch.full((4, 3), 2.0))["y"])

    def deadlocked(signum: int, frame: object) -> None:
        raise AssertionError("the handler's call waited for the worker's lock")

    previous = signal.signal(signal.SIGUSR1, handler)
    previous_alarm = signal.signal(signal.SIGALRM, deadlocked)
    signal.alarm(30)
    try:
        monkeypatch.setattr(_Worker, "_read", signalled)
        assert _inferred(outer, 5) == (Rule.INFERRED, (10, 3))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGUSR1, previous)
        signal.signal(signal.SIGALRM, previous_alarm)
    assert len(got) == 1 and torch.equal(got[0], torch.full((8, 3), 2.0))
    assert _inferred(inner, 6) == (Rule.INFERRED, (12, 3))  # later calls infer again
