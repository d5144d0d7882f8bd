"""Property tests of dim expressions: any text is safe, and well-formed ones follow Python's ints.

The reference evaluates the generated tree with Python's own int operators; the library parses the
rendered text. Rendering uses only the parentheses Python's grammar needs (plus random redundant
ones), so precedence and associativity are checked too.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ortbind._dimexpr import _MAX_BITS, parse_dim

# Deterministic and database-less, so CI runs the same examples every time.
PROPERTY = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

INT64 = 2**63
SYMBOLS = ("N", "s0", "height", "batch_2")

# --------------------------------------------------------------------------- any text


EXPRESSION_PIECES = [
    *SYMBOLS,
    *"0123456789",
    "12",
    "00",
    "9223372036854775807",
    "9223372036854775808",
    "1" * 30,
    *("+", "-", "*", "**", "/", "//", "%", "(", ")", ",", " ", "\t"),
    *("Max(", "min(", "Abs(", "floor(", "CeilToInt(", "CleanDiv(", "IntTrueDiv(", "Mod(", "foo("),
    *("\x00", "é", "\u0663", "\uff2e", "\u00a0", "!", "_", "."),
]

expression_like = st.lists(st.sampled_from(EXPRESSION_PIECES), max_size=60).map("".join)
any_text = st.one_of(st.text(), st.text(alphabet=st.characters(codec=None)), expression_like)
sizes = st.one_of(st.integers(0, 20), st.integers(-(2**64), 2**64), st.sampled_from([2**62, INT64 - 1, -INT64]))
bindings = st.one_of(
    st.fixed_dictionaries({s: st.integers(0, 5) for s in SYMBOLS}),  # all bound: most dims resolve
    st.dictionaries(st.sampled_from(SYMBOLS), sizes),
)


@PROPERTY
@given(text=any_text, env=bindings)
def test_any_text_parses_and_evaluates_without_raising(text: str, env: dict[str, int]) -> None:
    expr = parse_dim(text)
    assert expr.text == text
    # An expression's names, or the whole text for an opaque one (an empty text included).
    assert expr.symbols == {text} or all(s.isidentifier() and s.isascii() for s in expr.symbols)
    value = expr.evaluate(env)
    assert value is None or (type(value) is int and 0 <= value < INT64)
    if any(s not in env for s in expr.symbols):
        assert value is None  # an unbound symbol is never guessed, not even in 0*N
    assert expr.evaluate({text: 7}) == 7


# --------------------------------------------------------------------------- well-formed expressions

# A tree is a tuple: ("int", v), ("sym", name), ("neg" | "pos" | "paren", child),
# ("bin", op, left, right), or ("call", function, args).
Tree = tuple[Any, ...]

BINARY: Mapping[str, Callable[[int, int], int]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}
LEVEL = {"+": 1, "-": 1, "*": 2, "//": 2, "%": 2, "**": 4}  # Python's; unary +/- is 3, atoms 5
FUNCTIONS: Mapping[str, tuple[int, str]] = {  # spelling -> (arity, meaning); -1: one or more
    "Max": (-1, "max"),
    "min": (-1, "min"),
    "Abs": (1, "abs"),
    "FloorDiv": (2, "//"),
    "PythonMod": (2, "%"),
}

literals = st.one_of(
    st.integers(0, 12),
    st.integers(0, 2**70),
    st.sampled_from([2**62, INT64 - 1, INT64, 10**30]),
)
leaves = st.one_of(
    st.tuples(st.just("int"), literals),
    st.tuples(st.just("sym"), st.sampled_from(SYMBOLS)),
)


@st.composite
def _trees(draw: st.DrawFn, literals: st.SearchStrategy[int], depth: int) -> Tree:
    # Binary operators are drawn most often, so chains that test precedence are common.
    kinds = ["leaf", "bin", "bin", "bin", "bin", "neg", "pos", "paren", "call"]
    kind = "leaf" if depth == 0 else draw(st.sampled_from(kinds))
    if kind == "leaf":
        if draw(st.booleans()):
            return ("int", draw(literals))
        return ("sym", draw(st.sampled_from(SYMBOLS)))
    child = _trees(literals, depth - 1)
    if kind == "bin":
        return ("bin", draw(st.sampled_from(list(BINARY))), draw(child), draw(child))
    if kind == "call":
        function = draw(st.sampled_from(list(FUNCTIONS)))
        arity = FUNCTIONS[function][0]
        return ("call", function, draw(st.lists(child, min_size=max(arity, 1), max_size=3 if arity < 0 else arity)))
    return (kind, draw(child))


trees = _trees(literals, 4)
# Small ints: results mostly land in range, so precedence and associativity mistakes (``-2**2``,
# ``2**3**2``, ``-7//2``) change the answer instead of hiding behind None.
small_trees = _trees(st.integers(0, 4), 4)


def _nodes(tree: Tree) -> list[Tree]:
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        kind = node[0]
        if kind in ("neg", "pos", "paren"):
            todo.append(node[1])
        elif kind == "bin":
            todo.extend((node[2], node[3]))
        elif kind == "call":
            todo.extend(node[2])
    return found


def _level(tree: Tree) -> int:
    kind = tree[0]
    if kind in ("neg", "pos"):
        return 3
    if kind == "bin":
        return LEVEL[tree[1]]
    return 5


def render(tree: Tree, space: str) -> str:
    """Python source for ``tree`` with only the parentheses Python's grammar needs."""

    def wrap(child: Tree, need: int) -> str:
        text = render(child, space)
        return text if _level(child) >= need else f"({text})"

    kind = tree[0]
    if kind == "int":
        return str(tree[1])
    if kind == "sym":
        return str(tree[1])
    if kind == "paren":
        return f"({render(tree[1], space)})"
    if kind in ("neg", "pos"):
        return ("-" if kind == "neg" else "+") + space + wrap(tree[1], 3)
    if kind == "bin":
        op, left, right = tree[1], tree[2], tree[3]
        assert isinstance(op, str)
        if op == "**":  # power: primary '**' factor
            need_left, need_right = 5, 3
        else:  # left-associative
            need_left, need_right = LEVEL[op], LEVEL[op] + 1
        return f"{wrap(left, need_left)}{space}{op}{space}{wrap(right, need_right)}"
    args = (render(a, space) for a in tree[2])
    return f"{tree[1]}({(',' + space).join(args)})"


class UnknownError(Exception):
    """The dim cannot be known: the library must answer None."""


BOUND = 2**_MAX_BITS


def reference(tree: Tree, env: Mapping[str, int]) -> int:
    """Python's int arithmetic on the tree, with ortbind's documented limits.

    Beyond Python: a literal or a bound symbol outside int64, or any intermediate value of
    magnitude 2**_MAX_BITS or more, makes the dim unknown. A negative exponent gives a float in
    Python (or ZeroDivisionError for 0), so never an int: unknown as well.
    """
    kind = tree[0]
    if kind == "int":
        value = tree[1]
        assert isinstance(value, int)
        if value >= INT64:
            raise UnknownError
        return value
    if kind == "sym":
        name = tree[1]
        assert isinstance(name, str)
        if name not in env or not -INT64 <= env[name] < INT64:
            raise UnknownError
        return env[name]
    if kind in ("paren", "pos"):
        return reference(tree[1], env)
    if kind == "neg":
        return -reference(tree[1], env)
    if kind == "bin":
        op, a, b = tree[1], reference(tree[2], env), reference(tree[3], env)
        assert isinstance(op, str)
        result = _apply(op, a, b)
    else:
        meaning = FUNCTIONS[tree[1]][1]
        args = [reference(a, env) for a in tree[2]]
        if meaning == "max":
            result = max(args)
        elif meaning == "min":
            result = min(args)
        elif meaning == "abs":
            result = abs(args[0])
        else:
            result = _apply(meaning, args[0], args[1])
    if not -BOUND < result < BOUND:
        raise UnknownError
    return result


def _apply(op: str, a: int, b: int) -> int:
    if op == "**":
        if b < 0:
            raise UnknownError
        if abs(a) >= 2 and b > _MAX_BITS:  # at least 2**b: past the bound, and too big to compute
            raise UnknownError
    try:
        return BINARY[op](a, b)
    except ZeroDivisionError:
        raise UnknownError from None


def expected(tree: Tree, env: Mapping[str, int]) -> int | None:
    try:
        value = reference(tree, env)
    except UnknownError:
        return None
    return value if 0 <= value < INT64 else None


SHIFT = 2**62  # added to every expression once more, so negative values are compared too


@PROPERTY
@given(tree=st.one_of(trees, small_trees), env=bindings, space=st.sampled_from(["", " ", "  "]))
def test_well_formed_expression_evaluates_as_python(tree: Tree, env: dict[str, int], space: str) -> None:
    # Every subexpression on its own, so a mistake is not hidden by an enclosing min() or %.
    for node in _nodes(tree):
        for checked in (node, ("bin", "+", ("int", SHIFT), ("paren", node))):
            text = render(checked, space)
            assert parse_dim(text).evaluate(env) == expected(checked, env), text


@PROPERTY
@given(tree=trees, space=st.sampled_from(["", " "]))
def test_symbols_are_the_names_in_the_expression(tree: Tree, space: str) -> None:
    text = render(tree, space)
    names = {n[1] for n in _nodes(tree) if n[0] == "sym"}
    assert parse_dim(text).symbols == names, text


@PROPERTY
@given(tree=trees, env=bindings, space=st.sampled_from(["", " "]))
def test_whole_text_binding_wins(tree: Tree, env: dict[str, int], space: str) -> None:
    text = render(tree, space)
    assert parse_dim(text).evaluate({**env, text: 11}) == 11


# --------------------------------------------------------------------------- binding symbols

DIM_CHOICES = st.one_of(st.sampled_from(SYMBOLS[:3]), st.integers(1, 3), st.just("s0 + 1"))


@PROPERTY
@given(data=st.data(), dims=st.lists(st.lists(DIM_CHOICES, max_size=4), min_size=1, max_size=5))
def test_resolve_binds_symbols_as_bind_symbols_does(data: st.DataObject, dims: list[list[Any]]) -> None:
    """resolve()'s quick binding of ranked, given shapes agrees with bind_symbols, conflicts included."""
    from ortbind._shapes import ShapeProgram

    program = ShapeProgram([f"x{i}" for i in range(len(dims))], dims, ["y"], [("N",)])
    # Small sizes, so symbols used twice often agree and sometimes conflict.
    shapes = [tuple(data.draw(st.integers(0, 3)) for _ in d) for d in dims]
    assert program._bind_checked(shapes) == program.bind_symbols(shapes)
