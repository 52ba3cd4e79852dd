"""Answers as HTML: Markdown rendered, hostile markup shown as text and never run, controls made visible."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest

from deft_app.render import MAX_DEPTH, TAGS, TOO_DEEP_NOTE, _sanitise, answer_html, raw_html

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    "[x](javascript:alert(1))",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[x](JaVaScRiPt:alert(1))",
    "[x](java&#x09;script:alert(1))",
    "[x](vbscript:msgbox(1))",
    "[x](/download?all=1)",
    "![x](http://example.invalid/a.png)",
    "<svg onload=alert(1)>",
    "<style>body{display:none}</style>",
    "<iframe src=https://example.invalid/></iframe>",
    '```"><script>alert(1)</script>\ncode\n```',
    '[x](http://example.invalid/ "title onmouseover=alert(1)")',
]


class Tags(HTMLParser):
    """The start tags of an HTML fragment with their attributes."""

    def __init__(self, fragment):
        super().__init__()
        self.tags = []
        self.feed(fragment)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def assert_safe(fragment):
    for tag, attrs in Tags(fragment).tags:
        assert tag in TAGS, (tag, fragment)
        assert set(attrs) <= {"href", "rel", "class"}, (tag, attrs)
        assert not any(name.startswith("on") for name in attrs), attrs
        if "href" in attrs:
            assert tag == "a" and urlsplit(attrs["href"]).scheme in ("http", "https", "mailto"), attrs
        if "class" in attrs:
            assert tag == "code" and attrs["class"].startswith("language-"), attrs
    for banned in ("<script", "<style", "<iframe", "<img", "<svg"):
        assert banned not in fragment.lower()


def test_markdown_is_rendered():
    out = answer_html("# Title\n\nSome *em* and **strong** and `x < y`.\n\n- one\n- two\n\n1. first\n\n> quoted\n\n---")
    assert out == ("<h1>Title</h1>\n<p>Some <em>em</em> and <strong>strong</strong> and <code>x &lt; y</code>.</p>\n"
                   "<ul>\n<li>one</li>\n<li>two</li>\n</ul>\n<ol>\n<li>first</li>\n</ol>\n"
                   "<blockquote>\n<p>quoted</p>\n</blockquote>\n<hr>\n")


def test_code_blocks_keep_their_content_escaped():
    assert answer_html("```python\nif a < b and c > d:\n    print('<b>&')\n```") == (
        '<pre><code class="language-python">if a &lt; b and c &gt; d:\n    print(\'&lt;b&gt;&amp;\')\n</code></pre>\n')
    assert answer_html("    <b>indented</b>") == "<pre><code>&lt;b&gt;indented&lt;/b&gt;\n</code></pre>\n"


def test_tables_and_strikethrough():
    out = answer_html("| a | b |\n|--:|---|\n| 1 | 2 |\n\n~~gone~~")
    assert out == ("<table>\n<thead>\n<tr>\n<th>a</th>\n<th>b</th>\n</tr>\n</thead>\n"
                   "<tbody>\n<tr>\n<td>1</td>\n<td>2</td>\n</tr>\n</tbody>\n</table>\n<p><del>gone</del></p>\n")


def test_safe_links_keep_href_and_get_rel():
    assert answer_html("[docs](https://example.org/a?b=1&c=2)") == (
        '<p><a href="https://example.org/a?b=1&amp;c=2" rel="noopener noreferrer nofollow">docs</a></p>\n')
    assert answer_html("<mailto:a@example.org>") == (
        '<p><a href="mailto:a@example.org" rel="noopener noreferrer nofollow">mailto:a@example.org</a></p>\n')


def test_images_show_as_their_alt_text():
    assert answer_html("see ![a *chart*](http://example.invalid/a.png) here") == "<p>see a chart here</p>\n"


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_answers_are_never_markup(text):
    assert_safe(answer_html(text))


@pytest.mark.parametrize("text, shown", [
    ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
    ("<img src=x onerror=alert(1)>", "&lt;img src=x onerror=alert(1)&gt;"),
    ('<a href="javascript:alert(1)">x</a>', '&lt;a href="javascript:alert(1)"&gt;x&lt;/a&gt;'),
    ("<svg onload=alert(1)>", "&lt;svg onload=alert(1)&gt;"),
    ("<style>body{display:none}</style>", "&lt;style&gt;body{display:none}&lt;/style&gt;"),
    ("[x](javascript:alert(1))", "[x](javascript:alert(1))"),
])
def test_hostile_markup_stays_visible_as_text(text, shown):
    assert answer_html(text) == f"<p>{shown}</p>\n"


def test_links_the_sanitiser_refuses_keep_their_text_only():
    for text in ("[x](java&#x09;script:alert(1))", "[x](/download?all=1)", "[x](//example.invalid/)"):
        assert answer_html(text) == '<p><a rel="noopener noreferrer nofollow">x</a></p>\n'


def test_a_fence_info_string_is_a_class_only_when_it_names_a_language():
    assert answer_html('```"><script>\nx\n```') == "<pre><code>x\n</code></pre>\n"
    assert answer_html("```c++ extra words\nx\n```") == '<pre><code class="language-c++">x\n</code></pre>\n'


@pytest.mark.parametrize("fragment", [
    "<script>alert(1)</script><p>ok</p>",
    '<img src=x onerror="alert(1)"><p onclick="alert(1)" style="color:red" title="t">ok</p>',
    '<a href="javascript:alert(1)">a</a><a href="data:text/html,x">b</a><a href="vbscript:x">c</a>',
    "<iframe src=https://example.invalid/></iframe><svg onload=alert(1)></svg><style>p{}</style><p>ok</p>",
    '<code class="language-py hidden">x</code><pre class="x">y</pre>',
])
def test_the_sanitiser_alone_removes_hostile_markup(fragment):
    # The second line of defence, fed real HTML that the Markdown renderer never emits.
    out = _sanitise(fragment)
    assert_safe(out)
    assert "alert" not in out and "color" not in out


def test_controls_are_made_visible():
    text = "abc\u202edef\u200b\nok\tend\x00"
    assert answer_html(text) == "<p>abc&lt;U+202E&gt;def&lt;U+200B&gt;\nok\tend&lt;U+0000&gt;</p>\n"
    assert raw_html(text) == '<pre class="raw-answer">abc&lt;U+202E&gt;def&lt;U+200B&gt;\nok\tend&lt;U+0000&gt;</pre>'


def test_raw_html_escapes_everything_and_keeps_newlines():
    text = "# not a heading\n<script>alert('x')</script>\n\n**a & b** \"q\""
    assert raw_html(text) == ('<pre class="raw-answer"># not a heading\n'
                              "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;\n\n**a &amp; b** &quot;q&quot;</pre>")
    assert [tag for tag, _ in Tags(raw_html(text)).tags] == ["pre"]


# ------------------------------------------------------------------- nesting past the parser's limit


def shown_words(fragment: str) -> list[str]:
    """The words a judge reads in the rendered view, in order."""
    class Text(HTMLParser):
        def __init__(self):
            super().__init__()
            self.parts = []

        def handle_data(self, data):
            self.parts.append(data)

    parser = Text()
    parser.feed(fragment)
    return re.findall(r"w\d+", " ".join(parser.parts))


def nested_list(depth: int) -> str:
    return "".join("  " * i + f"- w{i}\n" for i in range(depth)) + "\nw9999 after the list\n"


def nested_quote(depth: int) -> str:
    return ">" * depth + " w0\n\nw9999 after\n"


def mixture(depth: int) -> str:
    """A list item holding a quote holding a list item ... each level with its own word."""
    lines, indent = [], ""
    for i in range(depth):
        marker = "- " if i % 2 == 0 else "> "
        lines.append(f"{indent}{marker}w{i}")
        indent += "  " if i % 2 == 0 else "> "
    return "\n".join(lines) + "\n\nw9999 after\n"


@pytest.mark.parametrize("depth", [1, 9, 10, 11, 19, 20, 50, 400])
def test_no_word_of_a_deep_list_is_lost(depth):
    rendered = answer_html(nested_list(depth))
    assert shown_words(rendered) == [f"w{i}" for i in range(depth)] + ["w9999"]
    assert (TOO_DEEP_NOTE in rendered) == (depth > 9)  # markdown-it dropped the text from 10 lists on


@pytest.mark.parametrize("depth", [1, 19, 20, 21, 100, 5000])
def test_no_word_of_a_deep_quote_is_lost(depth):
    rendered = answer_html(nested_quote(depth))
    assert shown_words(rendered) == ["w0", "w9999"]
    assert (TOO_DEEP_NOTE in rendered) == (depth >= 20)
    if depth >= 20:  # past the depth the markers themselves are shown as written
        assert re.search(f"<code>{'>' * (depth - MAX_DEPTH)} ?w0", html.unescape(rendered))


@pytest.mark.parametrize("depth", [4, 20, 25, 60, 300])
def test_no_word_of_a_deep_mixture_of_lists_and_quotes_is_lost(depth):
    rendered = answer_html(mixture(depth))
    assert shown_words(rendered) == [f"w{i}" for i in range(depth)] + ["w9999"]
    assert rendered.count(TOO_DEEP_NOTE) == (1 if depth > 13 else 0)


def test_every_character_past_the_depth_reaches_the_view():
    deep = "".join("  " * i + f"- w{i} *em* `code` <b>&amp;</b>\n" for i in range(30))
    rendered = html.unescape(answer_html(deep))
    tail = "".join("  " * (i - 10) + f"- w{i} *em* `code` <b>&amp;</b>\n" for i in range(11, 30))
    assert tail in rendered  # the part past the depth exactly as written, markup included, as text
    assert "<b>" not in answer_html(deep)  # ... and never as markup
