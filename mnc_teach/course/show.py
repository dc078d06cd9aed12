"""Show the package's code in a notebook: the package is the source of truth (DESIGN.md §4.12).

``show_source(fn)`` returns the source of a function, class or method as an
``IPython.display.Code``, which a notebook renders syntax-highlighted. The signature and the
docstring can each be left out. Both are found with ``ast`` (the docstring node) and ``tokenize``
(the colon that ends the header), not by cutting the text at its quotes, which breaks as soon as
a docstring contains quotes or a signature spans several lines.
"""

from __future__ import annotations

import ast
import inspect
import io
import itertools
import tokenize

from IPython.display import Code

__all__ = ["show_source"]


def show_source(obj: object, *, signature: bool = True, docstring: bool = True) -> Code:
    """The source of a function, class or method of the package, dedented and syntax-highlighted.

    Args:
        obj: a function, class or method written in Python (``encode_boxes``, ``MNC``,
            ``RPNHead.forward``).
        signature: keep the header: the decorators and the ``def`` / ``class`` line(s) up to
            the colon that opens the body. Without it, the body is shown dedented.
        docstring: keep the docstring. Without it, the docstring's lines and the blank lines
            right after them are left out; the rest of the body is kept as written.

    Returns:
        An ``IPython.display.Code``: as a cell's last expression (or in ``display(...)``) it shows
        highlighted; its ``.data`` is the text.

    Raises:
        TypeError: ``obj`` has no Python source to show (a builtin, an instance, a lambda).
    """
    source = _dedent(_source_of(obj))
    node = ast.parse(source).body[0]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        raise TypeError(f"show_source found no def or class in the source of {obj!r}")
    lines = source.splitlines(keepends=True)
    line_starts = [0, *itertools.accumulate(len(line) for line in lines)]
    cuts = []  # (start, end) character offsets into source, left out of what is shown
    if not signature:
        cuts.append(_header_span(source, lines, line_starts, node))
    if not docstring and ast.get_docstring(node, clean=False) is not None:
        cuts.append(_docstring_span(lines, line_starts, node.body[0]))
    shown, kept_from = [], 0
    for start, end in sorted(cuts):
        shown.append(source[kept_from:start])
        kept_from = max(kept_from, end)
    shown.append(source[kept_from:])
    text = "".join(shown)
    if not signature:
        text = _dedent(text, indent=_body_indent(lines, node))
    code = Code(language="python")
    code.data = text  # not Code(text): IPython takes a text that starts with "http" for a URL
    return code


def _source_of(obj: object) -> str:
    """``inspect.getsource(obj)``, with an error that says what to pass instead when it has none."""
    function = obj.__func__ if inspect.ismethod(obj) else obj  # a bound method: its function
    if inspect.isfunction(function) and function.__name__ == "<lambda>":
        raise TypeError("show_source shows a def or a class; a lambda has none of its own")
    if inspect.isfunction(function) or inspect.isclass(function):
        try:
            return inspect.getsource(function)
        except TypeError as error:  # a class written in C: int, torch.Size
            raise TypeError(
                f"show_source: {function.__qualname__} is built in (compiled), it has no Python "
                "source"
            ) from error
    if inspect.isroutine(obj):
        raise TypeError(
            f"show_source: {getattr(obj, '__qualname__', obj)!r} is built in (compiled), it has "
            "no Python source"
        )
    if inspect.ismodule(obj):
        raise TypeError(
            f"show_source shows a function, class or method, not the module {obj.__name__}"
        )
    kind = type(obj).__qualname__
    raise TypeError(
        f"show_source shows a function, class or method, not an instance of {kind}; "
        "to read its class, pass the class: show_source(type(obj))"
    )


def _dedent(text: str, indent: str | None = None) -> str:
    """``text`` without ``indent`` (default: the first line's) at the start of each line.

    Unlike ``textwrap.dedent``, a line of a multi-line string written further left (or a blank
    line) does not stop the others from being dedented.
    """
    if indent is None:
        indent = text[: len(text) - len(text.lstrip(" \t"))]
    return "".join(
        line[len(indent) :] if line.startswith(indent) else line
        for line in text.splitlines(keepends=True)
    )


def _header_span(
    source: str, lines: list[str], line_starts: list[int], node: ast.stmt
) -> tuple[int, int]:
    """Offsets of the header: decorators, then ``def``/``class`` up to the colon at bracket depth 0,
    with the rest of that line when only spaces or a comment follow the colon."""
    depth = 0  # open ( [ {: a colon inside them is an annotation, a slice or a lambda's
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.start[0] < node.lineno or token.type != tokenize.OP:
            continue  # the decorators (before node.lineno) may hold colons of their own
        if token.string in {"(", "[", "{"}:
            depth += 1
        elif token.string in {")", "]", "}"}:
            depth -= 1
        elif token.string == ":" and depth == 0:
            line, col = token.end
            break
    else:
        raise ValueError(f"show_source found no colon after the header at line {node.lineno}")
    rest = lines[line - 1][col:]
    if rest.strip() == "" or rest.lstrip().startswith("#"):
        return 0, line_starts[line]  # the body starts on the next line
    return 0, line_starts[line - 1] + col + len(rest) - len(rest.lstrip(" \t"))  # def f(): ...


def _docstring_span(lines: list[str], line_starts: list[int], doc: ast.stmt) -> tuple[int, int]:
    """Offsets of the docstring statement ``doc``: its whole lines and the blank lines after them
    when it stands on lines of its own, else the string alone."""
    start = line_starts[doc.lineno - 1] + _char_col(lines[doc.lineno - 1], doc.col_offset)
    end = line_starts[doc.end_lineno - 1] + _char_col(lines[doc.end_lineno - 1], doc.end_col_offset)
    before = lines[doc.lineno - 1][: start - line_starts[doc.lineno - 1]]
    after = lines[doc.end_lineno - 1][end - line_starts[doc.end_lineno - 1] :]
    if before.strip() or after.strip():
        return start, end  # shares a line with other code: def f(): """...""" or """..."""; x = 1
    last = doc.end_lineno
    while last < len(lines) and lines[last].strip() == "":
        last += 1
    return line_starts[doc.lineno - 1], line_starts[last]


def _body_indent(lines: list[str], node: ast.stmt) -> str:
    """The indentation of the body's lines ('' for a body on the header's line)."""
    first = node.body[0]
    if lines[first.lineno - 1][: first.col_offset].strip():
        return ""  # code before it on its line: the header's colon
    return lines[first.lineno - 1][: first.col_offset]  # spaces and tabs: bytes == characters


def _char_col(line: str, byte_col: int) -> int:
    """The character column of ``ast``'s byte column ``byte_col`` (UTF-8) in ``line``."""
    return len(line.encode("utf-8")[:byte_col].decode("utf-8"))
