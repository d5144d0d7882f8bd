"""Output shapes from input shapes: declared dims bound from the inputs, then shape inference.

A :class:`ShapeProgram` is compiled once per model: which input dims are fixed, which bind a
symbol, and each output's declared dims as expressions (:mod:`._dimexpr`). Planning one input
signature then checks the inputs against the fixed dims and ranks, binds every symbol, and
evaluates each *distinct* declared dim once: a decoder's 64 present keys and values share four
dim expressions, so they cost four evaluations, not 256.

Everything here is pure: no ONNX Runtime, no torch, so it is tested on its own.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Final, NamedTuple, Protocol

from ._dimexpr import MAX_DIM, Dim, DimExpr, Shape, format_dims, format_shape, parse_dim
from .errors import ShapeError

__all__ = [
    "RULES",
    "Dim",
    "DimExpr",
    "InputShapes",
    "OutputPlan",
    "Rule",
    "Shape",
    "ShapeProgram",
    "SymbolBinding",
    "format_dims",
    "format_shape",
    "parse_dim",
]

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


RULES: Final = {rule.value: rule for rule in Rule}
"""Rule letter -> Rule (a dict lookup; ``Rule(letter)`` costs several times more)."""

_OVERRIDE, _DECLARED, _INFERRED, _ORT = "a", "b", "c", "d"  # Rule values, for tuples that hold no objects

_RULE_WORDS: Final = {
    Rule.OVERRIDE: "override",
    Rule.DECLARED: "declared",
    Rule.INFERRED: "inferred",
    Rule.ORT: "allocated by ORT",
}


class OutputPlan(NamedTuple):
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


class SymbolBinding(NamedTuple):
    """Symbols bound from actual input shapes.

    Attributes:
        env: Symbol -> size, for symbols that every input agrees on.
        conflicts: Symbol -> the distinct (input name, dim index, size) that disagree.
    """

    env: Mapping[str, int]
    conflicts: Mapping[str, tuple[tuple[str, int, int], ...]]


_make_binding = tuple.__new__  # SymbolBinding(...) without its Python-level __new__ (every new signature)
_NO_CONFLICTS: Mapping[str, tuple[tuple[str, int, int], ...]] = MappingProxyType({})


InferFn = Callable[[Mapping[str, Shape]], Mapping[str, tuple[int | None, ...] | None]]
"""Shape inference: concrete input shapes by name -> output dims by name (``None`` = unknown)."""


class Declared(Protocol):
    """What :meth:`ShapeProgram.for_specs` reads of an input or output spec."""

    @property
    def name(self) -> str: ...

    @property
    def dims(self) -> tuple[Dim, ...] | None: ...


_Compiled = tuple[int | DimExpr | None, ...]


def _compile(dims: Sequence[Dim] | None) -> _Compiled | None:
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

    Raises:
        ShapeError: An override names no output, is not a sequence of dims, or uses a symbol no
            input declares.
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
        self.input_symbols = frozenset(d for dims in self.input_dims if dims for d in dims if isinstance(d, str))
        # Per input of known rank: (index, rank, a getter of its fixed dims or None, their sizes).
        checks = []
        for i, dims in enumerate(self.input_dims):
            if dims is None:
                continue
            axes = [axis for axis, d in enumerate(dims) if isinstance(d, int) and d >= 0]
            sizes = tuple(dims[axis] for axis in axes)
            getter = operator.itemgetter(*axes) if axes else None
            checks.append((i, len(dims), getter, sizes if len(axes) != 1 else sizes[0]))
        self._checks = tuple(checks)
        self._check_of: list[tuple[int, int, Callable[[Shape], object] | None, object] | None] = [None] * len(
            self.input_names
        )
        for check in checks:
            self._check_of[check[0]] = check
        uses: dict[str, list[tuple[int, int]]] = {}
        for i, dims in enumerate(self.input_dims):
            for axis, d in enumerate(dims or ()):
                if isinstance(d, str):
                    uses.setdefault(d, []).append((i, axis))
        self._uses = tuple((symbol, tuple(places)) for symbol, places in uses.items())
        # The same uses as positions in the inputs' dims laid end to end, for signatures whose ranks
        # were checked (resolve): (symbol, a getter of its sizes, how many); None if a rank is unknown.
        self._flat_uses: tuple[tuple[str, Callable[[Sequence[int]], object], int], ...] | None = None
        if all(dims is not None for dims in self.input_dims):
            offsets = [0]
            for dims in self.input_dims:
                offsets.append(offsets[-1] + len(dims or ()))
            self._flat_uses = tuple(
                (symbol, operator.itemgetter(*(offsets[i] + axis for i, axis in places)), len(places))
                for symbol, places in self._uses
            )
        overridden: dict[str, _Compiled] = {}
        for name, given in (overrides or {}).items():
            overridden[name] = self._check_override(name, given)
        self._overrides = overridden
        # Outputs whose dims read the same are resolved together: (rule, compiled dims, indices).
        groups: dict[tuple[bool, tuple[Dim, ...] | None], tuple[str, _Compiled | None, list[int]]] = {}
        for index, name in enumerate(self.output_names):
            if name in overridden:
                key: tuple[bool, tuple[Dim, ...] | None] = (True, tuple(_text(d) for d in overridden[name]))
                groups.setdefault(key, (_OVERRIDE, overridden[name], []))[2].append(index)
            else:
                dims = self.output_dims[index]
                groups.setdefault((False, dims), (_DECLARED, _compile(dims), []))[2].append(index)
        self._groups = tuple((rule, compiled, tuple(indices)) for rule, compiled, indices in groups.values())
        places = dict(self._uses)
        reads: list[frozenset[tuple[int, int]] | None] = [None] * len(self.output_names)
        for _, compiled, indices in self._groups:
            if compiled is None or any(d is None for d in compiled):
                continue  # resolved by inference or at run time: it may depend on any input dim
            used: set[tuple[int, int]] = set()
            for expr in compiled:
                if isinstance(expr, DimExpr):
                    for symbol in expr.symbols | {expr.text}:
                        used.update(places.get(symbol, ()))
            for index in indices:
                reads[index] = frozenset(used)
        self.reads = tuple(reads)
        """Per output, the (input index, axis) whose sizes its override or declared dims read, or
        ``None`` when its shape may depend on any input dim (rule c or d)."""

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

    def _check_override(self, name: str, dims: Sequence[int | str]) -> _Compiled:
        where = f"output_shapes[{name!r}]"
        if name not in self.output_names:
            raise ShapeError(
                f"{where}: the model has no output {name!r}; its outputs are {_quoted(self.output_names)}",
                kind="output",
                name=name,
            )
        if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
            raise ShapeError(
                f"{where}: expected a sequence of ints or symbol strings, got {type(dims).__name__}; "
                f"pass e.g. ('batch', 3, 64, 64)",
                kind="output",
                name=name,
            )
        compiled: list[int | DimExpr | None] = []
        for dim in dims:
            if isinstance(dim, bool) or not isinstance(dim, (int, str)):
                raise ShapeError(
                    f"{where}: dim {dim!r} is neither an int nor a symbol string; pass e.g. ('batch', 3, 64, 64)",
                    kind="output",
                    name=name,
                )
            if isinstance(dim, int):
                if dim < 0:
                    raise ShapeError(f"{where}: dim {dim} is negative", kind="output", name=name)
                if dim >= MAX_DIM:
                    raise ShapeError(
                        f"{where}: dim {dim} does not fit in int64; give a size below 2**63", kind="output", name=name
                    )
                compiled.append(dim)
                continue
            expr = parse_dim(dim)
            unknown = sorted(s for s in expr.symbols if s not in self.input_symbols)
            if dim not in self.input_symbols and unknown:
                known = _quoted(sorted(self.input_symbols)) if self.input_symbols else "none"
                raise ShapeError(
                    f"{where}: symbol {unknown[0]!r} is not a dim of any input; the inputs declare {known}",
                    kind="output",
                    name=name,
                )
            compiled.append(expr)
        declared = self.output_dims[self.output_names.index(name)]
        if declared is not None and len(declared) != len(compiled):
            raise ShapeError(
                f"{where}: {len(compiled)} dims, but the model declares rank {len(declared)} {format_dims(declared)}, "
                f"and ONNX Runtime refuses a buffer of another rank; leave {name!r} out of output_shapes",
                kind="output",
                name=name,
            )
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
                f"got shape {format_shape(shape)}; reshape it to the declared rank",
                kind="input",
                name=name,
            )
        for axis, (declared, actual) in enumerate(zip(dims, shape)):
            if isinstance(declared, int) and declared >= 0 and declared != actual:
                raise ShapeError(
                    f"input {name!r}: dim {axis} must be {declared} (declared {format_dims(dims)}), "
                    f"got shape {format_shape(shape)}",
                    kind="input",
                    name=name,
                )

    def fits(self, index: int, shape: Shape) -> bool:
        """Whether ``shape`` has input ``index``'s declared rank and fixed dims (:meth:`check_input` says why not)."""
        check = self._check_of[index]
        if check is None:
            return True
        _, rank, getter, sizes = check
        return len(shape) == rank and (getter is None or getter(shape) == sizes)

    def bind_symbols(self, shapes: InputShapes) -> SymbolBinding:
        """Bind every symbol that an input declares to the size it has in ``shapes``."""
        env: dict[str, int] = {}
        conflicts: dict[str, tuple[tuple[str, int, int], ...]] = {}
        names, dims = self.input_names, self.input_dims
        for symbol, places in self._uses:
            size = -1
            for index, axis in places:
                shape = shapes[index]
                if shape is None or len(shape) != len(dims[index]):  # type: ignore[arg-type]
                    continue
                if size < 0:
                    size = shape[axis]
                elif shape[axis] != size:
                    conflicts[symbol] = tuple(
                        (names[i], a, shapes[i][a])  # type: ignore[index]
                        for i, a in places
                        if shapes[i] is not None and len(shapes[i]) == len(dims[i])  # type: ignore[arg-type]
                    )
                    break
            else:
                if size >= 0:
                    env[symbol] = size
        return SymbolBinding(env, conflicts)

    def _bind_checked(self, shapes: InputShapes) -> SymbolBinding:
        """:meth:`bind_symbols` for shapes of the declared ranks, every one given (what resolve checked).

        Reads each symbol's sizes with one ``itemgetter`` over the dims laid end to end; a symbol
        whose sizes differ goes to :meth:`bind_symbols`, which says how.
        """
        if None in shapes:
            return self.bind_symbols(shapes)
        flat: tuple[int, ...] = sum(shapes, ())  # type: ignore[arg-type]  # quicker than a comprehension
        env: dict[str, int] = {}
        for symbol, getter, count in self._flat_uses:  # type: ignore[union-attr]
            if count == 1:
                env[symbol] = getter(flat)  # type: ignore[assignment]
                continue
            sizes: tuple[int, ...] = getter(flat)  # type: ignore[assignment]
            first = sizes[0]
            if sizes.count(first) != count:
                return self.bind_symbols(shapes)
            env[symbol] = first
        return _make_binding(SymbolBinding, (env, _NO_CONFLICTS))

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

    def plan(self, shapes: InputShapes, infer: InferFn | None = None) -> tuple[OutputPlan, ...]:
        """Resolve every output's shape for one input signature by rules a, b, c, then d.

        Args:
            shapes: Actual input shapes in input order; each is checked with :meth:`check_input`.
            infer: Shape inference for rule c; called at most once, and only if some output
                is left unresolved by rules a and b.

        Raises:
            ShapeError: A shape breaks its input's declared rank or fixed dims, or (in strict
                mode) inputs bind one symbol to different sizes.
        """
        names = self.output_names
        return tuple(
            OutputPlan(names[i], RULES[rule], shape, reason)
            for i, (rule, shape, reason) in enumerate(self.resolve(shapes, infer))
        )

    def resolve(self, shapes: InputShapes, infer: InferFn | None = None) -> list[tuple[str, Shape | None, str]]:
        """:meth:`plan` as ``(rule, shape, reason)`` per output, the rule as its letter (``Rule.value``).

        The same answer without objects: plans are cached by the thousand, and tuples of strings
        and ints cost Python's garbage collector nothing.
        """
        for index, rank, getter, sizes in self._checks:
            shape = shapes[index]
            if shape is not None and (len(shape) != rank or (getter is not None and getter(shape) != sizes)):
                self.check_input(index, tuple(shape))  # raises, saying which dim
        binding = self._bind_checked(shapes) if self._flat_uses is not None else self.bind_symbols(shapes)
        if self.strict and binding.conflicts:
            symbol, uses = next(iter(binding.conflicts.items()))
            raise ShapeError(self.conflict_message(symbol, uses), kind="input", name=uses[0][0])
        env = binding.env
        memo: dict[str, int | None] = {}
        results: list[tuple[str, Shape | None, str]] = [(_ORT, None, "")] * len(self.output_names)
        unresolved: list[int] = []
        for rule, compiled, indices in self._groups:
            if compiled is None:
                shape, why = None, "declared rank unknown"
            else:
                shape, why = _evaluate(compiled, env, binding, memo)
            if shape is None and rule == _OVERRIDE:
                raise ShapeError(
                    f"output_shapes[{self.output_names[indices[0]]!r}]: cannot evaluate it: {why}",
                    kind="output",
                    name=self.output_names[indices[0]],
                )
            entry = (rule, shape, "") if shape is not None else (_ORT, None, why)
            for index in indices:
                results[index] = entry
            if shape is None:
                unresolved.extend(indices)
        if unresolved and infer is not None:
            inferred = infer({n: s for n, s in zip(self.input_names, shapes) if s is not None})
            for index in sorted(unresolved):
                why = results[index][2]
                dims = inferred.get(self.output_names[index])
                sizes = tuple(d for d in dims or () if d is not None and 0 <= d < MAX_DIM)
                if dims is not None and len(sizes) == len(dims):
                    results[index] = (_INFERRED, sizes, why)
                else:
                    results[index] = (_ORT, None, why + "; shape inference could not tell")
        return results


def _text(dim: int | DimExpr | None) -> Dim:
    return dim.text if isinstance(dim, DimExpr) else dim


def _evaluate(
    exprs: _Compiled, env: Mapping[str, int], binding: SymbolBinding, memo: dict[str, int | None]
) -> tuple[Shape | None, str]:
    shape: list[int] = []
    for axis, expr in enumerate(exprs):
        if expr is None:
            return None, f"dim {axis} is undeclared"
        if isinstance(expr, int):
            if not 0 <= expr < MAX_DIM:  # a model may declare -1 for "unknown"
                return None, f"dim {axis} is declared {expr}, which is not a size"
            shape.append(expr)
            continue
        text = expr.text
        if text in memo:
            value = memo[text]
        else:
            value = memo[text] = None if binding.conflicts and _conflicting(expr, binding) else expr.evaluate(env)
        if value is None:
            return None, _why_not(axis, expr, binding)
        shape.append(value)
    return tuple(shape), ""


def _conflicting(expr: DimExpr, binding: SymbolBinding) -> bool:
    return any(s in binding.conflicts for s in expr.symbols) or expr.text in binding.conflicts


def _why_not(axis: int, expr: DimExpr, binding: SymbolBinding) -> str:
    """Why ``expr`` has no size (only worked out when it has none)."""
    # A symbol that inputs disagree on (a diffusers UNet's timestep tied to the batch symbol)
    # gives no trustworthy size; the dim goes to shape inference instead.
    conflicting = sorted(s for s in (expr.symbols | {expr.text}) if s in binding.conflicts)
    if conflicting:
        sizes = sorted({size for _, _, size in binding.conflicts[conflicting[0]]})
        return f"dim {axis} ({expr.text!r}) uses {conflicting[0]!r}, which inputs bind to {sizes}"
    env = binding.env
    used = {expr.text} if expr.text in env else expr.symbols
    if all(s in env for s in used):
        given = ", ".join(f"{s}={env[s]}" for s in sorted(used))
        return f"dim {axis} ({expr.text!r}) is not an integer in [0, 2**63)" + (f" with {given}" if given else "")
    return f"dim {axis} ({expr.text!r}) is not bound by any input"


def _quoted(names: Sequence[str] | frozenset[str]) -> str:
    return ", ".join(repr(n) for n in names)
