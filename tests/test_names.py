"""User text (test ids, metric names, reasons) as each output format receives it."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from pytest_lowprec.names import csv_cell, file_name, markdown_text, terminal_text, xml_text
from pytest_lowprec.profiling import trace_path


def test_trace_file_for_a_metric_name_with_dot_dot_stays_in_the_trace_folder(tmp_path):
    path = trace_path(tmp_path / "traces", "t.py::test_x", "../../../etc/evil", "optimized")
    assert path.parent == tmp_path / "traces" and ".." not in path.name


def test_trace_file_for_a_name_with_slashes_creates_no_sub_folder(tmp_path):
    path = trace_path(tmp_path, "dir/t.py::test_x[a/b]", "metric/with/slashes", "baseline")
    assert path.parent == tmp_path and "/" not in path.name


def test_ids_that_differ_only_in_replaced_characters_get_different_trace_files(tmp_path):
    assert trace_path(tmp_path, "t.py::t[a/b]", "speedup", "optimized") != \
        trace_path(tmp_path, "t.py::t[a_b]", "speedup", "optimized")


def test_ids_that_differ_only_past_the_length_limit_get_different_trace_files(tmp_path):
    stem = "t.py::test_x[" + "a" * 400
    assert trace_path(tmp_path, stem + "1]", "speedup", "optimized") != \
        trace_path(tmp_path, stem + "2]", "speedup", "optimized")


def test_trace_file_for_a_5000_character_id_can_be_opened(tmp_path):
    path = trace_path(tmp_path, "t.py::test_x[" + "x" * 5000 + "]", "speedup", "optimized")
    path.write_text("{}")
    assert path.read_text() == "{}" and len(path.name) < 255


def test_trace_file_for_a_metric_name_with_a_lone_surrogate_can_be_opened(tmp_path):
    path = trace_path(tmp_path, "t.py::test_x", "sqnr\ud800", "optimized")  # not even surrogateescape's
    path.write_text("{}")
    assert path.read_text() == "{}"


def test_trace_file_name_starts_with_neither_a_dot_nor_a_dash(tmp_path):
    name = file_name(("..-hidden", "m", "s"), ".json")
    assert not name.startswith((".", "-"))


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://evil\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_csv_cell_that_starts_like_a_formula_is_written_as_text(text):
    assert csv_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["sqnr_db", "fp8,nvfp4", 1.5, None])
def test_csv_cell_that_cannot_be_a_formula_is_unchanged(value):
    assert csv_cell(value) == value


def test_markdown_cell_keeps_its_table_row_whole():
    cell = markdown_text("a|b\r\nc\rd\ne")
    assert "\n" not in cell and "\r" not in cell and cell.count("|") == cell.count("\\|") == 1


def test_markdown_image_is_shown_as_text():
    assert "![x](" not in markdown_text("![x](http://evil.example/x.png)")


def test_markdown_mention_and_issue_reference_notify_nobody():
    cell = markdown_text("@octocat fixes #123")
    assert "@octocat" not in cell and "#123" not in cell
    assert cell == "@&#8203;octocat fixes #&#8203;123"


def test_markdown_html_and_emphasis_are_shown_as_text():
    assert markdown_text("<b>*x*</b> _y_ `z`") == "&lt;b&gt;\\*x\\*&lt;/b&gt; \\_y\\_ \\`z\\`"


def test_markdown_keeps_underscores_inside_a_name():
    assert markdown_text("test_workloads.py::test_regressed") == "test_workloads.py::test_regressed"


def test_xml_text_is_accepted_by_an_xml_parser():
    name = xml_text("lowprec.bad\x01\x08\x1bname\udc80\ufffe")
    element = ET.fromstring(ET.tostring(ET.Element("property", name=name)))
    assert element.get("name") == "lowprec.badname"


def test_terminal_text_drops_ansi_escapes_and_control_characters():
    assert terminal_text("\x1b[31mred\x1b[0m \x1b]0;title\x07ok\x07\x08\u202e") == "red ok"


def test_terminal_text_turns_line_breaks_into_spaces():
    assert terminal_text("a\nb\r\tc") == "a b  c"


@pytest.mark.parametrize("escape", [terminal_text, markdown_text, csv_cell])
def test_a_lone_surrogate_is_shown_as_its_escape_and_encodes_as_utf8(escape):
    text = escape("sqnr\udc80")
    assert "udc80" in text and text.encode("utf-8")
