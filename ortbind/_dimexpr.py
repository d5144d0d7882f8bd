"""Declared dim strings: compiled without ``eval`` into flat postfix programs, evaluated exactly.

Declared dims come in three forms: ints, symbol names (``"batch"``), and the arithmetic that
``torch.onnx.export(dynamo=True)`` writes (``"2*s0"``, ``"(height - 1)//2 + 1"``, ``"8*height"``).
An expression is compiled without recursion into a flat postfix program that is evaluated with
exact, bounded rational arithmetic; a string that does not parse is an opaque symbol compared by
name, which is how legacy exporters' names (``"Convout_sample_dim_0"``) and names with spaces work.
Dim strings come from model files, which may be hostile: parsing and evaluating never raise, take
time linear in the text, and never build a value of more than a few hundred bits.

Pure: no ONNX Runtime, no torch.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

__all__ = ["MAX_DIM", "Dim", "DimExpr", "Shape", "format_dims", "format_shape", "parse_dim"]

Dim = int | str | None
"""A declared dim: a size, a symbol or expression, or ``None`` when the model says nothing."""

Shape = tuple[int, ...]

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

MAX_DIM: Final = 1 << 63
"""Sizes are int64: a dim evaluates to an int in ``[0, 2**63)`` or to ``None``."""

_MAX_BITS: Final = 256
"""Every intermediate value must have a numerator and denominator below ``2**_MAX_BITS`` in
magnitude (literals and bound symbols: within int64), or the dim is unresolvable. No real dim
comes near it, and it keeps every operation cheap whatever a model file declares: operands of at
most _MAX_BITS bits give results of at most 2 * _MAX_BITS + 1, and ``**`` is refused up front."""

_BOUND: Final = 1 << _MAX_BITS

_MAX_LITERAL_DIGITS: Final = len(str(MAX_DIM - 1))
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
    return value if value < MAX_DIM else _Op.OUT_OF_RANGE


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
            if not isinstance(bound, int) or not -MAX_DIM <= bound < MAX_DIM:
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
        if isinstance(value, int) and 0 <= value < MAX_DIM:
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
