"""The command line: ``python -m ortbind inspect model.onnx [--shape ...] [--json]``."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnx.parser
import pytest

from ortbind.__main__ import main

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
    ],
    ids=["unknown input", "missing dynamic input", "wrong fixed dim", "wrong rank"],
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
