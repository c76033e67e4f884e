"""The `calculator` tool: arithmetic over a whitelisted subset of Python's expression syntax.

The expression is parsed with `ast` and walked by hand; nothing is ever passed to eval/exec.
Integer powers and products are sized *before* they are computed, so `9**9**9` is refused in
microseconds instead of eating the CPU.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

from moa_core.tools.base import Tool, ToolError
from moa_core.values import ToolSpec

MAX_EXPRESSION_CHARS = 1000
# Integers beyond ~1,000 decimal digits are refused (operands, results and predicted results).
MAX_INT_BITS = 3400
MAX_ROUND_DIGITS = 100

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int):
        raise ToolError("round() takes an integer number of digits")
    # int.__round__ with negative digits computes 10**-ndigits: bound it.
    if abs(ndigits) > MAX_ROUND_DIGITS:
        raise ToolError(f"round() digits must be between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}")
    return round(x, ndigits)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


# name -> (function, min args, max args)
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    "sqrt": (math.sqrt, 1, 1),
    "log": (_log, 1, 2),
    "log10": (math.log10, 1, 1),
    "exp": (math.exp, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
}

SPEC = ToolSpec(
    name="calculator",
    description=(
        "Evaluate an arithmetic expression exactly (integers) or in floating point. Supports numbers, "
        "+ - * / // % ** (power), unary +/-, parentheses, the functions "
        + ", ".join(_FUNCTIONS)
        + " (log(x, base) optional base; round(x, digits) optional digits) and the constants pi and e."
    ),
    parameters={
        "type": "object",
        "properties": {
            "expression": {"type": "string", "description": "For example: (2**10 - 24) / 7 + sqrt(2)"}
        },
        "required": ["expression"],
    },
)


def _check_int(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError("result is too large (more than about 1,000 digits)")
    return value


def _predicted_bits(op: type[ast.operator], left: Number, right: Number) -> float:
    """An upper bound on the bit length of an integer result, computed without computing it."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return 0.0
    if op is ast.Mult:
        return left.bit_length() + right.bit_length()
    if op is ast.Pow and right > 0 and abs(left) > 1:
        if right.bit_length() > 32:  # even base 2 would need billions of bits
            return math.inf
        return right * math.log2(abs(left)) + 1
    return 0.0


def _evaluate(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ToolError(f"only numbers are allowed, not {value!r}")
        return _check_int(value)
    if isinstance(node, ast.BinOp):
        func = _BINARY.get(type(node.op))
        if func is None:
            hint = " (use ** for powers)" if isinstance(node.op, ast.BitXor) else ""
            raise ToolError(f"operator {type(node.op).__name__} is not allowed{hint}")
        left, right = _evaluate(node.left), _evaluate(node.right)
        if _predicted_bits(type(node.op), left, right) > MAX_INT_BITS:
            raise ToolError("result is too large (more than about 1,000 digits)")
        result = func(left, right)
        if isinstance(result, complex):  # e.g. (-8) ** 0.5
            raise ToolError("result is not a real number")
        return _check_int(result)
    if isinstance(node, ast.UnaryOp):
        unary = _UNARY.get(type(node.op))
        if unary is None:
            raise ToolError(f"operator {type(node.op).__name__} is not allowed")
        return unary(_evaluate(node.operand))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ToolError(f"unknown name {node.id!r}; the only constants are pi and e")
    if isinstance(node, ast.Call):
        return _call(node)
    raise ToolError(f"{type(node).__name__} syntax is not allowed; use numbers, operators and functions")


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
        raise ToolError(f"only these functions may be called: {', '.join(_FUNCTIONS)}")
    name = node.func.id
    func, least, most = _FUNCTIONS[name]
    if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
        raise ToolError(f"{name}() takes positional arguments only")
    if not least <= len(node.args) <= most:
        wanted = str(least) if least == most else f"{least} or {most}"
        raise ToolError(f"{name}() takes {wanted} argument(s), got {len(node.args)}")
    args = [_evaluate(arg) for arg in node.args]
    return _check_int(func(*args))


def calculate(expression: str) -> str:
    """Evaluate `expression` and return the result as text. Raises ToolError on refusal."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ToolError(f"not a valid expression: {e.msg}") from None
    except ValueError as e:  # e.g. null bytes in the source
        raise ToolError(f"not a valid expression: {e}") from None
    except (RecursionError, MemoryError):
        raise ToolError("expression is nested too deeply") from None
    try:
        result = _evaluate(tree)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("result is too large for a floating-point number") from None
    except (ValueError, TypeError) as e:
        raise ToolError(f"math error: {e}") from None
    except RecursionError:
        raise ToolError("expression is nested too deeply") from None
    if isinstance(result, float) and not math.isfinite(result):
        raise ToolError("result is not a finite number (overflow or undefined)")
    return str(result)


async def _run(arguments: dict) -> str:
    expression = arguments.get("expression")
    if not isinstance(expression, str) or not expression.strip():
        raise ToolError("missing required argument 'expression' (a string)")
    return calculate(expression)


def calculator_tool() -> Tool:
    return Tool(SPEC, _run)
