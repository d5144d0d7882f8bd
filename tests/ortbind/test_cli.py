"""The command line: ``python -m ortbind inspect model.onnx [--shape ...] [--json]``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import onnx
import onnx.parser
import pytest

import ortbind
from ortbind.__main__ import main

from ..models import with_dims
from ..reference import run_python

# y is declared, z has legacy exporter names only inference resolves, nz is data-dependent.
MODEL = """
    <ir_version: 10, opset_import: ["" : 21], producer_name: "tests", producer_version: "1.0">
    g (float[batch, 3] x, float[batch, 3] w, float[3] bias)
      => (float[batch, 3] y, float[Transposez_dim_0, Transposez_dim_1] z, int64[2, nnz] nz) {
        xw = Mul(x, w)
        y = Add(xw, bias)
        z = Transpose<perm=[1, 0]>(x)
        nz = NonZero(x)
    }
"""


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("cli") / "model.onnx"
    onnx.save(onnx.parser.parse_model(MODEL), str(path))
    return str(path)


def test_inspect_lists_inputs_and_outputs(model_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", model_path]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"model: {model_path}",
        "  producer: tests 1.0; IR 10; opsets: ai.onnx 21",
        "inputs:",
        "  x     FLOAT          float32          ['batch', 3]",
        "  w     FLOAT          float32          ['batch', 3]",
        "  bias  FLOAT          float32          [3]",
        "outputs:",
        "  y     FLOAT          float32          ['batch', 3]",
        "  z     FLOAT          float32          ['Transposez_dim_0', 'Transposez_dim_1']",
        "  nz    INT64          int64            [2, 'nnz']",
    ]


def test_inspect_with_shapes_shows_rules(model_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    # bias has fixed dims, so it needs no --shape.
    assert main(["inspect", model_path, "--shape", "x=4x3", "--shape", "w=4,3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3:] == [
        "  x     FLOAT          float32          ['batch', 3]  <- (4, 3)",
        "  w     FLOAT          float32          ['batch', 3]  <- (4, 3)",
        "  bias  FLOAT          float32          [3]",
        "outputs:",
        "  y     FLOAT          float32          ['batch', 3]  -> (4, 3)  (b) declared",
        "  z     FLOAT          float32          ['Transposez_dim_0', 'Transposez_dim_1']  -> (3, 4)  (c) inferred",
        "  nz    INT64          int64            [2, 'nnz']  -> decided by ORT at run time  (d) allocated by ORT",
    ]


def test_inspect_verbose_gives_reasons(model_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", model_path, "--shape", "x=4x3", "--shape", "w=4x3", "-v"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].endswith("(c) inferred  [dim 0 ('Transposez_dim_0') is not bound by any input]")
    assert lines[-1].endswith(
        "(d) allocated by ORT  [dim 1 ('nnz') is not bound by any input; shape inference could not tell]"
    )


def test_inspect_json(model_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", model_path, "--shape", "x=4x3", "--shape", "w=4x3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == model_path
    assert report["producer"] == "tests 1.0"
    assert report["ir_version"] == 10
    assert report["opsets"] == {"ai.onnx": 21}
    assert report["inputs"][0] == {
        "name": "x",
        "type": "tensor(float)",
        "elem_type": 1,
        "dtype": "torch.float32",
        "dims": ["batch", 3],
    }
    assert [o["name"] for o in report["outputs"]] == ["y", "z", "nz"]
    assert [o["resolved"] for o in report["outputs"]] == [
        {"shape": "(4, 3)", "rule": "(b) declared", "reason": ""},
        {"shape": "(3, 4)", "rule": "(c) inferred", "reason": "dim 0 ('Transposez_dim_0') is not bound by any input"},
        {
            "shape": "decided by ORT at run time",
            "rule": "(d) allocated by ORT",
            "reason": "dim 1 ('nnz') is not bound by any input; shape inference could not tell",
        },
    ]


def test_inspect_json_without_shapes_has_no_resolved(model_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", model_path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert all("resolved" not in row for row in report["inputs"] + report["outputs"])
    assert report["outputs"][2]["dims"] == [2, "nnz"]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("4x3", "argument --shape: '4x3': expected NAME=DIMS, e.g. sample=2x4x64x64"),
        ("=4x3", "argument --shape: '=4x3': expected NAME=DIMS, e.g. sample=2x4x64x64"),
        ("x=4y3", "argument --shape: 'x=4y3': dims must be integers joined by 'x', e.g. x=2x4x64x64"),
        ("x=4x", "argument --shape: 'x=4x': dims must be integers joined by 'x', e.g. x=2x4x64x64"),
        ("x=-4x3", "argument --shape: 'x=-4x3': dims must be sizes in [0, 2**63)"),
        (f"x={1 << 63}x3", f"argument --shape: 'x={1 << 63}x3': dims must be sizes in [0, 2**63)"),
    ],
)
def test_bad_shape_syntax_is_an_argparse_error(
    model_path: str, shape: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["inspect", model_path, "--shape", shape])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"ortbind inspect: error: {message}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shape", "q=4x3"], "--shape q: the model has no such input; its inputs are 'x', 'w', 'bias'"),
        (["--shape", "x=4x3"], "--shape: input 'w' has dims ['batch', 3]; give it too, e.g. --shape w=..."),
        (
            ["--shape", "x=4x5", "--shape", "w=4x5"],
            "input 'x': dim 1 must be 3 (declared ['batch', 3]), got shape (4, 5)",
        ),
        (
            ["--shape", "x=4", "--shape", "w=4x3"],
            "input 'x': expected 2 dims ['batch', 3], got shape (4,); reshape it to the declared rank",
        ),
        (
            ["--shape", "x=4x3", "--shape", "x=5x3"],
            "--shape x: given twice ((4, 3) and (5, 3)); give each input's shape once",
        ),
    ],
    ids=["unknown input", "missing dynamic input", "wrong fixed dim", "wrong rank", "given twice"],
)
def test_shape_errors(model_path: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", model_path, *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"ortbind: error: {message}\n"


def test_missing_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "missing.onnx")
    assert main(["inspect", path]) == 2
    assert capsys.readouterr().err == (
        f"ortbind: error: model file {path!r} does not exist; pass the path of a .onnx file\n"
    )


def test_a_directory_given_as_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.onnx"
    path.mkdir()
    assert main(["inspect", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"ortbind: error: model file {str(path)!r} is a directory; pass the path of a .onnx file\n"
    )


def test_file_that_is_not_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\xff\xfe not protobuf")
    assert main(["inspect", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"ortbind: error: model file {str(path)!r}: not an ONNX model (")


def test_python_dash_m(model_path: str) -> None:
    done = run_python("-m", "ortbind", "inspect", model_path, "--shape", "x=2x3", "--shape", "w=2x3", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "  y     FLOAT          float32          ['batch', 3]  -> (2, 3)  (b) declared" in done.stdout.splitlines()


def test_names_from_the_model_cannot_drive_the_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model names its inputs with escape sequences (clear the screen, set the window title)."""
    hostile = "x\x1b[2J\x1b]0;pwned\x07"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", [hostile], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info(hostile, onnx.TensorProto.FLOAT, ["n\x1b[31m"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n\x1b[31m"])],
    )
    model = onnx.helper.make_model(graph, producer_name="evil\x1b[5m")
    path = tmp_path / "hostile.onnx"
    onnx.save(model, str(path))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "x\\x1b[2J\\x1b]0;pwned\\x07" in out
    assert "producer: evil\\x1b[5m" in out
    assert main(["inspect", str(path), "--shape", "q=1"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b" in err


@pytest.mark.parametrize("content", [b"", b"\x08\x07"], ids=["empty", "no graph"])
def test_a_file_without_a_graph_is_not_a_model(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both parse as an ONNX ModelProto, with no graph: what TorchSession refuses, the CLI refuses too."""
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    assert main(["inspect", str(path)]) == 2
    assert capsys.readouterr().err == f"ortbind: error: model file {str(path)!r}: not an ONNX model (it has no graph)\n"


def _many_outputs(tmp_path: Path, name: str = "x") -> str:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", [name], [f"y{i}"]) for i in range(2000)],
        "g",
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N"])],
        [onnx.helper.make_tensor_value_info(f"y{i}", onnx.TensorProto.FLOAT, ["N"]) for i in range(2000)],
    )
    path = tmp_path / "many.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_output_into_a_closed_pipe_or_a_full_device(tmp_path: Path) -> None:
    """``ortbind inspect ... | head -1``, and ``> /dev/full``: a line of error at most, never a traceback."""
    path = _many_outputs(tmp_path)
    command = [sys.executable, "-m", "ortbind", "inspect", path]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline().startswith(b"model: ")
        process.stdout.close()  # the reader is gone
        err = process.stderr.read()
        assert process.wait(timeout=120) == 1
    assert err == b""
    if Path("/dev/full").exists():
        with open("/dev/full", "wb") as full:
            done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, env=env, timeout=120, check=False)
        assert done.returncode == 1
        assert done.stderr == b"ortbind: error: cannot write the output: [Errno 28] No space left on device\n"


def test_a_name_the_terminal_cannot_encode_is_escaped(tmp_path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["\u00fcn\u00ef"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("\u00fcn\u00ef", onnx.TensorProto.FLOAT, ["N"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N"])],
    )
    path = tmp_path / "names.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "PYTHONIOENCODING": "ascii"}
    done = subprocess.run(
        [sys.executable, "-m", "ortbind", "inspect", str(path)], capture_output=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert b"  \\xfcn\\xef   FLOAT" in done.stdout


def test_warnings_are_one_line_of_their_own(model_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    def warn(args: object) -> int:
        warnings.warn("something to say", ortbind.OrtbindWarning, stacklevel=1)
        return 0

    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("always")  # as outside the test suite, which makes warnings errors
        patch.setattr("ortbind.__main__._inspect", warn)
        assert main(["inspect", model_path]) == 0
    assert capsys.readouterr().err == "ortbind: warning: something to say\n"


def test_a_name_that_is_not_utf8_is_a_model_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]> g (float[N] qq) => (float[N] y) { y = Relu(qq) }'
    )
    raw = model.SerializeToString().replace(b"qq", b"\xff\xfe")  # protobuf does not check what it is given
    path = tmp_path / "names.onnx"
    path.write_bytes(raw)
    assert main(["inspect", str(path)]) == 2
    message = "model: the name b'\\xff\\xfe' in its graph is not valid UTF-8; fix the model"
    assert capsys.readouterr().err == f"ortbind: error: {message}\n"
    for source in (str(path), raw):
        with pytest.raises(ortbind.ModelError) as info:
            ortbind.TorchSession(source)
        assert (str(info.value), info.value.kind) == (message, "model")


def test_a_closed_stdout_is_no_traceback(model_path: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, "-m", "ortbind", "inspect", model_path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        timeout=120,
        check=False,
        pass_fds=(),
        preexec_fn=lambda: os.close(1),
    )
    assert done.returncode == 0
    assert done.stderr == b""


def test_inspect_plans_as_a_cpu_session_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An output over the size limit is left to ORT by a session; inspect said it would be allocated."""
    path = tmp_path / "model.onnx"
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[N] x) => (float[N] y, float[N] h) {
        y = Relu(x)
        one = Constant <value = int64[1] {1000000000000}> ()
        h = Tile(x, one)
    }"""
    path.write_bytes(with_dims(onnx.parser.parse_model(text).SerializeToString(), {"h": ["N*1000000000000"]}))
    assert main(["inspect", str(path), "--shape", "x=4", "--json"]) == 0
    rows = {row["name"]: row["resolved"] for row in json.loads(capsys.readouterr().out)["outputs"]}
    plans = ortbind.TorchSession(str(path)).resolve_shapes({"x": (4,)})
    for name, plan in plans.items():
        shape = "decided by ORT at run time" if plan.shape is None else str(plan.shape)
        assert rows[name] == {"shape": shape, "rule": plan.rule.label, "reason": plan.reason}
    assert plans["h"].rule is ortbind.Rule.ORT and "more than max_output_bytes" in plans["h"].reason
