"""The text IR: printing, parsing, round trips, inline constants and parse errors."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import graphc as gc
from graphc.errors import SerializationError, SourceLoc
from graphc.io.textcursor import LineCursor
from graphc.io.textir import (
    INLINE_LIMIT,
    format_graph,
    format_value,
    graph_diff,
    graphs_equal,
    parse_graph,
)
from graphc.ir import TensorType
from tests.graphgen import GeneratedGraph, random_graphs

GOLDEN = """\
graph "mlp"
signature "train" (%x) -> (%loss) updates (%w <- %new_w)
%x = placeholder : f32[2,3]  loc("model.py":3 in "build")
%w = variable {trainable=true} : f32[2,3]  loc("model.py":4 in "build")
%two = constant {value=2.0} : f32[]
%m = constant {value=[[1.0, -0.0, 0.1], [inf, -inf, nan]]} : f32[2,3]
%h = mul(%x, %w) : f32[2,3]  loc("model.py":12)
%t = tanh(%h) : f32[2,3]
%e = leaky_relu(%t) {alpha=0.25} : f32[2,3]
%loss = cast(%e) {dtype=float64} : f64[2,3]
%new_w = sub(%w, %two) : f32[2,3]
"""


def _values(g: gc.Graph) -> dict[str, np.ndarray]:
    return {**g.constants, **{k: g.variables[k] for k in g.variables}}


def test_golden_text_parses_and_prints_back_identically() -> None:
    g = parse_graph(GOLDEN)
    assert format_graph(g) == GOLDEN
    assert [n.name for n in g.nodes] == ["x", "w", "two", "m", "h", "t", "e", "loss", "new_w"]
    assert g["h"].inputs == (g["x"], g["w"])
    assert g["h"].loc == SourceLoc("model.py", 12, "")
    assert g["x"].loc == SourceLoc("model.py", 3, "build")
    assert g["t"].loc is None
    assert g["e"].attrs["alpha"] == 0.25
    assert g["loss"].attrs["dtype"] is gc.float64
    assert g["loss"].type == TensorType((2, 3), gc.float64)
    sig = g.signatures["train"]
    assert sig.inputs == (g["x"],) and sig.outputs == (g["loss"],)
    assert sig.updates == ((g["w"], g["new_w"]),)
    m = g.constants["m"]
    assert m.dtype == np.float32 and m[0, 2] == np.float32(0.1)
    assert np.signbit(m[0, 1]) and m[1, 0] == np.inf and m[1, 1] == -np.inf and np.isnan(m[1, 2])
    assert g.constants["two"].shape == () and not g.constants["two"].flags.writeable
    # a variable without a value in `values` starts at zero
    assert np.array_equal(g.variables["w"], np.zeros((2, 3), np.float32))
    gc.verify(g)


def test_parsed_graph_runs_like_the_original() -> None:
    g = parse_graph(GOLDEN, {"w": np.full((2, 3), 0.5, np.float32)})
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = gc.reference(g, signature="train")(x)[0]
    t = np.tanh(x * 0.5)
    np.testing.assert_allclose(out, np.where(t > 0, t, 0.25 * t), rtol=1e-6)


def test_builder_graph_round_trips_with_names_locs_attrs_and_signatures() -> None:
    with gc.Graph("model \"quoted\"\n") as g:
        x = gc.placeholder((4, 3), name="x")
        w = gc.variable(np.ones((4, 3), np.float32), name="layer/w.0")
        big = gc.constant(np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5), name="big")
        y = gc.gelu(x * w, approximate="tanh")
        z = gc.cast(gc.sum(y, axis=(1,), keepdims=True), gc.float64)
        g.add_signature("train", [x], [z], {w: gc.where(x > 0.5, x, w)})
        g.add_signature("predict", [x], [y, big])
    text = format_graph(g)
    assert "%big = constant : f32[4,5]" in text  # too large to print inline
    back = parse_graph(text, {"big": g.constants["big"], "layer/w.0": g.variables["layer/w.0"]})
    assert graph_diff(g, back) is None
    assert graphs_equal(g, back)
    assert list(back.signatures) == ["train", "predict"]
    assert format_graph(back) == text


def test_every_attribute_kind_round_trips_exactly() -> None:
    """The value encoding of the text IR (every kind an attribute can hold) parses back to
    the same value, type-strict; quoted keys decode (an undeclared one is then refused)."""
    values = {
        "i": -7, "big": 2**70, "f": 0.1, "neg_zero": -0.0, "tiny": 5e-324, "huge": 1e300,
        "pinf": math.inf, "ninf": -math.inf, "nan": math.nan, "t": True, "fl": False,
        "none": None, "s": 'a "quoted" \\ line\nnext\ttab \u2028 é', "empty": "",
        "dt": gc.int64, "tup": (1, (2.5, (gc.bool_, None)), "x"), "one": (3,), "unit": (),
    }
    for key, value in values.items():
        text = format_value(value)
        back = LineCursor(text, 1).value()
        assert type(back) is type(value), key
        if key == "nan":
            assert math.isnan(back)
        elif key == "neg_zero":
            assert back == 0.0 and math.copysign(1.0, back) == -1.0
        else:
            assert back == value, key
    assert format_value(gc.int64) == "int64" and format_value((3,)) == "(3,)"
    assert format_value(math.inf) == "inf" and format_value(-math.inf) == "-inf"
    with gc.Graph("attrs") as g:
        g.add_node("placeholder", [], {"odd key!": 1}, TensorType((2,), gc.float32), name="p")
    text = format_graph(g)
    assert '"odd key!"=1' in text
    with pytest.raises(gc.SerializationError, match="unknown attribute 'odd key!'"):
        parse_graph(text)


def test_graph_diff_is_type_strict() -> None:
    def one(value: object) -> gc.Graph:
        with gc.Graph("g") as g:
            g.add_node("placeholder", [], {"a": value}, TensorType((), gc.float32), name="p")
        return g

    assert graph_diff(one(1), one(1)) is None
    assert graph_diff(one(1), one(1.0)) is not None
    assert graph_diff(one(1), one(True)) is not None
    assert graph_diff(one(0.0), one(-0.0)) is not None
    assert graph_diff(one((1,)), one((1, 1))) is not None


@pytest.mark.parametrize(("value", "dtype"), [
    (np.float32(3.5), "float32"),
    (np.array([[1, -2], [3, 4]], np.int32), "int32"),
    (np.array([True, False]), "bool"),
    (np.array([2**40, -1], np.int64), "int64"),
    (np.array([0.1, 1 / 3, 1e-30], np.float64), "float64"),
    (np.zeros((0, 3), np.float32), "float32"),
    (np.arange(INLINE_LIMIT, dtype=np.float32), "float32"),
])
def test_small_constants_print_inline_and_read_back_exactly(value: np.ndarray,
                                                            dtype: str) -> None:
    with gc.Graph("c") as g:
        gc.constant(value, dtype=dtype, name="c")
    text = format_graph(g)
    assert "value=" in text
    back = parse_graph(text)
    assert graph_diff(g, back) is None
    assert back.constants["c"].dtype == np.dtype(dtype)


def test_float32_constants_print_shortest_digits() -> None:
    with gc.Graph("c") as g:
        gc.constant(np.array([0.1, 1 / 3], np.float32), name="c")
    assert "{value=[0.1, 0.33333334]}" in format_graph(g)


def test_large_constant_needs_values_and_variables_take_given_values() -> None:
    text = 'graph "g"\n%c = constant : f32[17]\n%v = variable {trainable=false} : f32[2]\n'
    with pytest.raises(SerializationError, match=r"line 2.*constant %c \(f32\[17\]\) has no "
                                                 r"value.*values="):
        parse_graph(text)
    given = {"c": np.arange(17, dtype=np.float32), "v": np.array([1.0, 2.0], np.float32)}
    g = parse_graph(text, given)
    assert np.array_equal(g.constants["c"], given["c"])
    assert np.array_equal(g.variables["v"], given["v"])
    g.variables["v"][0] = 9.0  # the caller's array is copied, not shared
    assert given["v"][0] == 1.0


def test_bad_values_are_rejected() -> None:
    text = 'graph "g"\n%v = variable : f32[2]\n'
    with pytest.raises(SerializationError, match=r"float64\[2\], its type is f32\[2\]"):
        parse_graph(text, {"v": np.zeros(2)})
    with pytest.raises(SerializationError, match=r"not variables or constants.*nope"):
        parse_graph(text, {"nope": np.zeros(2, np.float32)})


def test_comments_and_blank_lines_are_ignored() -> None:
    text = '# a golden file\n\ngraph "g"  # header\n  %x = placeholder : f32[]  # input\n\n'
    g = parse_graph(text)
    assert [n.name for n in g.nodes] == ["x"]


def test_strings_are_data_never_code() -> None:
    text = '"__import__(\'os\').system(\'false\')"'
    assert LineCursor(text, 1).value() == "__import__('os').system('false')"
    with pytest.raises(SerializationError, match="unknown op '__import__'"):
        parse_graph('graph "g"\n%x = __import__ : f32[]\n')
    with pytest.raises(SerializationError, match="unknown word 'os'"):
        parse_graph('graph "g"\n%x = placeholder {s=os} : f32[]\n')


_HEAD = 'graph "g"\n%a = placeholder : f32[2,3]\n'


@pytest.mark.parametrize(("text", "line", "column", "fragment"), [
    (_HEAD + "%b = add(%a, %c) : f32[2,3]", 3, 14, "%c is not defined before this line"),
    (_HEAD + "%b = add(%a, %a) : f32[2,4]", 3, 20, "infers f32[2,3], the file says f32[2,4]"),
    (_HEAD + "%b = frob(%a) : f32[2,3]", 3, 6, "unknown op 'frob'"),
    (_HEAD + "%b = add(%a %a) : f32[2,3]", 3, 13, "expected ',' or ')', got '%a'"),
    (_HEAD + "%a = neg(%a) : f32[2,3]", 3, 1, "the name 'a' is already used"),
    (_HEAD + "%b = neg(%a, %a) : f32[2,3]", 3, 9, "takes 1 input(s), got 2"),
    (_HEAD + "%b = add(%a, %a) : f32[2,3] extra", 3, 29, "expected end of line, got 'extra'"),
    (_HEAD + "%b = neg(%a) : q32[2,3]", 3, 16, "unknown element type 'q32'"),
    (_HEAD + "%b = neg(%a) f32[2,3]", 3, 14, "expected ':', got 'f32'"),
    (_HEAD + "%b = neg(%a) : f32[2,3]  loc(\"m.py\":x)", 3, 37, "expected a line number"),
    (_HEAD + "%b = neg(%a) {k=[1]} : f32[2,3]", 3, 17, "lists are only for constant values"),
    (_HEAD + "%b = neg(%a) {k=1, k=2} : f32[2,3]", 3, 20, "attribute 'k' given twice"),
    (_HEAD + '%b = neg(%a) {s="\\q"} : f32[2,3]', 3, 17, "bad string escape"),
    (_HEAD + "%b = neg(%a) {k=12abc} : f32[2,3]", 3, 17, "malformed number"),
    (_HEAD + "%b = cast(%a) {dtype=3} : f32[2,3]", 3, 15,
     "attribute 'dtype': expected a dtype, got 3"),
    ('graph "g"\n%c = constant {value=[1.0, 2.0]} : f32[3]', 2, 15, "shape (2,), the type is"),
    ('graph "g"\n%c = constant {value=[1, true]} : i32[2]', 2, 15, "true is not a int32"),
    ('graph "g"\n%c = constant {value=[[1], [2, 3]]} : i32[3]', 2, 15, "ragged"),
    ('graph "g"\n%c = constant {value=[3000000000]} : i32[1]', 2, 15, "does not fit i32[1]"),
    ('graph "g"\nsignature "s" (%q) -> ()\n%a = placeholder : f32[]', 2, 16, "names %q"),
    ('%a = placeholder : f32[]', 1, 1, "expected the header `graph \"name\"`"),
    ('graph g', 1, 7, "expected the graph name as a quoted string"),
])
def test_parse_errors_name_line_column_and_expectation(text: str, line: int, column: int,
                                                        fragment: str) -> None:
    with pytest.raises(SerializationError) as info:
        parse_graph(text)
    message = str(info.value)
    assert message.startswith(f"line {line}, column {column}: "), message
    assert fragment in message
    # The offending line is quoted with a caret under the column.
    quoted, caret = message.splitlines()[-2:]
    assert quoted == "  " + text.split("\n")[line - 1]
    assert caret == "  " + " " * (column - 1) + "^"


def test_empty_text_is_an_error() -> None:
    with pytest.raises(SerializationError, match="empty text IR"):
        parse_graph("# nothing\n")


def test_signature_type_errors_are_reported() -> None:
    text = 'graph "g"\nsignature "s" () -> () updates (%v <- %p)\n' \
           "%v = variable : f32[2]\n%p = placeholder : f32[3]\n"
    with pytest.raises(SerializationError, match=r"line 2.*signature 's'.*f32\[2\].*f32\[3\]"):
        parse_graph(text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs())
def test_random_graphs_round_trip_through_text(gen: GeneratedGraph) -> None:
    text = format_graph(gen.graph)
    back = parse_graph(text, _values(gen.graph))
    assert graph_diff(gen.graph, back) is None
    assert format_graph(back) == text
    for a, b in zip(gen.evaluate(), gen.evaluate(back)):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs())
def test_random_graphs_round_trip_with_inline_constants_only(gen: GeneratedGraph) -> None:
    # Without `values`: small constants come back from the text, variables become zeros.
    large = {k: v for k, v in gen.graph.constants.items() if v.size > INLINE_LIMIT}
    back = parse_graph(format_graph(gen.graph), large)
    assert graph_diff(gen.graph, back, variables=False) is None
    assert all(not back.variables[k].any() for k in back.variables)


def test_error_message_names_the_missing_piece_without_regex_surprises() -> None:
    with pytest.raises(SerializationError) as info:
        parse_graph(_HEAD + "%b = neg(")
    assert re.search(r"expected a node name like %x, got end of line", str(info.value))


def test_missing_or_malformed_attributes_are_parse_errors_not_crashes() -> None:
    for text, expected in (
            (_HEAD + "%b = sum(%a) : f32[]", "missing attribute 'axes'"),
            (_HEAD + '%b = sum(%a) {axes="x", keepdims=false} : f32[]',
             "attribute 'axes': expected a tuple of ints >= 0, got 'x'")):
        with pytest.raises(SerializationError, match=f"line 3.*{re.escape(expected)}"):
            parse_graph(text)
