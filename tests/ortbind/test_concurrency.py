"""One session, many threads: every call has its own binding and its own results."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import torch

import ortbind

from ..models import parse

MODEL = parse("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N, M] x, float[M] b) => (float[N, M] y, float[M, N] t, int64[2, K] nz) {
    y = Add(x, b)
    t = Transpose(y)
    zero = Constant<value = float {0.0}>()
    mask = Greater(y, zero)
    nz = NonZero(mask)
}""")

THREADS = 8
CALLS = 200
SHAPES = [(1, 1), (2, 3), (5, 4), (3, 7), (16, 2)]


def test_threads_calling_one_session_get_their_own_results() -> None:
    sess = ortbind.TorchSession(MODEL)
    plain = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    failures: list[str] = []
    checked = [0] * THREADS
    barrier = threading.Barrier(THREADS)

    def worker(index: int) -> None:
        generator = torch.Generator().manual_seed(index)
        barrier.wait()
        for call in range(CALLS):
            n, m = SHAPES[(index + call) % len(SHAPES)]
            x = torch.randn(n, m, generator=generator)
            b = torch.randn(m, generator=generator)
            names = None if call % 3 else ["nz", "y"]
            out = sess.run({"x": x, "b": b}, names)
            expected = dict(zip(["y", "t", "nz"], plain.run(None, {"x": x.numpy(), "b": b.numpy()}), strict=True))
            for name, value in out.items():
                if not np.array_equal(value.numpy(), expected[name]):
                    failures.append(f"thread {index} call {call} output {name}")
            checked[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert checked == [CALLS] * THREADS
