"""Pure tests of ``ortbind._shapes``: dim expressions and the per-model shape program (no ORT)."""

from __future__ import annotations

import builtins
import sys
from collections.abc import Mapping

import pytest

from ortbind._shapes import OutputPlan, Rule, Shape, ShapeProgram, format_dims, parse_dim
from ortbind.errors import ShapeError

from ..reference import run_python

# --------------------------------------------------------------------------- parse_dim


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("7", {}, 7),
        ("batch", {"batch": 3}, 3),
        ("s0 + 2", {"s0": 3}, 5),
        ("s0 - 2", {"s0": 3}, 1),
        ("s0 * 4", {"s0": 3}, 12),
        ("s0 // 2", {"s0": 7}, 3),
        ("s0 % 3", {"s0": 7}, 1),
        ("s0 / 2", {"s0": 8}, 4),
        ("s0 ** 2", {"s0": 3}, 9),
        ("  s0  ", {"s0": 4}, 4),
        ("+3", {}, 3),
        ("-(-3)", {}, 3),
        ("-s0 + 5", {"s0": 2}, 3),
        # precedence and associativity, as in Python
        ("1 + 2 * 3", {}, 7),
        ("(1 + 2) * 3", {}, 9),
        ("10 - 4 - 3", {}, 3),
        ("64 // 4 // 2", {}, 8),
        ("2 ** 3 ** 2", {}, 512),
        ("-2 ** 2 + 10", {}, 6),
        ("10 + -7 // 2", {}, 6),
        ("10 - 7 % 3 * 2", {}, 8),
        ("2 * 3 ** 2", {}, 18),
        # what torch.onnx.export(dynamo=True) writes
        ("2*s0", {"s0": 3}, 6),
        ("(H - 1)//2 + 1", {"H": 7}, 4),
        ("2*(((height - 1)//2)) + 2", {"height": 7}, 8),
        ("s0*s1", {"s0": 3, "s1": 5}, 15),
        ("8*height", {"height": 8}, 64),
        ("(height//8)", {"height": 64}, 8),
        ("Max(1, s0)", {"s0": 0}, 1),
        ("Max(1, s0)", {"s0": 5}, 5),
        ("max(s0, s1, 2)", {"s0": 1, "s1": 6}, 6),
        ("min(s0, 4)", {"s0": 9}, 4),
        ("Min(s0, 4)", {"s0": 2}, 2),
        ("floor(s0/2)", {"s0": 7}, 3),
        ("ceiling(s0/2)", {"s0": 7}, 4),
        ("Mod(s0, 3)", {"s0": 7}, 1),
        ("PythonMod(s0 - 10, 3)", {"s0": 3}, 2),
        ("CeilToInt(IntTrueDiv(s0, 2))", {"s0": 7}, 4),
        ("FloorToInt(IntTrueDiv(s0, 2))", {"s0": 7}, 3),
        ("TruncToInt(IntTrueDiv(s0, 2))", {"s0": 7}, 3),
        ("FloorDiv(s0, 4)", {"s0": 9}, 2),
        ("CleanDiv(s0, 4)", {"s0": 8}, 2),
        ("Abs(1 - s0)", {"s0": 4}, 3),
    ],
)
def test_evaluate(text: str, env: dict[str, int], expected: int) -> None:
    assert parse_dim(text).evaluate(env) == expected


@pytest.mark.parametrize(
    ("text", "env"),
    [
        pytest.param("batch", {}, id="unbound symbol"),
        pytest.param("s0 + s1", {"s0": 1}, id="one of two symbols unbound"),
        pytest.param("s0/2", {"s0": 7}, id="inexact true division"),
        pytest.param("IntTrueDiv(s0, 2)", {"s0": 7}, id="inexact IntTrueDiv"),
        pytest.param("CleanDiv(s0, 2)", {"s0": 7}, id="inexact CleanDiv"),
        pytest.param("1 - s0", {"s0": 3}, id="negative result"),
        pytest.param("-s0", {"s0": 1}, id="negative symbol"),
        pytest.param("s0 / 0", {"s0": 3}, id="true division by zero"),
        pytest.param("s0 // 0", {"s0": 3}, id="floor division by zero"),
        pytest.param("s0 % 0", {"s0": 3}, id="modulo by zero"),
        pytest.param("s0 // (s0 - 3)", {"s0": 3}, id="division by a symbolic zero"),
        pytest.param("FloorDiv(s0, 0)", {"s0": 3}, id="FloorDiv by zero"),
        pytest.param("Mod(s0, 0)", {"s0": 3}, id="Mod by zero"),
        pytest.param("IntTrueDiv(s0, 0)", {"s0": 3}, id="IntTrueDiv by zero"),
        pytest.param("2 ** -1", {}, id="negative power"),
        pytest.param("s0 ** 300", {"s0": 2}, id="power beyond the bound"),
    ],
)
def test_evaluate_unresolvable_is_none(text: str, env: dict[str, int]) -> None:
    assert parse_dim(text).evaluate(env) is None


@pytest.mark.parametrize(
    ("text", "symbols"),
    [
        ("42", set()),
        ("batch", {"batch"}),
        ("2*(((height - 1)//2)) + 2", {"height"}),
        ("Max(s0, s1) + 8*s0", {"s0", "s1"}),
        ("CeilToInt(IntTrueDiv(s0, 2))", {"s0"}),
    ],
)
def test_symbols(text: str, symbols: set[str]) -> None:
    expr = parse_dim(text)
    assert expr.text == text
    assert expr.symbols == symbols


@pytest.mark.parametrize(
    "text",
    [
        "batch size",  # a name with a space
        "N:0",  # a TF-style tensor name
        "unk__0 x",
        "foo(1)",  # an unknown function
        "Max()",
        "floor(1, 2)",  # the wrong number of arguments
        "1 +",
        "3 3",
        "(1",
        "höhe",  # a non-ASCII name
    ],
)
def test_opaque_name_is_looked_up_by_whole_text(text: str) -> None:
    expr = parse_dim(text)
    assert expr.symbols == {text}
    assert expr.evaluate({text: 5}) == 5
    assert expr.evaluate({}) is None


def test_legacy_exporter_name_is_a_symbol() -> None:
    expr = parse_dim("Convout_sample_dim_0")
    assert expr.symbols == {"Convout_sample_dim_0"}
    assert expr.evaluate({"Convout_sample_dim_0": 9}) == 9


def test_opaque_name_does_not_bind_its_parts() -> None:
    assert parse_dim("batch size").evaluate({"batch": 2, "size": 3}) is None


def test_whole_text_binding_wins_over_evaluation() -> None:
    # An input that declares the same expression binds it as a whole.
    assert parse_dim("2*s0").evaluate({"2*s0": 5, "s0": 3}) == 5


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('x')",
        "int('7')",  # eval would give 7
        "0x10",  # eval would give 16
        "1_000",  # eval would give 1000
        "len([1, 2, 3])",  # eval would give 3
        "(lambda: 4)()",
    ],
)
def test_hostile_string_is_never_executed(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> object:
        raise AssertionError("eval/exec/compile called")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    expr = parse_dim(text)
    assert expr.symbols == {text}
    assert expr.evaluate({}) is None


@pytest.mark.parametrize(
    "text",
    [
        "(" * 5000 + "1" + ")" * 5000,
        "-" * 5000 + "1",
        "Max(" * 3000 + "1" + ")" * 3000,
        "2**" * 5000 + "1",
    ],
    ids=["parentheses", "unary minus", "calls", "powers"],
)
def test_deep_nesting_does_not_crash(text: str) -> None:
    expr = parse_dim(text)
    assert expr.evaluate({}) in (None, 1)


def test_huge_int_literal_does_not_raise() -> None:
    # Python refuses int() of a string over sys.get_int_max_str_digits() (4300) digits; such a
    # literal is never converted: it parses, and the dim cannot be known.
    text = "1" * 5000
    expr = parse_dim(text)
    assert expr.text == text
    assert expr.symbols == frozenset()
    assert expr.evaluate({}) is None
    assert expr.evaluate({text: 5}) == 5  # an input declaring the same text still binds it


def test_nested_power_is_bounded() -> None:
    # Unbounded, the result would have 64**6 = 2**36 bits and take minutes; it must give up fast.
    text = "((((((2)**64)**64)**64)**64)**64)**64"
    code = f"from ortbind._dimexpr import parse_dim; print(parse_dim({text!r}).evaluate({{}}))"
    # Importing ortbind (and so torch) alone takes seconds on a loaded machine; the guard is
    # against minutes.
    done = run_python("-c", code, timeout=60, check=True)
    assert done.stdout.strip() == "None"


def test_deep_expression_evaluated_from_a_deep_stack() -> None:
    # An expression that just parsed can overflow the stack when evaluated from deeper down (a
    # session built at top level and run inside a framework); evaluate() then answers None.
    depth = sys.getrecursionlimit()
    expr = parse_dim("-" * depth + "s0")
    while expr.symbols != {"s0"}:  # find the deepest chain that still parses here
        depth -= 25
        expr = parse_dim("-" * depth + "s0")

    def nested(levels: int) -> int | None:
        return expr.evaluate({"s0": 1}) if levels == 0 else nested(levels - 1)

    assert nested(100) in (None, 1)


# --------------------------------------------------------------------------- hostile dim strings
# Dim strings come from model files. Whatever their length or shape, parse_dim and evaluate must
# answer (a size or None), never raise, never recurse as deep as the input, never build giant ints.

LONG_SUM = "+".join(["N"] * 1500)
HUGE_SUM = "+".join(["N"] * 50_000)  # 100k characters


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        pytest.param(LONG_SUM, {"N": 3}, 4500, id="1500-term sum"),
        pytest.param(HUGE_SUM, {"N": 2}, 100_000, id="100k-char sum"),
        pytest.param(
            "100000 + " + "-".join(["N"] * 50_000) + "+" + "*".join(["N"] * 50_000),
            {"N": 1},
            100_000 + 1 - 49_999 + 1,
            id="100k-char mixed",
        ),
        pytest.param("(" * 5000 + "N" + ")" * 5000, {"N": 7}, 7, id="5000 parentheses"),
        pytest.param("(" * 50_000 + "N" + ")" * 50_000, {"N": 7}, 7, id="50000 parentheses"),
        pytest.param("1+(" * 5000 + "N" + ")" * 5000, {"N": 7}, 5007, id="right-nested sum"),
        pytest.param("-" * 10_000 + "N", {"N": 4}, 4, id="10000 unary minus"),
        pytest.param("-" * 10_001 + "N", {"N": 0}, 0, id="10001 unary minus of 0"),
        pytest.param("-" * 10_001 + "N", {"N": 4}, None, id="10001 unary minus, negative"),
        pytest.param("+-" * 5000 + "3", {}, 3, id="alternating unary"),
        pytest.param("Max(" * 3000 + "1" + ")" * 3000, {}, 1, id="3000 nested calls"),
        pytest.param("Max(" + ", ".join(["N"] * 20_000) + ", 9)", {"N": 2}, 9, id="20000 arguments"),
        pytest.param("2**" * 3 + "2", {}, 65536, id="power tower of 4"),
        pytest.param("2**" * 5000 + "1", {}, None, id="power tower of 5000"),
        pytest.param("*".join(["N"] * 40), {"N": 2}, 2**40, id="40 factors of 2"),
        pytest.param("*".join(["N"] * 40), {"N": 3}, None, id="40 factors of 3: 2**63 or more"),
        pytest.param("*".join(["N"] * 40), {"N": 128}, None, id="40 factors of 128: 280 bits"),
        pytest.param(
            "(" + "*".join(["N"] * 40) + ") // (" + "*".join(["N"] * 39) + ")", {"N": 2}, 2, id="quotient of products"
        ),
        pytest.param("1" * 400, {}, None, id="400-digit literal"),
        pytest.param("1" * 400 + " * 0", {}, None, id="400-digit literal times 0"),
        pytest.param("0" * 1000 + "7", {}, 7, id="leading zeros"),
        pytest.param("9223372036854775807", {}, 2**63 - 1, id="largest int64"),
        pytest.param("9223372036854775808", {}, None, id="2**63"),
        pytest.param("9223372036854775808 - 1", {}, None, id="2**63 literal minus 1"),
        pytest.param("9223372036854775807 + 1", {}, None, id="largest int64 plus 1"),
        pytest.param("N - 1", {"N": 2**63}, None, id="symbol bound beyond int64"),
        pytest.param("(N*N*N*N) // (N*N*N*N)", {"N": 2**60}, 1, id="240-bit intermediates"),
        pytest.param("(N*N*N*N*N) // (N*N*N*N*N)", {"N": 2**60}, None, id="300-bit intermediates"),
    ],
)
def test_hostile_dim_evaluates_exactly(text: str, env: dict[str, int], expected: int | None) -> None:
    assert parse_dim(text).evaluate(env) == expected


def test_hostile_dim_symbols() -> None:
    assert parse_dim(LONG_SUM).symbols == {"N"}
    assert parse_dim("(" * 5000 + "N" + ")" * 5000).symbols == {"N"}
    assert parse_dim("1" * 400).symbols == frozenset()
    assert parse_dim("+".join(f"s{i}" for i in range(3000))).symbols == {f"s{i}" for i in range(3000)}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("-" * 10_000, id="only minus signs"),
        pytest.param("(" * 5000 + "N" + ")" * 4999, id="unclosed parenthesis"),
        pytest.param("(" * 4999 + "N" + ")" * 5000, id="extra closing parenthesis"),
        pytest.param("N" + " N" * 50_000, id="100k-char names with spaces"),
        pytest.param("N+" * 50_000, id="100k-char sum ending in +"),
        pytest.param("x" * 99_999 + "!", id="100k-char name ending in !"),
        pytest.param("N\x00", id="NUL after a name"),
        pytest.param("\x00" * 1000, id="NUL bytes"),
        pytest.param("N + \u0663", id="Arabic-Indic digit"),
        pytest.param("\uff2e + 1", id="fullwidth N"),
        pytest.param("N\u00a0+ 1", id="no-break space"),
        pytest.param("\U0001f600", id="emoji"),
        pytest.param("\ud800", id="lone surrogate"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("()", id="empty parentheses"),
        pytest.param("Max(1,)", id="trailing comma"),
        pytest.param("(1, 2)", id="comma outside a call"),
        pytest.param("N()", id="a symbol called"),
        pytest.param("1 2", id="two literals"),
        pytest.param("* 2", id="leading binary operator"),
        pytest.param("2 ** * 3", id="operator after operator"),
    ],
)
def test_hostile_dim_is_opaque(text: str) -> None:
    expr = parse_dim(text)
    assert expr.symbols == {text}
    assert expr.evaluate({"N": 1}) is None
    assert expr.evaluate({text: 3}) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Python's integer semantics: floor division and a remainder with the divisor's sign.
        ("7 // -2 + 10", 6),
        ("-7 // 2 + 10", 6),
        ("7 % -3 + 5", 3),
        ("-7 % 3", 2),
        ("-2 ** 2", None),  # -(2**2) == -4, not (-2)**2
        ("(-2) ** 2", 4),
        ("-2 ** 2 + 5", 1),
        ("2 ** -1", None),  # 0.5 in Python: not an int
        ("0 ** -1", None),  # ZeroDivisionError in Python
        ("2 ** -1 * 2", None),
        ("2 ** 3 ** 2", 512),
        ("(2 ** 3) ** 2", 64),
        ("2 ** -2 ** 2 * 16", None),  # 2**(-(2**2)) * 16 == 1.0, a float in Python
        ("0 ** 0", 1),
        ("(-1) ** 1000001 + 1", 0),
        ("1 ** (2 ** 200)", 1),
        ("0 ** (2 ** 200)", 0),
        ("(2 ** 255) // 2 ** 250", 32),
        # Beyond Python: an intermediate value of 2**256 or more makes the dim unresolvable.
        ("(2 ** 256) // 2 ** 250", None),
        ("2 ** 255 * 2 // 4", None),
        ("2 ** 255 * 2 // 2 ** 250", None),  # 64 in Python
        ("2 ** 254 * 2 // 2 ** 250", 32),
        ("-(2 ** 255) * 2 // 2 ** 250 + 100", None),  # 36 in Python
        ("-(2 ** 255) * 2 // 2 ** 251 + 100", None),  # 68 in Python
        ("-(2 ** 254) * 2 // 2 ** 250 + 100", 68),
        ("(1/2) ** 300 * 2 ** 300", None),
        ("(1/2) ** 4 * 32", 2),
        ("2 - 3 + 4", 3),
        ("12 / 4 / 3", 1),
        ("12 // 4 * 3", 9),
        ("2 * 3 % 4", 2),
    ],
)
def test_semantics_follow_python(text: str, expected: int | None) -> None:
    assert parse_dim(text).evaluate({}) == expected


def test_whole_text_binding_outside_int64_is_unknown() -> None:
    assert parse_dim("N").evaluate({"N": 2**63}) is None
    assert parse_dim("N").evaluate({"N": -1}) is None
    assert parse_dim("N").evaluate({"N": 2**63 - 1}) == 2**63 - 1


def test_long_sum_program_builds_and_plans() -> None:
    # Once a RecursionError while the session was being built.
    program = ShapeProgram(["x"], [("N",)], ["y"], [(LONG_SUM, "N")])
    assert program.plan([(2,)]) == (OutputPlan("y", Rule.DECLARED, (3000, 2)),)


# --------------------------------------------------------------------------- ShapeProgram

UNET_INPUTS = ("sample", "timestep")
UNET_INPUT_DIMS = (("batch", 4, "H", "W"), ("batch",))


def unet_program(
    output_dims: Mapping[str, tuple[int | str | None, ...] | None],
    overrides: Mapping[str, tuple[int | str, ...]] | None = None,
    strict: bool = False,
) -> ShapeProgram:
    """Inputs shaped like a diffusers UNet's, with the outputs given."""
    return ShapeProgram(
        UNET_INPUTS,
        UNET_INPUT_DIMS,
        list(output_dims),
        list(output_dims.values()),
        overrides=overrides,
        strict=strict,
    )


class FakeInfer:
    """Shape inference that answers from a table and records every call."""

    def __init__(self, answer: Mapping[str, tuple[int | None, ...] | None]) -> None:
        self.answer = answer
        self.calls: list[dict[str, Shape]] = []

    def __call__(self, shapes: Mapping[str, Shape]) -> Mapping[str, tuple[int | None, ...] | None]:
        self.calls.append(dict(shapes))
        return self.answer


SHAPES = [(2, 4, 8, 16), (2,)]
MISMATCHED_BATCH = [(2, 4, 8, 8), (1,)]


def test_check_input_rank() -> None:
    program = unet_program({"out": ("batch",)})
    with pytest.raises(ShapeError) as info:
        program.check_input(0, (4, 8, 8))
    assert str(info.value) == (
        "input 'sample': expected 4 dims ['batch', 4, 'H', 'W'], got shape (4, 8, 8); reshape it to the declared rank"
    )


def test_check_input_scalar_rank() -> None:
    program = unet_program({"out": ("batch",)})
    with pytest.raises(ShapeError) as info:
        program.check_input(1, ())
    assert (
        str(info.value) == "input 'timestep': expected 1 dims ['batch'], got shape (); reshape it to the declared rank"
    )


def test_check_input_fixed_dim() -> None:
    program = unet_program({"out": ("batch",)})
    with pytest.raises(ShapeError) as info:
        program.check_input(0, (2, 3, 8, 8))
    assert (
        str(info.value) == "input 'sample': dim 1 must be 4 (declared ['batch', 4, 'H', 'W']), got shape (2, 3, 8, 8)"
    )


def test_check_input_accepts_any_size_for_symbols_and_unknown_rank() -> None:
    program = ShapeProgram(["a", "b"], [("n", 3), None], ["y"], [("n",)])
    program.check_input(0, (123, 3))
    program.check_input(1, (1, 2, 3, 4, 5))
    assert program.plan([(123, 3), (1, 2, 3, 4, 5)]) == (OutputPlan("y", Rule.DECLARED, (123,)),)


def test_bind_symbols() -> None:
    binding = unet_program({"out": ("batch",)}).bind_symbols(SHAPES)
    assert binding.env == {"batch": 2, "H": 8, "W": 16}
    assert binding.conflicts == {}


def test_bind_symbols_conflict() -> None:
    binding = unet_program({"out": ("batch",)}).bind_symbols(MISMATCHED_BATCH)
    assert binding.env == {"H": 8, "W": 8}
    assert binding.conflicts == {"batch": (("sample", 0, 2), ("timestep", 0, 1))}


def test_bind_symbols_skips_missing_and_wrong_rank_inputs() -> None:
    program = unet_program({"out": ("batch",)})
    assert program.bind_symbols([None, (3,)]).env == {"batch": 3}
    assert program.bind_symbols([(2, 4, 8), (3,)]).env == {"batch": 3}


def test_plan_declared_with_expressions() -> None:
    program = unet_program(
        {
            "out_sample": ("batch", 4, "H", "W"),
            "down": ("batch", 320, "(H - 1)//2 + 1", "(W - 1)//2 + 1"),
            "flat": ("batch", "8*H*W"),
            "fixed": (1, 77),
        }
    )
    infer = FakeInfer({})
    plans = program.plan(SHAPES, infer)
    assert plans == (
        OutputPlan("out_sample", Rule.DECLARED, (2, 4, 8, 16)),
        OutputPlan("down", Rule.DECLARED, (2, 320, 4, 8)),
        OutputPlan("flat", Rule.DECLARED, (2, 1024)),
        OutputPlan("fixed", Rule.DECLARED, (1, 77)),
    )
    assert infer.calls == []


def test_plan_override_beats_declared() -> None:
    program = unet_program({"out_sample": ("batch", 4, "H", "W")}, overrides={"out_sample": ("batch", 4, "2*H", 16)})
    assert program.plan(SHAPES) == (OutputPlan("out_sample", Rule.OVERRIDE, (2, 4, 16, 16)),)


def test_plan_override_beats_inference() -> None:
    infer = FakeInfer({"out": (7,)})
    program = unet_program({"out": ("unk__0",)}, overrides={"out": ("H",)})
    assert program.plan(SHAPES, infer) == (OutputPlan("out", Rule.OVERRIDE, (8,)),)
    assert infer.calls == []


def test_plan_infers_only_what_is_unresolved() -> None:
    program = unet_program({"declared": ("batch", 4), "legacy": ("Convout_dim_0", "Convout_dim_1")})
    infer = FakeInfer({"declared": (99, 99), "legacy": (2, 320)})
    plans = program.plan(SHAPES, infer)
    assert plans == (
        OutputPlan("declared", Rule.DECLARED, (2, 4)),
        OutputPlan("legacy", Rule.INFERRED, (2, 320), "dim 0 ('Convout_dim_0') is not bound by any input"),
    )
    assert infer.calls == [{"sample": (2, 4, 8, 16), "timestep": (2,)}]


def test_plan_calls_infer_once_per_call() -> None:
    program = unet_program({"a": ("unk__0",), "b": (None,), "c": None})
    infer = FakeInfer({"a": (1,), "b": (2,), "c": (3, 3)})
    first = program.plan(SHAPES, infer)
    second = program.plan(SHAPES, infer)
    assert first == second
    assert [p.shape for p in first] == [(1,), (2,), (3, 3)]
    assert len(infer.calls) == 2


def test_plan_without_infer_goes_to_ort() -> None:
    program = unet_program({"out": ("batch", "nnz")})
    assert program.plan(SHAPES) == (OutputPlan("out", Rule.ORT, None, "dim 1 ('nnz') is not bound by any input"),)


@pytest.mark.parametrize(
    ("dims", "inferred", "reason"),
    [
        (("batch", "nnz"), (2, None), "dim 1 ('nnz') is not bound by any input; shape inference could not tell"),
        (("batch", None), None, "dim 1 is undeclared; shape inference could not tell"),
        (None, (None, 3), "declared rank unknown; shape inference could not tell"),
    ],
)
def test_plan_inference_unknown_goes_to_ort(
    dims: tuple[int | str | None, ...] | None, inferred: tuple[int | None, ...] | None, reason: str
) -> None:
    infer = FakeInfer({"out": inferred})
    assert unet_program({"out": dims}).plan(SHAPES, infer) == (OutputPlan("out", Rule.ORT, None, reason),)
    assert len(infer.calls) == 1


def test_plan_inference_without_the_output_goes_to_ort() -> None:
    plans = unet_program({"out": ("nnz",)}).plan(SHAPES, FakeInfer({}))
    assert plans == (
        OutputPlan("out", Rule.ORT, None, "dim 0 ('nnz') is not bound by any input; shape inference could not tell"),
    )


def test_conflicting_symbol_sends_its_outputs_to_inference() -> None:
    program = unet_program({"out_sample": ("batch", 4, "H", "W"), "size": ("H", "W")})
    infer = FakeInfer({"out_sample": (2, 4, 8, 8), "size": (99, 99)})
    plans = program.plan(MISMATCHED_BATCH, infer)
    assert plans == (
        OutputPlan(
            "out_sample", Rule.INFERRED, (2, 4, 8, 8), "dim 0 ('batch') uses 'batch', which inputs bind to [1, 2]"
        ),
        OutputPlan("size", Rule.DECLARED, (8, 8)),
    )
    assert infer.calls == [{"sample": (2, 4, 8, 8), "timestep": (1,)}]


def test_conflicting_symbol_in_an_expression_goes_to_inference() -> None:
    program = unet_program({"out": ("2*batch",)})
    plans = program.plan(MISMATCHED_BATCH, FakeInfer({"out": (4,)}))
    assert plans == (
        OutputPlan("out", Rule.INFERRED, (4,), "dim 0 ('2*batch') uses 'batch', which inputs bind to [1, 2]"),
    )


def test_strict_rejects_conflicting_symbol() -> None:
    infer = FakeInfer({})
    program = unet_program({"out_sample": ("batch", 4, "H", "W")}, strict=True)
    with pytest.raises(ShapeError) as info:
        program.plan(MISMATCHED_BATCH, infer)
    assert str(info.value) == (
        "input 'timestep': dim 0 ('batch') is 1, but input 'sample' dim 0 binds 'batch' to 2; "
        "make them equal, or create the session with strict=False"
    )
    assert infer.calls == []


def test_strict_accepts_agreeing_symbols() -> None:
    program = unet_program({"out_sample": ("batch", 4, "H", "W")}, strict=True)
    assert program.plan(SHAPES) == (OutputPlan("out_sample", Rule.DECLARED, (2, 4, 8, 16)),)


def test_override_with_conflicting_symbol_cannot_be_evaluated() -> None:
    program = unet_program({"out": (None,)}, overrides={"out": ("batch",)})
    with pytest.raises(ShapeError) as info:
        program.plan(MISMATCHED_BATCH)
    assert str(info.value) == (
        "output_shapes['out']: cannot evaluate it: dim 0 ('batch') uses 'batch', which inputs bind to [1, 2]"
    )


def test_override_with_unfed_input_cannot_be_evaluated() -> None:
    program = unet_program({"out": (None,)}, overrides={"out": ("H",)})
    with pytest.raises(ShapeError) as info:
        program.plan([None, (2,)])
    assert str(info.value) == "output_shapes['out']: cannot evaluate it: dim 0 ('H') is not bound by any input"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"nope": (1,)},
            "output_shapes['nope']: the model has no output 'nope'; its outputs are 'out', 'aux'",
        ),
        (
            {"out": ("batch", "M")},
            "output_shapes['out']: symbol 'M' is not a dim of any input; the inputs declare 'H', 'W', 'batch'",
        ),
        (
            {"out": ("2*M + K",)},
            "output_shapes['out']: symbol 'K' is not a dim of any input; the inputs declare 'H', 'W', 'batch'",
        ),
        ({"out": ("batch", -1)}, "output_shapes['out']: dim -1 is negative"),
        (
            {"out": ("batch", 2.0)},
            "output_shapes['out']: dim 2.0 is neither an int nor a symbol string; pass e.g. ('batch', 3, 64, 64)",
        ),
        (
            {"out": ("batch", True)},
            "output_shapes['out']: dim True is neither an int nor a symbol string; pass e.g. ('batch', 3, 64, 64)",
        ),
        (
            {"out": (None,)},
            "output_shapes['out']: dim None is neither an int nor a symbol string; pass e.g. ('batch', 3, 64, 64)",
        ),
        (
            {"out": "2x4"},
            "output_shapes['out']: expected a sequence of ints or symbol strings, got str; "
            "pass e.g. ('batch', 3, 64, 64)",
        ),
        (
            {"out": 4},
            "output_shapes['out']: expected a sequence of ints or symbol strings, got int; "
            "pass e.g. ('batch', 3, 64, 64)",
        ),
    ],
    ids=[
        "unknown output",
        "unknown symbol",
        "unknown symbol in expression",
        "negative",
        "float",
        "bool",
        "None",
        "string",
        "int",
    ],
)
def test_override_validation(overrides: Mapping[str, object], message: str) -> None:
    with pytest.raises(ShapeError) as info:
        unet_program({"out": ("batch",), "aux": (1,)}, overrides=overrides)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_override_without_input_symbols() -> None:
    with pytest.raises(ShapeError) as info:
        ShapeProgram(["x"], [(2, 3)], ["y"], [None], overrides={"y": ("n",)})
    assert str(info.value) == "output_shapes['y']: symbol 'n' is not a dim of any input; the inputs declare none"


def test_override_may_name_an_opaque_input_symbol() -> None:
    program = ShapeProgram(["x"], [("batch size", 3)], ["y"], [None], overrides={"y": ("batch size", 0)})
    assert program.plan([(5, 3)]) == (OutputPlan("y", Rule.OVERRIDE, (5, 0)),)


@pytest.mark.parametrize(
    ("rule", "label"),
    [
        (Rule.OVERRIDE, "(a) override"),
        (Rule.DECLARED, "(b) declared"),
        (Rule.INFERRED, "(c) inferred"),
        (Rule.ORT, "(d) allocated by ORT"),
    ],
)
def test_rule_label(rule: Rule, label: str) -> None:
    assert rule.label == label


@pytest.mark.parametrize(
    ("dims", "text"),
    [(None, "?"), ((), "[]"), (("batch", 3, None, "2*s0"), "['batch', 3, ?, '2*s0']")],
)
def test_format_dims(dims: tuple[int | str | None, ...] | None, text: str) -> None:
    assert format_dims(dims) == text


# --------------------------------------------------------------------------- int64 bounds in plans


def test_plan_large_int64_dim_is_declared() -> None:
    program = ShapeProgram(["x"], [("N",)], ["y"], [("N*1000000000000", "N")])
    assert program.plan([(9_000_000,)]) == (OutputPlan("y", Rule.DECLARED, (9_000_000_000_000_000_000, 9_000_000)),)


def test_plan_dim_beyond_int64_goes_to_inference() -> None:
    program = ShapeProgram(["x"], [("N",)], ["y"], [("N*1000000000000", "N")])
    infer = FakeInfer({"y": (5, 10_000_000)})
    assert program.plan([(10_000_000,)], infer) == (
        OutputPlan(
            "y",
            Rule.INFERRED,
            (5, 10_000_000),
            "dim 0 ('N*1000000000000') is not an integer in [0, 2**63) with N=10000000",
        ),
    )


def test_plan_negative_expression_goes_to_ort() -> None:
    program = ShapeProgram(["x"], [("N",)], ["y"], [("N - 10",)])
    assert program.plan([(3,)]) == (
        OutputPlan("y", Rule.ORT, None, "dim 0 ('N - 10') is not an integer in [0, 2**63) with N=3"),
    )


def test_plan_negative_declared_int_goes_to_ort() -> None:
    program = ShapeProgram(["x"], [("N",)], ["y"], [(-1, "N")])
    assert program.plan([(3,)]) == (OutputPlan("y", Rule.ORT, None, "dim 0 is declared -1, which is not a size"),)


@pytest.mark.parametrize("inferred", [(-1, 3), (2**63, 3)], ids=["negative", "2**63"])
def test_plan_inferred_dim_outside_int64_goes_to_ort(inferred: tuple[int, ...]) -> None:
    program = ShapeProgram(["x"], [("N",)], ["y"], [("M", "N")])
    assert program.plan([(3,)], FakeInfer({"y": inferred})) == (
        OutputPlan("y", Rule.ORT, None, "dim 0 ('M') is not bound by any input; shape inference could not tell"),
    )


def test_override_int_beyond_int64_is_rejected() -> None:
    with pytest.raises(ShapeError) as info:
        ShapeProgram(["x"], [("N",)], ["y"], [None], overrides={"y": (2**63,)})
    assert str(info.value) == (
        "output_shapes['y']: dim 9223372036854775808 does not fit in int64; give a size below 2**63"
    )


def test_override_expression_beyond_int64_cannot_be_evaluated() -> None:
    program = ShapeProgram(["x"], [("N",)], ["y"], [None], overrides={"y": ("N**40",)})
    assert program.plan([(2,)]) == (OutputPlan("y", Rule.OVERRIDE, (2**40,)),)
    with pytest.raises(ShapeError) as info:
        program.plan([(3,)])
    assert str(info.value) == (
        "output_shapes['y']: cannot evaluate it: dim 0 ('N**40') is not an integer in [0, 2**63) with N=3"
    )
