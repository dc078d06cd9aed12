"""show_source: the text shown for functions, methods and classes, with and without their
signature and docstring, and the errors for objects that have no Python source."""

from __future__ import annotations

import functools
import inspect
import json
import textwrap
from pathlib import Path

import pytest
from IPython.display import Code

from mnc_teach import boxes
from mnc_teach.cascade import MNC
from mnc_teach.course import show_source

NOTEBOOKS = sorted(Path(__file__).resolve().parents[1].glob("notebooks/[0-9][0-9]_*.ipynb"))


def _logged(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


@_logged
@functools.cache
def scaled_area(
    width: float,
    height: float,
    *,
    key=lambda pair: pair[0],  # a colon inside the brackets: not the end of the header
) -> float:
    """Area of a box: "width" times 'height', even with \"\"\" inside.

    The last line is not ASCII: px² = px × px."""
    quotes = '"""'  # a splitter on triple quotes would cut here
    return width * height * len(quotes) / 3


class Box:
    """A box with a docstring of its own."""

    def __init__(self, width: float) -> None:
        self.width = width

    @staticmethod
    def unit() -> float:
        """One."""
        return 1.0

    def area(self, height: float) -> float:  # a comment on the header's line
        """Area of the box.

        It says "width times height".
        """

        # the body starts after a blank line and a comment
        return self.width * height


def https_port() -> int:
    https = 443  # a text that starts with "http" is not a URL here
    return https


def one_line(x: int) -> int: return x + 1  # noqa: E701, E704


SCALED_AREA_HEADER = '''\
@_logged
@functools.cache
def scaled_area(
    width: float,
    height: float,
    *,
    key=lambda pair: pair[0],  # a colon inside the brackets: not the end of the header
) -> float:
'''
SCALED_AREA_DOCSTRING = r'''    """Area of a box: "width" times 'height', even with \"\"\" inside.

    The last line is not ASCII: px² = px × px."""
'''
SCALED_AREA_BODY = """\
    quotes = '\"\"\"'  # a splitter on triple quotes would cut here
    return width * height * len(quotes) / 3
"""


def test_function_with_decorators_multiline_signature_and_quotes_in_its_docstring():
    shown = show_source(scaled_area)
    assert isinstance(shown, Code) and shown.language == "python"
    assert shown.data == SCALED_AREA_HEADER + SCALED_AREA_DOCSTRING + SCALED_AREA_BODY
    assert show_source(scaled_area, docstring=False).data == SCALED_AREA_HEADER + SCALED_AREA_BODY
    body_only = show_source(scaled_area, signature=False, docstring=False).data
    assert body_only == textwrap.dedent(SCALED_AREA_BODY)
    docstring_and_body = show_source(scaled_area, signature=False).data
    assert docstring_and_body == textwrap.dedent(SCALED_AREA_DOCSTRING + SCALED_AREA_BODY)


BOX_AREA = '''\
def area(self, height: float) -> float:  # a comment on the header's line
    """Area of the box.

    It says "width times height".
    """

    # the body starts after a blank line and a comment
    return self.width * height
'''


def test_method_is_dedented_and_its_body_kept_without_the_docstring():
    assert show_source(Box.area).data == BOX_AREA
    assert show_source(Box(2.0).area).data == BOX_AREA  # a bound method: its function
    assert show_source(Box.area, docstring=False).data == (
        "def area(self, height: float) -> float:  # a comment on the header's line\n"
        "    # the body starts after a blank line and a comment\n"
        "    return self.width * height\n"
    )
    assert show_source(Box.area, signature=False, docstring=False).data == (
        "# the body starts after a blank line and a comment\nreturn self.width * height\n"
    )
    assert show_source(Box.unit, docstring=False).data == (
        "@staticmethod\ndef unit() -> float:\n    return 1.0\n"
    )


def test_class_without_its_docstring_keeps_its_methods_docstrings():
    full = show_source(Box).data
    assert full == inspect.getsource(Box)
    without = show_source(Box, docstring=False).data
    assert without == full.replace('    """A box with a docstring of its own."""\n\n', "", 1)
    assert '"""One."""' in without and without.startswith("class Box:\n    def __init__")


def test_body_on_the_header_line_and_a_body_that_starts_with_http():
    assert show_source(one_line).data == (
        "def one_line(x: int) -> int: return x + 1  # noqa: E701, E704\n"
    )
    assert show_source(one_line, signature=False).data == "return x + 1  # noqa: E701, E704\n"
    assert show_source(https_port, signature=False).data == (
        'https = 443  # a text that starts with "http" is not a URL here\nreturn https\n'
    )


def test_package_source_is_shown_whole_and_highlighted():
    shown = show_source(boxes.encode_boxes)
    assert shown.data == inspect.getsource(boxes.encode_boxes)
    html = shown._repr_html_()
    assert '<span class="k">def</span>' in html and "encode_boxes" in html
    without = show_source(boxes.encode_boxes, docstring=False).data
    assert "Regression targets" not in without and '"""' not in without
    header, body = inspect.getsource(boxes.encode_boxes).split('"""')[::2]  # no quotes in it
    assert without == header.rstrip(" ") + body.lstrip("\n")
    forward = show_source(MNC.forward).data  # a method: dedented, nothing else changed
    assert forward == textwrap.dedent(inspect.getsource(MNC.forward))


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (len, "built in"),
        (int, "built in"),
        (Box(1.0), "not an instance of Box; to read its class"),
        (boxes, "not the module mnc_teach.boxes"),
        (lambda x: x, "lambda"),
    ],
)
def test_objects_without_python_source_raise_type_error(obj, message):
    with pytest.raises(TypeError, match=message):
        show_source(obj)


def test_notebooks_show_the_package_code_with_show_source():
    """DESIGN.md §4.12: notebooks show code with show_source, never by cutting getsource text."""
    cutting = [
        f"{path.name} cell {index}"
        for path in NOTEBOOKS
        for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"])
        if cell["cell_type"] == "code" and "getsource" in "".join(cell["source"])
    ]
    assert NOTEBOOKS and not cutting, f"use show_source, not inspect.getsource: {cutting}"
