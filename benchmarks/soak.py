"""Soak: many calls mixing ortbind- and ORT-allocated outputs; prints resident memory as it goes.

Each call runs a model whose outputs are allocated both ways (``relu`` by ortbind from its declared
shape, ``nz`` by ONNX Runtime since NonZero's size depends on the data), with the input size
cycling through a few signatures and every fifth call into ``out=`` buffers; each result is
checked against a plain numpy ``InferenceSession.run`` of the same model. Memory that a call fails to
release (a binding holding an ORT-allocated output, a DLPack capsule never freed, a plan cache
growing per call) shows up as RSS growing with the call count; steady RSS after warm-up is the pass.

Run: ``python benchmarks/soak.py [--calls 100000]``. Exits 1 if RSS grows by more than
``--max-growth-mib`` between the first checkpoint after warm-up and the end.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import onnx.parser
import onnxruntime as ort
import torch

import ortbind

MODEL = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N] x) => (int64[1, K] nz, float[N] relu) {
    zero = Constant<value = float {0.0}>()
    mask = Greater(x, zero)
    nz = NonZero(mask)
    relu = Relu(x)
}""").SerializeToString()


def rss_mib() -> float:
    """Current resident set size (Linux ``/proc``; peak RSS elsewhere)."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        pages = int(statm.read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--max-growth-mib", type=float, default=8.0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    sess = ortbind.TorchSession(MODEL, session_options=options)
    plain = ort.InferenceSession(MODEL, sess_options=options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(n, generator=generator) for n in (16, 17, 64, 255)]
    buffers = {x.numel(): torch.empty_like(x) for x in inputs}
    arrays = [x.numpy() for x in inputs]

    def ortbind_call(i: int) -> int:
        x = inputs[i % len(inputs)]
        out = sess.run({"x": x}, out={"relu": buffers[x.numel()]}) if i % 5 == 0 else sess(x=x)
        return int(out["nz"].shape[1])

    def numpy_call(i: int) -> int:
        return int(plain.run(None, {"x": arrays[i % len(arrays)]})[0].shape[1])

    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, {args.calls} calls each")
    print(f"{'calls':>8} {'RSS MiB':>9}")
    warmup = max(1, args.calls // args.checkpoints)
    step = max(1, (args.calls - warmup) // args.checkpoints)
    start = time.perf_counter()
    for i in range(warmup):
        assert ortbind_call(i) == numpy_call(i)
    done = warmup
    baseline = rss_mib()
    print(f"{done:>8} {baseline:>9.1f}  (after warm-up)")
    while done < args.calls:
        chunk = min(step, args.calls - done)
        for i in range(done, done + chunk):
            assert ortbind_call(i) == numpy_call(i)
        done += chunk
        print(f"{done:>8} {rss_mib():>9.1f}")
    growth = rss_mib() - baseline
    elapsed = time.perf_counter() - start
    print(f"RSS growth after warm-up: {growth:+.1f} MiB over {args.calls - warmup} calls ({elapsed:.0f} s)")
    if growth > args.max_growth_mib:
        print(f"FAIL: more than {args.max_growth_mib} MiB")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
