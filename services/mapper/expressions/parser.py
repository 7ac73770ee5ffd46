"""Syntax of Entra's attribute-mapping expressions: text -> a small tree of nodes.

Grammar (whitespace, tabs and newlines are allowed between any two tokens)::

    expression := operand [ compare-op operand ]          compare-op: = <> < <= > >=
    operand    := call | attribute | string | number | name
    call       := Name "(" [ argument { "," argument } ] ")"
    argument   := expression | (nothing: an omitted optional argument)
    attribute  := "[" any characters except "]" "]"
    string     := '"' { char | '\\"' | '\\\\' } '"'
    number     := [ "-" | "+" ] digits [ "." digits ]  |  "&H" hex-digits
    name       := vbBinaryCompare | vbTextCompare | True | False

This module only knows the syntax; which functions exist and what they take is checked
by ``functions`` when the tree is compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from services.runtime.errors import ConfigError

__all__ = [
    "COMPARE_OPS",
    "Attr",
    "Call",
    "Compare",
    "Const",
    "ExpressionError",
    "Node",
    "Omitted",
    "parse",
]

COMPARE_OPS: Final = ("<>", "<=", ">=", "=", "<", ">")

# Bare names the language knows (VBA constants InStr documents, and the two booleans).
_NAMES: Final[dict[str, int | bool]] = {
    "vbBinaryCompare": 0,
    "vbTextCompare": 1,
    "True": True,
    "False": False,
}
_WHITESPACE: Final = frozenset(" \t\r\n")
_MAX_DEPTH: Final = 64  # nested calls; far beyond real mappings, well inside Python's stack
_HEX: Final = frozenset("0123456789abcdefABCDEF")


class ExpressionError(ConfigError):
    """An expression is malformed: raised once, when the configuration is loaded.

    ``position`` is the 0-based character offset in ``text`` where the problem is, and
    ``expected`` says what would have been valid there.
    """

    def __init__(self, reason: str, *, position: int, expected: str, text: str = "",
                 file: str | None = None, line: int | None = None) -> None:
        self.position = position
        self.expected = expected
        self.text = text
        self.detail = reason
        super().__init__(f"expression error at position {position}: {reason}",
                         file=file, line=line)

    def located(self, text: str, *, file: str | None, line: int | None) -> ExpressionError:
        """The same error, told which expression (and config file and line) it is about."""
        return ExpressionError(self.detail, position=self.position, expected=self.expected,
                               text=text, file=file, line=line)

    def __str__(self) -> str:
        # Without a file the "<config>:" prefix of ConfigError says nothing useful.
        if self.file is None and self.line is None:
            return self.reason
        return super().__str__()


@dataclass(frozen=True, slots=True)
class Const:
    """A string constant, a number, or a named constant (``vbTextCompare``, ``True``)."""

    value: str | int | float | bool
    pos: int


@dataclass(frozen=True, slots=True)
class Attr:
    """An ``[attribute]`` reference."""

    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Omitted:
    """An argument left empty, as in ``Switch([a], , "1", "x")``."""

    pos: int


@dataclass(frozen=True, slots=True)
class Call:
    """``Name(arg, ...)``; ``pos`` is where the name starts."""

    name: str
    args: tuple[Node, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Compare:
    """``left op right``; ``pos`` is where the operator is."""

    op: str
    left: Node
    right: Node
    pos: int


Node = Const | Attr | Omitted | Call | Compare


def parse(text: str) -> Node:
    """Parse one expression; raise ExpressionError at the first problem."""
    return _Parser(text).parse()


class _Parser:
    """Recursive descent over the text; ``self.i`` is the next unread character."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.depth = 0

    def error(self, reason: str, expected: str, position: int | None = None) -> ExpressionError:
        where = self.i if position is None else position
        return ExpressionError(f"{reason} (expected {expected})", position=where,
                               expected=expected, text=self.text)

    def parse(self) -> Node:
        self.skip_ws()
        if self.i >= len(self.text):
            raise self.error("the expression is empty", "a function, [attribute] or \"string\"")
        node = self.expression()
        self.skip_ws()
        if self.i < len(self.text):
            raise self.error(f"unexpected {self.describe()} after the end of the expression",
                             "end of expression")
        return node

    def skip_ws(self) -> None:
        text, i = self.text, self.i
        while i < len(text) and text[i] in _WHITESPACE:
            i += 1
        self.i = i

    def describe(self) -> str:
        if self.i >= len(self.text):
            return "end of expression"
        return repr(self.text[self.i])

    def expression(self) -> Node:
        left = self.operand()
        self.skip_ws()
        op = self.compare_op()
        if op is None:
            return left
        pos = self.i
        self.i += len(op)
        self.skip_ws()
        right = self.operand()
        self.skip_ws()
        if self.compare_op() is not None:
            raise self.error("comparisons can't be chained; nest IIF calls instead",
                             "\",\" or \")\"")
        return Compare(op, left, right, pos)

    def compare_op(self) -> str | None:
        for op in COMPARE_OPS:
            if self.text.startswith(op, self.i):
                return op
        return None

    def operand(self) -> Node:
        self.skip_ws()
        if self.i >= len(self.text):
            raise self.error("the expression ends too early", "a value")
        ch = self.text[self.i]
        if ch == "[":
            return self.attribute()
        if ch == '"':
            return self.string()
        if ch.isdigit() or ch in "+-&":
            return self.number()
        if ch.isalpha() or ch == "_":
            return self.name_or_call()
        raise self.error(f"unexpected {self.describe()}",
                         "a function, [attribute], \"string\" or number")

    def attribute(self) -> Attr:
        start = self.i
        end = self.text.find("]", start + 1)
        if end < 0:
            raise self.error("unterminated attribute reference", "\"]\"", start)
        name = self.text[start + 1:end].strip()
        if not name:
            raise self.error("empty attribute name", "an attribute name inside [ ]", start)
        self.i = end + 1
        return Attr(name, start)

    def string(self) -> Const:
        start = self.i
        text, i, out = self.text, start + 1, list[str]()
        while i < len(text):
            ch = text[i]
            if ch == '"':
                self.i = i + 1
                return Const("".join(out), start)
            if ch == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
                out.append(text[i + 1])
                i += 2
                continue
            out.append(ch)  # other backslashes stay as written: "\d" is a regex's \d
            i += 1
        raise self.error("unterminated string constant", "a closing '\"'", start)

    def number(self) -> Const:
        start = self.i
        if self.text.startswith("&H", start) or self.text.startswith("&h", start):
            return self.hex_number(start)
        i = start + 1 if self.text[start] in "+-" else start
        i = self.digits(i)
        if i < len(self.text) and self.text[i] == ".":
            i = self.digits(i + 1)
            self.i = i
            return Const(float(self.text[start:i]), start)
        self.i = i
        return Const(int(self.text[start:i]), start)

    def digits(self, i: int) -> int:
        begin = i
        while i < len(self.text) and self.text[i].isdigit():
            i += 1
        if i == begin:
            raise self.error("malformed number", "a digit", i)
        return i

    def hex_number(self, start: int) -> Const:
        i = start + 2
        while i < len(self.text) and self.text[i] in _HEX:
            i += 1
        if i == start + 2:
            raise self.error("malformed hexadecimal number", "hex digits after &H", i)
        self.i = i
        return Const(int(self.text[start + 2:i], 16), start)

    def name_or_call(self) -> Node:
        start = self.i
        i = start
        while i < len(self.text) and (self.text[i].isalnum() or self.text[i] == "_"):
            i += 1
        name = self.text[start:i]
        self.i = i
        self.skip_ws()
        if self.i < len(self.text) and self.text[self.i] == "(":
            return Call(name, self.arguments(name, start), start)
        if name in _NAMES:
            self.i = i
            return Const(_NAMES[name], start)
        raise self.error(f"unknown name {name!r}: string constants need double quotes and "
                         "functions need parentheses", f"\"{name}\" or {name}(...)", start)

    def arguments(self, name: str, start: int) -> tuple[Node, ...]:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.error(f"calls are nested more than {_MAX_DEPTH} deep", "a simpler "
                             "expression", start)
        args = self.argument_list(name, start)
        self.depth -= 1
        return args

    def argument_list(self, name: str, start: int) -> tuple[Node, ...]:
        self.i += 1  # the "("
        self.skip_ws()
        if self.i < len(self.text) and self.text[self.i] == ")":
            self.i += 1
            return ()
        args: list[Node] = []
        while True:
            args.append(self.argument())
            self.skip_ws()
            if self.i >= len(self.text):
                raise self.error(f"missing \")\" to close {name}( opened at position {start}",
                                 "\",\" or \")\"")
            if self.text[self.i] == ")":
                self.i += 1
                return tuple(args)
            if self.text[self.i] != ",":
                raise self.error(f"unexpected {self.describe()} in the arguments of {name}",
                                 "\",\" or \")\"")
            self.i += 1

    def argument(self) -> Node:
        self.skip_ws()
        if self.i < len(self.text) and self.text[self.i] in ",)":
            return Omitted(self.i)
        return self.expression()
