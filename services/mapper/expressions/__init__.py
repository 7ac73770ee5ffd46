"""Entra-compatible attribute-mapping expressions: compile once, evaluate per object.

>>> expr = compile_expression('Join("@", NormalizeDiacritics(StripSpaces([givenName])), '
...                           '"contoso.com")')
>>> expr.evaluate({"givenName": "Zoë Ann"})
'ZoeAnn@contoso.com'

The package's modules, in the order an expression meets them:

- ``parser``: text -> a small syntax tree; ``ExpressionError`` for malformed text.
- ``compiler``: checks each call against the registry and builds closures (``Expression``).
- ``calls``: what every function in the registry is made of (``FunctionSpec``, contexts).
- ``functions``: the registry: every function's signature and what it computes.
- ``replace``: Replace, the one function with five modes.
- ``text``, ``dates``: the .NET-compatible string, regex and date helpers behind them.
- ``values``: the values an expression computes with and the conversion rules.

The language, every function, and where scimflow deliberately differs from Microsoft
are described in docs/expressions.md.
"""

from services.mapper.expressions.compiler import FUNCTIONS, Expression, compile_expression
from services.mapper.expressions.parser import ExpressionError
from services.mapper.expressions.values import (
    IGNORE,
    EvaluationError,
    RoleAssignments,
    UniqueCandidates,
)

__all__ = [
    "FUNCTIONS",
    "IGNORE",
    "EvaluationError",
    "Expression",
    "ExpressionError",
    "RoleAssignments",
    "UniqueCandidates",
    "compile_expression",
]
