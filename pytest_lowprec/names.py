"""User text made safe for where it lands: file names, CSV cells, markdown, XML, the terminal.

Test ids, metric names and reasons are user text: a parametrize id or a metric
name can hold `/`, `..`, `=`, `|`, `@name`, an ANSI escape or a lone surrogate.
Each output format escapes it once, here, with the rule that format needs; the
renderers call these functions and decide nothing about escaping themselves.
Pure: no pytest, no I/O.
"""

from __future__ import annotations

import hashlib
import re

# A file name keeps these characters; every other run becomes one "_".
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_DOT_RUNS = re.compile(r"\.{2,}")
# The readable part of a file name; the hash and suffix keep the whole name well under 255 bytes.
FILE_STEM_CHARS = 150
_HASH_CHARS = 10

# ANSI escape sequences (CSI with its parameters, OSC up to its terminator, two-byte ESC forms).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")
# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a reader sees.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SPACES = re.compile(r"[\t\n\v\f\r]")
# What XML 1.0 cannot hold at all, even escaped.
_NOT_XML = re.compile(r"[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Characters a spreadsheet reads as the start of a formula (OWASP's list).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
# Markdown punctuation that starts markup inside a table cell: code, emphasis, links and images
# (with "[" escaped, "![x](url)" is plain text), strikethrough, the cell separator. "_" is handled apart.
_MARKDOWN_PUNCT = re.compile(r"([\\`*\[\]~|])")


def _unicode(text: object) -> str:
    """`text` as a string any UTF-8 encoder takes: a lone surrogate becomes its visible \\udcXX escape."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def name_hash(*parts: str) -> str:
    """A short digest of the original text (surrogates included), so distinct names keep distinct files."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:_HASH_CHARS]


def file_stem(text: str, limit: int = FILE_STEM_CHARS) -> str:
    """The readable part of a file name: ASCII letters, digits, `_.-` only; no separator, no `..`,
    no leading dot or dash; at most `limit` characters. Not unique on its own: add `name_hash`."""
    stem = _UNSAFE_FILE_CHARS.sub("_", text)
    stem = _DOT_RUNS.sub(".", stem).lstrip("._-")
    return stem[:limit].rstrip("._-") or "_"


def file_name(parts: tuple[str, ...], suffix: str) -> str:
    """One file name for the tuple `parts` (test id, metric, side ...): readable, and unique per tuple.

    Later parts keep up to 40 characters each and the first takes the rest of the budget; the
    hash covers the parts as given, so `t[a/b]` and `t[a_b]`, or ids that only differ past the
    length limit, never share a file."""
    tail = [file_stem(p, 40) for p in parts[1:]]
    head = file_stem(parts[0], FILE_STEM_CHARS - sum(len(t) + 1 for t in tail))
    return ".".join([head, *tail, name_hash(*parts)]) + suffix


def csv_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: a cell starting like a formula gets a leading quote."""
    if not isinstance(value, str):
        return value
    text = _unicode(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def terminal_text(text: object) -> str:
    """Text for a terminal: ANSI escapes and control characters removed; a tab or line break (which
    would break a table row) becomes a space."""
    return _CONTROLS.sub("", _SPACES.sub(" ", _ANSI.sub("", _unicode(text))))


def xml_text(text: object) -> str:
    """Text an XML 1.0 document can hold: characters XML forbids (controls, surrogates) removed."""
    return _NOT_XML.sub("", str(text))


def markdown_text(text: object) -> str:
    """Text for one markdown table cell that renders as the literal text it is.

    HTML is escaped, markup characters are backslash-escaped, line breaks and controls become
    spaces, and `@name` / `#123` get a zero-width space after the sign, so a summary posted on a
    pull request mentions nobody and links no issue."""
    text = _ANSI.sub("", _unicode(text))
    text = _CONTROLS.sub(" ", text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MARKDOWN_PUNCT.sub(r"\\\1", text)
    # "_" starts emphasis only at a word's edge; inside a name (test_gemm) it stays as written.
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)
    return re.sub(r"([@#])(?=\w)", "\\1&#8203;", text)
