"""Answers as HTML for the judges' browser. The answers come from models and from the data, so they are
untrusted: the judges must see what the text says and never run it. Markdown is rendered with raw HTML
off (any HTML in an answer shows as literal text), then sanitised against a small allow-list as a second
line of defence; invisible control characters are shown as visible escapes first, so that an answer
cannot disguise what it says. Past a nesting depth (lists, quotes, any mixture) the rest of a block is
shown as written instead of being dropped, as a Markdown parser does at its nesting limit, and the view
says so in one line. raw_html shows the text exactly as written, for the rendered/raw toggle."""

from __future__ import annotations

import html
import re
from urllib.parse import urlsplit

import nh3
from markdown_it import MarkdownIt

from deft_app.text import visible_controls

TAGS = {"p", "br", "em", "strong", "code", "pre", "ul", "ol", "li", "blockquote",
        "h1", "h2", "h3", "h4", "h5", "h6", "hr", "table", "thead", "tbody", "tr", "th", "td", "a", "del"}
# "*" empty: ammonia otherwise allows title and lang on every tag.
ATTRIBUTES = {"*": set(), "a": {"href"}, "code": {"class"}}
URL_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "noopener noreferrer nofollow"
CODE_CLASS = re.compile(r"language-[A-Za-z0-9_+#.-]{1,40}")


def _image_as_alt_text(self, tokens, idx, options, env):
    # No images: loading one would fetch a URL chosen by the answer (a tracking beacon, a huge file).
    # The alt text keeps what the model wrote readable.
    return html.escape(self.renderInlineAsText(tokens[idx].children, options, env), quote=False)


def _strikethrough_as_del(self, tokens, idx, options, env):
    # markdown-it writes <s>; <del> is the tag on the allow-list.
    return "<del>" if tokens[idx].nesting == 1 else "</del>"


def _keep_attribute(tag, attribute, value):
    # A fence's info string lands in the code class; keep it only when it looks like a language name.
    if tag == "code" and attribute == "class":
        return value if CODE_CLASS.fullmatch(value) else None
    # Relative links are dropped too: they would point into the judging app itself.
    if attribute == "href":
        return value if urlsplit(value).scheme in URL_SCHEMES else None
    return value


# The block level from which content is shown as written: markdown-it stops parsing at its nesting limit
# (20 levels, i.e. 10 nested lists or 20 quotes) and silently drops the rest of the text; the guard
# below takes over at that level, and the parser's own limit is moved past it so it never fires first.
MAX_DEPTH = 20
TOO_DEEP_NOTE = (f"<p><em>This answer nests deeper than {MAX_DEPTH} levels; the deeper part is shown as written."
                 "</em></p>")


def _as_written_past_max_depth(state, start_line, end_line, silent):
    """A block rule tried first: at MAX_DEPTH and deeper, this block's lines as a code block, verbatim."""
    if silent or state.level < MAX_DEPTH:
        return False
    line = start_line
    while line < end_line and (state.isEmpty(line) or state.sCount[line] >= state.blkIndent):
        line += 1  # the lines of this block, not the outer blocks that follow it
    token = state.push("code_block", "code", 0)
    token.content, token.map = state.getLines(start_line, line, state.blkIndent, True), [start_line, line]
    state.line = line
    state.env["too_deep"] = True
    return True


_markdown = MarkdownIt("commonmark", {"html": False, "maxNesting": MAX_DEPTH + 3}).enable(["table", "strikethrough"])
_markdown.block.ruler.before(_markdown.block.ruler.__rules__[0].name, "as_written_past_max_depth",
                             _as_written_past_max_depth)
_markdown.add_render_rule("image", _image_as_alt_text)
_markdown.add_render_rule("s_open", _strikethrough_as_del)
_markdown.add_render_rule("s_close", _strikethrough_as_del)


def answer_html(text: str) -> str:
    """An answer's Markdown as sanitised HTML; raw HTML in it shows as literal text."""
    env: dict = {}
    rendered = _markdown.renderer.render(_markdown.parse(visible_controls(text), env), _markdown.options, env)
    return _sanitise((TOO_DEEP_NOTE if env.get("too_deep") else "") + rendered)


def _sanitise(rendered: str) -> str:
    return nh3.clean(rendered, tags=TAGS, attributes=ATTRIBUTES, attribute_filter=_keep_attribute,
                     url_schemes=URL_SCHEMES, link_rel=LINK_REL)


def raw_html(text: str) -> str:
    """An answer exactly as written, as escaped text in a <pre> (newlines kept)."""
    return f'<pre class="raw-answer">{html.escape(visible_controls(text))}</pre>'
