"""Symbolic dims: parse them without ``eval``, bind them from input shapes, resolve output shapes.

Declared dims come in three forms: ints, symbol names (``"batch"``), and the arithmetic that
``torch.onnx.export(dynamo=True)`` writes (``"2*s0"``, ``"(height - 1)//2 + 1"``, ``"8*height"``).
A small recursive-descent parser turns an expression into a tree that is evaluated with exact
rational arithmetic; a string that does not parse is an opaque symbol compared by name, which is
how legacy exporters' names (``"Convout_sample_dim_0"``) and names with spaces work.

Everything here is pure: no ONNX Runtime, no torch, so it is tested on its own.
"""

from __future__ import annotations

import enum
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

_TOKEN: Final = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(//|\*\*|[-+*/%(),]))")


_MAX_BITS: Final = 256
"""No real dim needs more bits; larger intermediate values make an expression unresolvable."""


class _UnresolvedError(Exception):
    """An expression cannot be evaluated: a symbol is unbound, or a division is not exact."""


class _SyntaxError(Exception):
    pass


def _floor(x: Fraction) -> Fraction:
    return Fraction(x.numerator // x.denominator)


def _ceil(x: Fraction) -> Fraction:
    return Fraction(-(-x.numerator // x.denominator))


def _exact_div(a: Fraction, b: Fraction) -> Fraction:
    if b == 0:
        raise _UnresolvedError("division by zero")
    q = a / b
    if q.denominator != 1:
        raise _UnresolvedError("inexact division")
    return q


def _true_div(a: Fraction, b: Fraction) -> Fraction:
    if b == 0:
        raise _UnresolvedError("division by zero")
    return a / b


def _floor_div(a: Fraction, b: Fraction) -> Fraction:
    if b == 0:
        raise _UnresolvedError("division by zero")
    return _floor(a / b)


def _mod(a: Fraction, b: Fraction) -> Fraction:
    if b == 0:
        raise _UnresolvedError("modulo by zero")
    return a - b * _floor(a / b)


def _pow(a: Fraction, b: Fraction) -> Fraction:
    if b.denominator != 1 or b < 0:
        raise _UnresolvedError("unsupported power")
    # Bound the result's size so a hostile dim string cannot stall the process.
    if max(a.numerator.bit_length(), a.denominator.bit_length()) * int(b) > _MAX_BITS:
        raise _UnresolvedError("power too large")
    return a ** int(b)


# Functions sympy and torch's exporters print into dims, keyed by lower-cased name.
_FUNCTIONS: Final[Mapping[str, tuple[int, Callable[..., Fraction]]]] = {
    "max": (-1, lambda *a: max(a)),
    "min": (-1, lambda *a: min(a)),
    "abs": (1, abs),
    "floor": (1, _floor),
    "floortoint": (1, _floor),
    "ceiling": (1, _ceil),
    "ceil": (1, _ceil),
    "ceiltoint": (1, _ceil),
    "trunctoint": (1, lambda x: Fraction(int(x))),
    "mod": (2, _mod),
    "pythonmod": (2, _mod),
    "floordiv": (2, _floor_div),
    "cleandiv": (2, _exact_div),
    "inttruediv": (2, _true_div),
    "truediv": (2, _true_div),
}

_BINARY: Final[Mapping[str, Callable[[Fraction, Fraction], Fraction]]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": _true_div,
    "//": _floor_div,
    "%": _mod,
    "**": _pow,
}


@dataclass(frozen=True)
class _Int:
    value: int


@dataclass(frozen=True)
class _Sym:
    name: str


@dataclass(frozen=True)
class _Neg:
    operand: _Node


@dataclass(frozen=True)
class _Bin:
    op: str
    left: _Node
    right: _Node


@dataclass(frozen=True)
class _Call:
    function: str
    args: tuple[_Node, ...]


_Node = _Int | _Sym | _Neg | _Bin | _Call
"""A parsed expression: immutable, so a compiled dim can be shared between threads."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                raise _SyntaxError(text[pos:])
            number, name, op = m.groups()
            if number is not None:
                self.tokens.append(("int", number))
            elif name is not None:
                self.tokens.append(("name", name))
            else:
                self.tokens.append(("op", op))
            pos = m.end()
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take_op(self, *ops: str) -> str | None:
        tok = self.peek()
        if tok is not None and tok[0] == "op" and tok[1] in ops:
            self.pos += 1
            return tok[1]
        return None

    def parse(self) -> _Node:
        node = self.expr()
        if self.peek() is not None:
            raise _SyntaxError(str(self.peek()))
        return node

    def expr(self) -> _Node:
        node = self.term()
        while (op := self.take_op("+", "-")) is not None:
            node = _Bin(op, node, self.term())
        return node

    def term(self) -> _Node:
        node = self.unary()
        while (op := self.take_op("*", "//", "/", "%")) is not None:
            node = _Bin(op, node, self.unary())
        return node

    def unary(self) -> _Node:
        if self.take_op("-") is not None:
            return _Neg(self.unary())
        if self.take_op("+") is not None:
            return self.unary()
        return self.power()

    def power(self) -> _Node:
        node = self.atom()
        if self.take_op("**") is not None:
            node = _Bin("**", node, self.unary())
        return node

    def atom(self) -> _Node:
        tok = self.peek()
        if tok is None:
            raise _SyntaxError("unexpected end")
        kind, text = tok
        self.pos += 1
        if kind == "int":
            return _Int(int(text))
        if kind == "name":
            if self.take_op("(") is not None:
                fname = text.lower()
                if fname not in _FUNCTIONS:
                    raise _SyntaxError(f"unknown function {text}")
                args = [self.expr()]
                while self.take_op(",") is not None:
                    args.append(self.expr())
                if self.take_op(")") is None:
                    raise _SyntaxError("missing )")
                arity = _FUNCTIONS[fname][0]
                if arity >= 0 and len(args) != arity:
                    raise _SyntaxError(f"{text} takes {arity} arguments")
                return _Call(fname, tuple(args))
            return _Sym(text)
        if kind == "op" and text == "(":
            node = self.expr()
            if self.take_op(")") is None:
                raise _SyntaxError("missing )")
            return node
        raise _SyntaxError(text)


def _evaluate(node: _Node, env: Mapping[str, int]) -> Fraction:
    if isinstance(node, _Int):
        return Fraction(node.value)
    if isinstance(node, _Sym):
        if node.name not in env:
            raise _UnresolvedError(f"unbound symbol {node.name}")
        return Fraction(env[node.name])
    if isinstance(node, _Neg):
        return -_evaluate(node.operand, env)
    if isinstance(node, _Bin):
        return _BINARY[node.op](_evaluate(node.left, env), _evaluate(node.right, env))
    return _FUNCTIONS[node.function][1](*(_evaluate(a, env) for a in node.args))


def _symbols(node: _Node) -> frozenset[str]:
    if isinstance(node, _Int):
        return frozenset()
    if isinstance(node, _Sym):
        return frozenset((node.name,))
    if isinstance(node, _Neg):
        return _symbols(node.operand)
    if isinstance(node, _Bin):
        return _symbols(node.left) | _symbols(node.right)
    return frozenset().union(*(_symbols(a) for a in node.args))


@dataclass(frozen=True)
class DimExpr:
    """A declared dim string, compiled once.

    Attributes:
        text: The dim exactly as the model declares it.
        symbols: The names the dim depends on. For an opaque name this is the whole text.
    """

    text: str
    symbols: frozenset[str]
    _tree: _Node | None  # None: opaque, looked up by its whole text

    def evaluate(self, env: Mapping[str, int]) -> int | None:
        """The dim's size under ``env`` (symbol -> size), or ``None`` if it cannot be known.

        A dim whose whole text is bound in ``env`` (an input declared the same string) takes that
        size first, so any name works as a symbol, whatever characters it holds.
        """
        if self.text in env:
            return env[self.text]
        if self._tree is None:
            return None
        try:
            value = _evaluate(self._tree, env)
        except (_UnresolvedError, ArithmeticError, RecursionError):
            return None
        if value.denominator != 1 or value < 0:
            return None
        return int(value)


def parse_dim(text: str) -> DimExpr:
    """Compile a declared dim string; never raises and never calls ``eval``.

    >>> parse_dim("2*((H - 1)//2) + 2").evaluate({"H": 7})
    8
    >>> parse_dim("batch size").evaluate({"batch size": 3})
    3
    """
    try:
        tree = _Parser(text).parse()
    except (_SyntaxError, RecursionError, ValueError):  # ValueError: int() of a huge literal
        return DimExpr(text, frozenset((text,)), None)
    return DimExpr(text, _symbols(tree), tree)


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
                if dims is not None and all(d is not None for d in dims):
                    plans[i] = OutputPlan(name, Rule.INFERRED, tuple(d for d in dims if d is not None), reasons[i])
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
            return None, f"dim {axis} ({expr.text!r}) is not bound by any input"
        shape.append(value)
    return tuple(shape), ""


def _quoted(names: Sequence[str] | frozenset[str]) -> str:
    return ", ".join(repr(n) for n in names)
