"""Text from an upload, made safe for the medium it lands in: one helper per medium, used everywhere.

Every string that comes from an upload (column names, cells, categories, labels, architecture names, file
names, messages quoting them) goes through one of these before it is written into HTML, Markdown or a
terminal, or quoted in an error message:

- `html_text`: HTML (the page's own markup): `& < > " '` become entities.
- `md_text`: Markdown prose and table cells: every Markdown punctuation character is backslash-escaped
  and `& < >` become entities, so no emphasis, link, image, raw HTML or table cell break comes from it.
- `md_inline`: Markdown prose or a table cell, left as it is where nothing in it can become markup (words,
  numbers), else `md_text`.
- `md_code`: an inline code span whose fence is longer than any backtick run in the value, so the value
  cannot end the span; `|` escaped in table cells (GFM reads it before code spans).
- `terminal`: control characters (C0, C1, DEL) and other invisible or line-breaking characters shown as
  escapes like `\\x1b`, so nothing printed moves the cursor, sets the title or forges a line.
- `cut`: at most `limit` characters of a text, saying how long it was (`excerpt` is its repr() for
  error messages: at most ~200 characters quoted).
"""

from __future__ import annotations

import html
import re
from typing import Any

__all__ = ["EXCERPT", "cut", "excerpt", "html_text", "md_code", "md_inline", "md_text", "terminal"]

EXCERPT = 200  # characters of a value an error message quotes

# md_text's one-pass table: `& < >` as entities, and a backslash before CommonMark's escapable ASCII
# punctuation that can make markup (with `|` for GFM tables)
_MD_TEXT = {ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;"} | {ord(c): "\\" + c for c in "\\`*_{}[]()#+-.!|~$"}
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")


def html_text(value: object) -> str:
    """`value` as text inside HTML (element content or a quoted attribute)."""
    return html.escape(str(value), quote=True)


def md_text(value: object) -> str:
    """`value` as literal text in Markdown prose or a table cell (one line: line breaks become spaces)."""
    return _LINE_BREAKS.sub(" ", terminal(value)).translate(_MD_TEXT)  # one pass: a megabyte in ~0.1 s


def md_code(value: object, *, table: bool = False) -> str:
    """`value` as an inline code span: a fence one backtick longer than its longest backtick run (padded
    with a space where the value starts or ends with a backtick), line breaks as spaces. table=True: in a
    table cell, where GFM splits cells at `|` before it reads code spans, so `|` is escaped (and shown
    as `|`; outside a table the backslash would show)."""
    text = _LINE_BREAKS.sub(" ", terminal(value))
    if table:
        text = text.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def terminal(value: object, *, newlines: bool = False) -> str:
    """`value` safe to print: control and other non-printable characters become visible escapes like
    \\x1b. newlines=True keeps line breaks (multi-line messages of our own)."""
    text = str(value)
    if text.isprintable():
        return text
    if newlines:
        return "\n".join(terminal(line) for line in text.split("\n"))
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def cut(text: str, limit: int, *, quoted: bool = False) -> str:
    """At most `limit` characters of `text`, followed by its whole length where it was cut; quoted=True
    gives the kept part as repr() (an error message quoting a value)."""
    if len(text) <= limit:
        return repr(text) if quoted else text
    kept = text[:limit]
    return f"{kept!r}... ({len(text):,} characters)" if quoted else f"{kept}... ({len(text):,} characters)"


def excerpt(value: object, limit: int = EXCERPT) -> str:
    """repr() of at most `limit` characters of `value`, with its length when it was cut: what an error
    message quotes of what it was given (never a whole megabyte back)."""
    return cut(str(value), limit, quoted=True)


# Characters that start no inline Markdown (no emphasis, code, link, image, raw HTML, entity, escape, math,
# strikethrough or table cell break): letters, digits, this punctuation, any non-ASCII character (the
# non-printable ones fail str.isprintable), and `_` between letters and digits only (CommonMark never opens
# or closes emphasis inside a word with it). One character class, so a megabyte is checked in ~0.1 s.
_INERT = re.compile(r"[A-Za-z0-9 ,.;:%+=()\[\]/'\"?!#\-_\x80-\U0010ffff]*")
_LOOSE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# ...unless they make a link or an autolink together (GFM links bare `www.` and `http://` addresses)
_LINKS = re.compile(r"://|www\.|\]\(|\]\[|!\[", re.IGNORECASE)
# where a value at the start of a line (or of a list item) would open a block: a list, a heading, a quote,
# a thematic break, a task box, a link definition, indented code
_BLOCK_START = re.compile(r"[ \t>\[]|[#+\-=*](?:[ \t]|$)|-{2,}|={2,}|\d{1,9}[.)](?:[ \t]|$)")


def md_inline(value: Any, *, cell: bool = False) -> str:
    """`value` as literal text in Markdown prose (cell=True: a table cell, where no block can start): as it
    is when nothing in it can become markup (words, numbers, `1.5e-07`, `top-5 100.0%`, `lin2 (Linear)`),
    else escape.md_text (every Markdown character escaped; leading blanks dropped: indented code). Safe
    anywhere in a line, and at its start."""
    text = str(value)
    if (
        text.isprintable()
        and _INERT.fullmatch(text)
        and not _LOOSE_UNDERSCORE.search(text)
        and not _LINKS.search(text)
        and (cell or not _BLOCK_START.match(text))
    ):
        return text
    return md_text(text).lstrip(" \t")
