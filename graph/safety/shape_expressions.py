"""The grammar a symbolic shape expression in a `.pt2` must follow before any of its text reaches sympy.

torch's loader parses these expressions with `sympy.sympify`, which evaluates Python: a file could carry
`__import__('os').system(...)`, or `9**9**9**9`, 20 bytes whose value sympy computes for minutes and
gigabytes. So an expression is parsed here first, by this grammar and nothing else:

    expr  := term (('+' | '-') term)*
    term  := unary (('*' | '//' | '%') unary)*
    unary := '-' unary | atom
    atom  := INTEGER | SYMBOL | FUNCTION '(' expr (',' expr)* ')' | '(' expr ')'

INTEGER has at most MAX_DIGITS digits; SYMBOL is a shape symbol (`s0`, `u12`); FUNCTION is one of the few
integer functions torch writes (FloorDiv, Max, ...). No `**`, no `/`, no names, dots, quotes or brackets.
Text is at most MAX_LENGTH characters and nests at most MAX_DEPTH deep, so the value of an admitted
expression has at most about MAX_LENGTH digits and sympy computes it at once.
"""

from __future__ import annotations

import re

MAX_LENGTH = 1000
MAX_DIGITS = 20
MAX_DEPTH = 32
FUNCTIONS = frozenset({"FloorDiv", "CeilDiv", "Mod", "PythonMod", "Max", "Min", "Abs"})
_TOKEN = re.compile(r"\s*(?:(?P<integer>[0-9]+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<operator>//|[-+*%(),]))")
_SYMBOL = re.compile(r"[a-z]+[0-9]+")


class ExpressionError(ValueError):
    """The text is not a shape expression of the grammar above."""


def check_expression(text: str) -> None:
    """Return if `text` follows the grammar (module docstring), else raise ExpressionError saying why."""
    if not isinstance(text, str) or len(text) > MAX_LENGTH:
        raise ExpressionError(f"longer than {MAX_LENGTH} characters")
    _Parser(_tokens(text)).whole()


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ExpressionError(f"unexpected character {text[position:position + 1]!r}")
        kind = match.lastgroup
        value = match[kind]
        if kind == "integer" and len(value) > MAX_DIGITS:
            raise ExpressionError(f"an integer longer than {MAX_DIGITS} digits")
        if kind == "name" and value not in FUNCTIONS and not _SYMBOL.fullmatch(value):
            raise ExpressionError(f"'{value[:20]}' is neither a shape symbol nor an integer function")
        tokens.append((kind, value))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens, self.index, self.depth = tokens, 0, 0

    def whole(self) -> None:
        self.expression()
        if self.index != len(self.tokens):
            raise ExpressionError(f"unexpected '{self.tokens[self.index][1][:20]}'")

    def peek(self) -> str | None:
        return self.tokens[self.index][1] if self.index < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.index >= len(self.tokens):
            raise ExpressionError("ends too early")
        token = self.tokens[self.index]
        if expected is not None and token[1] != expected:
            raise ExpressionError(f"expected '{expected}', found '{token[1][:20]}'")
        self.index += 1
        return token

    def expression(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(f"nested more than {MAX_DEPTH} deep")
        self.term()
        while self.peek() in ("+", "-"):
            self.take()
            self.term()
        self.depth -= 1

    def term(self) -> None:
        self.unary()
        while self.peek() in ("*", "//", "%"):
            self.take()
            self.unary()  # a second '*' here is a unary without an atom: `**` never parses

    def unary(self) -> None:
        if self.peek() == "-":
            self.take()
            return self.expression_atom_after_minus()
        self.atom()

    def expression_atom_after_minus(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(f"nested more than {MAX_DEPTH} deep")
        self.unary()
        self.depth -= 1

    def atom(self) -> None:
        kind, value = self.take()
        if kind == "integer" or (kind == "name" and value not in FUNCTIONS):
            return
        if kind == "name":  # an integer function: its arguments follow in parentheses
            self.take("(")
            self.expression()
            while self.peek() == ",":
                self.take()
                self.expression()
            self.take(")")
            return
        if value != "(":
            raise ExpressionError(f"unexpected '{value}'")
        self.expression()
        self.take(")")
