"""Symbolic dims: parse them without ``eval``, bind them from input shapes, resolve output shapes.

Declared dims come in three forms: ints, symbol names (``"batch"``), and the arithmetic that
``torch.onnx.export(dynamo=True)`` writes (``"2*s0"``, ``"(height - 1)//2 + 1"``, ``"8*height"``).
An expression is compiled without recursion into a flat postfix program that is evaluated with
exact, bounded rational arithmetic; a string that does not parse is an opaque symbol compared by
name, which is how legacy exporters' names (``"Convout_sample_dim_0"``) and names with spaces work.
Dim strings come from model files, which may be hostile: parsing and evaluating never raise, take
time linear in the text, and never build a value of more than a few hundred bits.

Everything here is pure: no ONNX Runtime, no torch, so it is tested on its own.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Final, Protocol

from .errors import ShapeError

__all__ = [
    "DimExpr",
    "InputShapes",
    "OutputPlan",
    "Rule",
    "ShapeProgram",
    "SymbolBinding",
    "format_dims",
    "parse_dim",
]

Dim = int | str | None
"""A declared dim: a size, a symbol or expression, or ``None`` when the model says nothing."""

Shape = tuple[int, ...]
InputShapes = Sequence[Shape | None]
"""Actual input shapes in the model's input order; ``None`` for an input that was not fed."""


class Rule(enum.Enum):
    """How an output's shape was decided, in the order the rules are tried."""

    OVERRIDE = "a"
    """``output_shapes=`` given at construction or for the call."""
    DECLARED = "b"
    """The model's declared output dims, evaluated with symbols bound from the inputs."""
    INFERRED = "c"
    """ONNX shape inference on the concrete input shapes, cached per input signature."""
    ORT = "d"
    """Unknown ahead of the run: ONNX Runtime allocates the output and hands it over via DLPack."""

    @property
    def label(self) -> str:
        """A short label for reports, e.g. ``"(b) declared"``."""
        return f"({self.value}) {_RULE_WORDS[self]}"


_RULE_WORDS: Final = {
    Rule.OVERRIDE: "override",
    Rule.DECLARED: "declared",
    Rule.INFERRED: "inferred",
    Rule.ORT: "allocated by ORT",
}


# --------------------------------------------------------------------------- expressions
#
# A dim string is compiled in one left-to-right pass (shunting-yard) into a flat postfix program,
# and the program is run on an explicit value stack. Neither step recurses, so no input, however
# deep its parentheses or long its chains of operators, can reach Python's recursion limit, and
# both steps take time linear in the length of the text: every token is pushed and popped at most
# once, and every operation works on values of at most a few hundred bits (see _MAX_BITS).

_SPACE: Final = " \t\n\r\f\v"
_TOKEN: Final = re.compile(
    r"[ \t\n\r\f\v]*(?:"
    r"([0-9]+)"  # 1: an integer literal
    r"|([A-Za-z_][A-Za-z0-9_]*)[ \t\n\r\f\v]*\("  # 2: a function name and its "("
    r"|([A-Za-z_][A-Za-z0-9_]*)"  # 3: a symbol
    r"|(//|\*\*|[-+*/%(),])"  # 4: an operator or punctuation
    r"|(.)"  # 5: anything else, a syntax error; so matches follow each other without gaps
    r")",
    re.DOTALL,
)

_MAX_DIM: Final = 1 << 63
"""Sizes are int64: a dim evaluates to an int in ``[0, 2**63)`` or to ``None``."""

_MAX_BITS: Final = 256
"""Every intermediate value must have a numerator and denominator below ``2**_MAX_BITS`` in
magnitude (literals and bound symbols: within int64), or the dim is unresolvable. No real dim
comes near it, and it keeps every operation cheap whatever a model file declares: operands of at
most _MAX_BITS bits give results of at most 2 * _MAX_BITS + 1, and ``**`` is refused up front."""

_BOUND: Final = 1 << _MAX_BITS

_MAX_LITERAL_DIGITS: Final = len(str(_MAX_DIM - 1))
"""A literal with more significant digits than the largest int64 is never converted by ``int()``,
so Python's limit on converting long digit strings cannot be reached."""

_Value = int | Fraction
"""An exact value: an ``int`` whenever it is whole, a ``Fraction`` only while it is not."""


class _SyntaxError(Exception):
    """The text is not an expression: it becomes an opaque symbol."""


class _Op(enum.Enum):
    ADD = "+"
    SUB = "-"
    MUL = "*"
    TRUE_DIV = "/"
    FLOOR_DIV = "//"
    MOD = "%"
    POW = "**"
    NEG = "neg"
    OUT_OF_RANGE = "2**63 or more"  # stands for such a literal: the dim parses but is unresolvable


_BINARY_OPS: Final[Mapping[str, _Op]] = {
    "+": _Op.ADD,
    "-": _Op.SUB,
    "*": _Op.MUL,
    "/": _Op.TRUE_DIV,
    "//": _Op.FLOOR_DIV,
    "%": _Op.MOD,
    "**": _Op.POW,
}

# Python's precedence: ``-2**2 == -4`` (unary minus below ``**``), ``-2*3 == (-2)*3`` (above ``*``).
_PRECEDENCE: Final[Mapping[_Op, int]] = {
    _Op.ADD: 1,
    _Op.SUB: 1,
    _Op.MUL: 2,
    _Op.TRUE_DIV: 2,
    _Op.FLOOR_DIV: 2,
    _Op.MOD: 2,
    _Op.NEG: 3,
    _Op.POW: 4,
}


@dataclass(frozen=True)
class _Call:
    function: str
    argc: int


@dataclass
class _Frame:
    """An open parenthesis on the operator stack; ``function`` is set for a call's."""

    function: str | None
    commas: int = 0


_PAREN: Final = _Frame(None)
"""Every plain parenthesis shares this frame: a comma inside one is a syntax error, so it never changes."""

_Instr = int | str | _Op | _Call
"""A postfix instruction: an int literal, a symbol name, an operator, or a call of ``argc`` values."""


def _bounded(value: _Value) -> _Value | None:
    if isinstance(value, int):
        return value if -_BOUND < value < _BOUND else None
    if value.denominator == 1:
        return _bounded(value.numerator)
    if -_BOUND < value.numerator < _BOUND and value.denominator < _BOUND:
        return value
    return None


def _true_div(a: _Value, b: _Value) -> _Value | None:
    if b == 0:
        return None
    if isinstance(a, int) and isinstance(b, int):
        return a // b if a % b == 0 else Fraction(a, b)
    return Fraction(a) / b


def _clean_div(a: _Value, b: _Value) -> _Value | None:
    q = _true_div(a, b)
    return q if q is None or isinstance(q, int) or q.denominator == 1 else None


def _floor_div(a: _Value, b: _Value) -> _Value | None:
    return None if b == 0 else a // b


def _mod(a: _Value, b: _Value) -> _Value | None:
    return None if b == 0 else a % b


def _pow_bits(part: int, exponent: int) -> int:
    """A lower bound on the bit length of ``part ** exponent``, for ``|part| >= 2``."""
    return (abs(part).bit_length() - 1) * exponent + 1


def _pow(a: _Value, b: _Value) -> _Value | None:
    # A negative or fractional exponent gives no int in Python (2**-1 is 0.5): unresolvable.
    if not isinstance(b, int) or b < 0:
        return None
    if isinstance(a, int) and -1 <= a <= 1:
        return a**b if a != -1 else (1 if b % 2 == 0 else -1)
    # Refuse before computing: ``2**2**64`` must not be attempted. Past this check both operands
    # are small enough that the result has at most 2 * _MAX_BITS bits; _bounded then decides.
    parts = (a,) if isinstance(a, int) else (a.numerator, a.denominator)
    if any(abs(p) >= 2 and _pow_bits(p, b) > _MAX_BITS for p in parts):
        return None
    return a**b


def _max(*args: _Value) -> _Value | None:
    return max(args)


def _min(*args: _Value) -> _Value | None:
    return min(args)


def _abs(x: _Value) -> _Value | None:
    return -x if x < 0 else x


def _floor(x: _Value) -> _Value | None:
    return math.floor(x)


def _ceil(x: _Value) -> _Value | None:
    return math.ceil(x)


def _trunc(x: _Value) -> _Value | None:
    return math.trunc(x)


# Functions sympy and torch's exporters print into dims, keyed by lower-cased name, with their
# number of arguments (-1: one or more).
_FUNCTIONS: Final[Mapping[str, tuple[int, Callable[..., _Value | None]]]] = {
    "max": (-1, _max),
    "min": (-1, _min),
    "abs": (1, _abs),
    "floor": (1, _floor),
    "floortoint": (1, _floor),
    "ceiling": (1, _ceil),
    "ceil": (1, _ceil),
    "ceiltoint": (1, _ceil),
    "trunctoint": (1, _trunc),
    "mod": (2, _mod),
    "pythonmod": (2, _mod),
    "floordiv": (2, _floor_div),
    "cleandiv": (2, _clean_div),
    "inttruediv": (2, _true_div),
    "truediv": (2, _true_div),
}

_BINARY: Final[Mapping[_Op, Callable[[_Value, _Value], _Value | None]]] = {
    _Op.ADD: lambda a, b: a + b,
    _Op.SUB: lambda a, b: a - b,
    _Op.MUL: lambda a, b: a * b,
    _Op.TRUE_DIV: _true_div,
    _Op.FLOOR_DIV: _floor_div,
    _Op.MOD: _mod,
    _Op.POW: _pow,
}


def _literal(digits: str) -> int | _Op:
    significant = digits.lstrip("0")
    if len(significant) > _MAX_LITERAL_DIGITS:
        return _Op.OUT_OF_RANGE
    value = int(significant or "0")
    return value if value < _MAX_DIM else _Op.OUT_OF_RANGE


def _pop_operators(stack: list[_Op | _Frame], program: list[_Instr]) -> _Frame | None:
    """Move operators from ``stack`` to ``program`` down to the innermost open parenthesis."""
    while stack:
        top = stack[-1]
        if isinstance(top, _Frame):
            return top
        program.append(top)
        stack.pop()
    return None


def _compile_expr(text: str) -> tuple[tuple[_Instr, ...], frozenset[str]]:
    """Shunting-yard: ``text`` -> (postfix program, symbol names). Raises ``_SyntaxError``."""
    program: list[_Instr] = []
    stack: list[_Op | _Frame] = []
    symbols: set[str] = set()
    expect_operand = True  # False right after an operand, i.e. when a binary operator may come
    for m in _TOKEN.finditer(text.rstrip(_SPACE)):
        number, function, name, op, other = m.groups()
        pos = m.end()
        if other is not None:
            raise _SyntaxError(pos)
        if number is not None or name is not None or function is not None:
            if not expect_operand:
                raise _SyntaxError(pos)
            if number is not None:
                program.append(_literal(number))
                expect_operand = False
            elif name is not None:
                program.append(name)
                symbols.add(name)
                expect_operand = False
            else:
                if function.lower() not in _FUNCTIONS:
                    raise _SyntaxError(pos)
                stack.append(_Frame(function.lower()))
            continue
        if op == "(":
            if not expect_operand:
                raise _SyntaxError(pos)
            stack.append(_PAREN)
            continue
        if op in (")", ","):
            if expect_operand:  # "()", "f()", "(1 +)", "f(1,)"
                raise _SyntaxError(pos)
            frame = _pop_operators(stack, program)
            if frame is None:
                raise _SyntaxError(pos)
            if op == ",":
                if frame.function is None:
                    raise _SyntaxError(pos)
                frame.commas += 1
                expect_operand = True
                continue
            stack.pop()
            if frame.function is not None:
                arity = _FUNCTIONS[frame.function][0]
                if arity >= 0 and frame.commas + 1 != arity:
                    raise _SyntaxError(pos)
                program.append(_Call(frame.function, frame.commas + 1))
            expect_operand = False
        elif expect_operand:
            if op == "-":
                stack.append(_Op.NEG)  # prefix: binds its operand later, so nothing is popped
            elif op != "+":  # unary plus changes nothing, wherever it stands
                raise _SyntaxError(pos)
        else:
            binary = _BINARY_OPS[op]
            level = _PRECEDENCE[binary]
            right_assoc = binary is _Op.POW
            while stack:
                top = stack[-1]
                if not isinstance(top, _Op):
                    break
                top_level = _PRECEDENCE[top]
                if top_level < level or (top_level == level and right_assoc):
                    break
                program.append(top)
                stack.pop()
            stack.append(binary)
            expect_operand = True
    if expect_operand:  # empty, or ends in an operator
        raise _SyntaxError("end")
    while stack:
        top = stack.pop()
        if isinstance(top, _Frame):  # an unclosed parenthesis
            raise _SyntaxError("end")
        program.append(top)
    return tuple(program), frozenset(symbols)


def _run(program: Sequence[_Instr], env: Mapping[str, int]) -> _Value | None:
    """Run a postfix program; ``None`` as soon as any value is unknown or out of bounds."""
    values: list[_Value] = []
    for instr in program:
        result: _Value | None
        if isinstance(instr, int):
            result = instr
        elif isinstance(instr, str):
            bound = env.get(instr)
            if not isinstance(bound, int) or not -_MAX_DIM <= bound < _MAX_DIM:
                return None
            result = bound
        elif isinstance(instr, _Call):
            args = values[len(values) - instr.argc :]
            del values[len(values) - instr.argc :]
            result = _FUNCTIONS[instr.function][1](*args)
        elif instr is _Op.NEG:
            result = -values.pop()
        elif instr is _Op.OUT_OF_RANGE:
            return None
        else:
            b = values.pop()
            result = _BINARY[instr](values.pop(), b)
        if result is None or (result := _bounded(result)) is None:
            return None
        values.append(result)
    return values[-1]


@dataclass(frozen=True)
class DimExpr:
    """A declared dim string, compiled once.

    Attributes:
        text: The dim exactly as the model declares it.
        symbols: The names the dim depends on. For an opaque name this is the whole text.
    """

    text: str
    symbols: frozenset[str]
    _program: tuple[_Instr, ...] | None  # None: opaque, looked up by its whole text

    def evaluate(self, env: Mapping[str, int]) -> int | None:
        """The dim's size under ``env`` (symbol -> size), or ``None`` if it cannot be known.

        A dim whose whole text is bound in ``env`` (an input declared the same string) takes that
        size first, so any name works as a symbol, whatever characters it holds.

        Never raises. The size is ``None`` unless it is an integer in ``[0, 2**63)``, and also
        when a symbol is unbound (or bound outside int64), a division or modulo is by zero, an
        exponent is negative or fractional, a literal is 2**63 or more, or any intermediate value
        reaches ``2**_MAX_BITS`` (where Python's unbounded ints would carry on). Otherwise the
        result is exactly what Python's integer arithmetic gives for the same expression (``/`` and
        the sympy functions are evaluated with exact fractions).
        """
        if self.text in env:
            value: _Value | None = env[self.text]
        elif self._program is None:
            return None
        else:
            value = _run(self._program, env)
        if isinstance(value, int) and 0 <= value < _MAX_DIM:
            return int(value)
        return None


def parse_dim(text: str) -> DimExpr:
    """Compile a declared dim string; never raises and never calls ``eval``.

    Any text that is not an expression of integer literals, ASCII names, ``+ - * / // % **``,
    parentheses and the known functions is an opaque symbol, compared by its whole text. A
    literal of 2**63 or more still parses, but makes the dim evaluate to ``None``. Time and memory
    are linear in the length of the text.

    >>> parse_dim("2*((H - 1)//2) + 2").evaluate({"H": 7})
    8
    >>> parse_dim("batch size").evaluate({"batch size": 3})
    3
    """
    try:
        program, symbols = _compile_expr(text)
    except _SyntaxError:
        return DimExpr(text, frozenset((text,)), None)
    return DimExpr(text, symbols, program)


def format_dims(dims: Sequence[Dim] | None) -> str:
    """Dims as a model would print them: ``['batch', 3, 'H', 'W']``, ``?`` for unknown rank."""
    if dims is None:
        return "?"
    return "[" + ", ".join("?" if d is None else repr(d) for d in dims) + "]"


def format_shape(shape: Sequence[int]) -> str:
    """A shape as a tuple literal: ``(2, 3)``, ``(5,)``, ``()``."""
    return repr(tuple(shape))


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class SymbolBinding:
    """Symbols bound from actual input shapes.

    Attributes:
        env: Symbol -> size, for symbols that every input agrees on.
        conflicts: Symbol -> the distinct (input name, dim index, size) that disagree.
    """

    env: Mapping[str, int]
    conflicts: Mapping[str, tuple[tuple[str, int, int], ...]]


@dataclass(frozen=True)
class OutputPlan:
    """How one output is allocated for one input signature.

    Attributes:
        name: The output name.
        rule: Which rule decided the shape.
        shape: The concrete shape, or ``None`` when ORT allocates (rule d).
        reason: Why the earlier rules did not apply (empty when rule a or b applied).
    """

    name: str
    rule: Rule
    shape: Shape | None
    reason: str = ""


InferFn = Callable[[Mapping[str, Shape]], Mapping[str, tuple[int | None, ...] | None]]
"""Shape inference: concrete input shapes by name -> output dims by name (``None`` = unknown)."""


class Declared(Protocol):
    """What :meth:`ShapeProgram.for_specs` reads of an input or output spec."""

    @property
    def name(self) -> str: ...

    @property
    def dims(self) -> tuple[Dim, ...] | None: ...


def _compile(dims: Sequence[Dim] | None) -> tuple[int | DimExpr | None, ...] | None:
    if dims is None:
        return None
    return tuple(parse_dim(d) if isinstance(d, str) else d for d in dims)


class ShapeProgram:
    """The shape logic of one model, compiled once: input checks and output-shape resolution.

    Args:
        input_names: The model's inputs, in order.
        input_dims: Their declared dims (``None`` where the rank is unknown).
        output_names: The model's outputs, in order.
        output_dims: Their declared dims.
        overrides: Output name -> dims given at construction (``output_shapes=``); ints, symbols
            or expressions over input symbols. These take precedence over declared dims.
        strict: Reject a symbol that inputs bind to different sizes instead of working around it.
    """

    def __init__(
        self,
        input_names: Sequence[str],
        input_dims: Sequence[Sequence[Dim] | None],
        output_names: Sequence[str],
        output_dims: Sequence[Sequence[Dim] | None],
        overrides: Mapping[str, Sequence[int | str]] | None = None,
        strict: bool = False,
    ) -> None:
        self.input_names = tuple(input_names)
        self.input_dims = tuple(None if d is None else tuple(d) for d in input_dims)
        self.output_names = tuple(output_names)
        self.output_dims = tuple(None if d is None else tuple(d) for d in output_dims)
        self.strict = strict
        self._input_exprs = tuple(_compile(d) for d in self.input_dims)
        self._output_exprs = tuple(_compile(d) for d in self.output_dims)
        self.input_symbols = frozenset(d for dims in self.input_dims if dims for d in dims if isinstance(d, str))
        self._overrides: dict[str, tuple[int | DimExpr | None, ...]] = {}
        for name, dims in (overrides or {}).items():
            self._overrides[name] = self._check_override(name, dims)

    @classmethod
    def for_specs(
        cls,
        inputs: Sequence[Declared],
        outputs: Sequence[Declared],
        overrides: Mapping[str, Sequence[int | str]] | None = None,
        strict: bool = False,
    ) -> ShapeProgram:
        """The program for a model's declared inputs and outputs (``TensorSpec`` objects)."""
        return cls(
            [s.name for s in inputs],
            [s.dims for s in inputs],
            [s.name for s in outputs],
            [s.dims for s in outputs],
            overrides=overrides,
            strict=strict,
        )

    def _check_override(self, name: str, dims: Sequence[int | str]) -> tuple[int | DimExpr | None, ...]:
        if name not in self.output_names:
            raise ShapeError(
                f"output_shapes[{name!r}]: the model has no output {name!r}; "
                f"its outputs are {_quoted(self.output_names)}"
            )
        if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
            raise ShapeError(
                f"output_shapes[{name!r}]: expected a sequence of ints or symbol strings, "
                f"got {type(dims).__name__}; pass e.g. ('batch', 3, 64, 64)"
            )
        compiled: list[int | DimExpr | None] = []
        for dim in dims:
            if isinstance(dim, bool) or not isinstance(dim, (int, str)):
                raise ShapeError(
                    f"output_shapes[{name!r}]: dim {dim!r} is neither an int nor a symbol string; "
                    f"pass e.g. ('batch', 3, 64, 64)"
                )
            if isinstance(dim, int):
                if dim < 0:
                    raise ShapeError(f"output_shapes[{name!r}]: dim {dim} is negative")
                if dim >= _MAX_DIM:
                    raise ShapeError(
                        f"output_shapes[{name!r}]: dim {dim} does not fit in int64; give a size below 2**63"
                    )
                compiled.append(dim)
                continue
            expr = parse_dim(dim)
            unknown = sorted(s for s in expr.symbols if s not in self.input_symbols)
            if dim not in self.input_symbols and unknown:
                known = _quoted(sorted(self.input_symbols)) if self.input_symbols else "none"
                raise ShapeError(
                    f"output_shapes[{name!r}]: symbol {unknown[0]!r} is not a dim of any input; "
                    f"the inputs declare {known}"
                )
            compiled.append(expr)
        return tuple(compiled)

    # -- inputs

    def check_input(self, index: int, shape: Shape) -> None:
        """Raise :class:`ShapeError` if ``shape`` breaks the rank or a fixed dim of input ``index``."""
        dims = self.input_dims[index]
        if dims is None:
            return
        name = self.input_names[index]
        if len(shape) != len(dims):
            raise ShapeError(
                f"input {name!r}: expected {len(dims)} dims {format_dims(dims)}, "
                f"got shape {format_shape(shape)}; reshape it to the declared rank"
            )
        for axis, (declared, actual) in enumerate(zip(dims, shape)):
            if isinstance(declared, int) and declared != actual:
                raise ShapeError(
                    f"input {name!r}: dim {axis} must be {declared} (declared {format_dims(dims)}), "
                    f"got shape {format_shape(shape)}"
                )

    def bind_symbols(self, shapes: InputShapes) -> SymbolBinding:
        """Bind every symbol that an input declares to the size it has in ``shapes``."""
        seen: dict[str, list[tuple[str, int, int]]] = {}
        for name, dims, shape in zip(self.input_names, self.input_dims, shapes):
            if dims is None or shape is None or len(dims) != len(shape):
                continue
            for axis, (declared, actual) in enumerate(zip(dims, shape)):
                if isinstance(declared, str):
                    seen.setdefault(declared, []).append((name, axis, actual))
        env: dict[str, int] = {}
        conflicts: dict[str, tuple[tuple[str, int, int], ...]] = {}
        for symbol, uses in seen.items():
            sizes = {size for _, _, size in uses}
            if len(sizes) == 1:
                env[symbol] = uses[0][2]
            else:
                conflicts[symbol] = tuple(uses)
        return SymbolBinding(env, conflicts)

    def conflict_message(self, symbol: str, uses: Sequence[tuple[str, int, int]]) -> str:
        """The strict-mode error for a symbol that inputs bind to different sizes."""
        first = uses[0]
        other = next(u for u in uses if u[2] != first[2])
        return (
            f"input {other[0]!r}: dim {other[1]} ({symbol!r}) is {other[2]}, but input {first[0]!r} "
            f"dim {first[1]} binds {symbol!r} to {first[2]}; make them equal, "
            f"or create the session with strict=False"
        )

    # -- outputs

    def plan(
        self,
        shapes: InputShapes,
        infer: InferFn | None = None,
    ) -> tuple[OutputPlan, ...]:
        """Resolve every output's shape for one input signature by rules a, b, c, then d.

        Args:
            shapes: Actual input shapes in input order; each is checked with :meth:`check_input`.
            infer: Shape inference for rule c; called at most once, and only if some output
                is left unresolved by rules a and b.

        Raises:
            ShapeError: A shape breaks its input's declared rank or fixed dims, or (in strict
                mode) inputs bind one symbol to different sizes.
        """
        for index, shape in enumerate(shapes):
            if shape is not None:
                self.check_input(index, tuple(shape))
        binding = self.bind_symbols(shapes)
        if self.strict and binding.conflicts:
            symbol, uses = next(iter(binding.conflicts.items()))
            raise ShapeError(self.conflict_message(symbol, uses))
        plans: list[OutputPlan | None] = []
        reasons: list[str] = []
        for name, exprs in zip(self.output_names, self._output_exprs):
            override = self._overrides.get(name)
            if override is not None:
                shape, why = _evaluate_dims(override, binding)
                if shape is None:
                    raise ShapeError(f"output_shapes[{name!r}]: cannot evaluate it: {why}")
                plans.append(OutputPlan(name, Rule.OVERRIDE, shape))
                reasons.append("")
                continue
            if exprs is None:
                plans.append(None)
                reasons.append("declared rank unknown")
                continue
            shape, why = _evaluate_dims(exprs, binding)
            if shape is not None:
                plans.append(OutputPlan(name, Rule.DECLARED, shape))
                reasons.append("")
            else:
                plans.append(None)
                reasons.append(why)
        if infer is not None and any(p is None for p in plans):
            named = {n: s for n, s in zip(self.input_names, shapes) if s is not None}
            inferred = infer(named)
            for i, name in enumerate(self.output_names):
                if plans[i] is not None:
                    continue
                dims = inferred.get(name)
                sizes = tuple(d for d in dims or () if d is not None and 0 <= d < _MAX_DIM)
                if dims is not None and len(sizes) == len(dims):
                    plans[i] = OutputPlan(name, Rule.INFERRED, sizes, reasons[i])
                else:
                    reasons[i] += "; shape inference could not tell"
        return tuple(
            p if p is not None else OutputPlan(name, Rule.ORT, None, reasons[i])
            for i, (name, p) in enumerate(zip(self.output_names, plans))
        )


def _evaluate_dims(exprs: Sequence[int | DimExpr | None], binding: SymbolBinding) -> tuple[Shape | None, str]:
    shape: list[int] = []
    for axis, expr in enumerate(exprs):
        if expr is None:
            return None, f"dim {axis} is undeclared"
        if isinstance(expr, int):
            if not 0 <= expr < _MAX_DIM:  # a model may declare -1 for "unknown"
                return None, f"dim {axis} is declared {expr}, which is not a size"
            shape.append(expr)
            continue
        # A symbol that inputs disagree on (a diffusers UNet's timestep tied to the batch symbol)
        # gives no trustworthy size; the dim goes to shape inference instead.
        conflicting = sorted(s for s in (expr.symbols | {expr.text}) if s in binding.conflicts)
        if conflicting:
            sizes = sorted({size for _, _, size in binding.conflicts[conflicting[0]]})
            return None, f"dim {axis} ({expr.text!r}) uses {conflicting[0]!r}, which inputs bind to {sizes}"
        value = expr.evaluate(binding.env)
        if value is None:
            used = {expr.text} if expr.text in binding.env else expr.symbols
            if all(s in binding.env for s in used):
                given = ", ".join(f"{s}={binding.env[s]}" for s in sorted(used))
                return None, f"dim {axis} ({expr.text!r}) is not an integer in [0, 2**63)" + (
                    f" with {given}" if given else ""
                )
            return None, f"dim {axis} ({expr.text!r}) is not bound by any input"
        shape.append(value)
    return tuple(shape), ""


def _quoted(names: Sequence[str] | frozenset[str]) -> str:
    return ", ".join(repr(n) for n in names)
