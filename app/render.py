"""Answers as HTML for the judges' browser. The answers come from models and from the data, so they are
untrusted: the judges must see what the text says and never run it. Markdown is rendered with raw HTML
off (any HTML in an answer shows as literal text), then sanitised against a small allow-list as a second
line of defence; invisible control characters are shown as visible escapes first, so that an answer
cannot disguise what it says. raw_html shows the text exactly as written, for the rendered/raw toggle."""

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


_markdown = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
_markdown.add_render_rule("image", _image_as_alt_text)
_markdown.add_render_rule("s_open", _strikethrough_as_del)
_markdown.add_render_rule("s_close", _strikethrough_as_del)


def answer_html(text: str) -> str:
    """An answer's Markdown as sanitised HTML; raw HTML in it shows as literal text."""
    return _sanitise(_markdown.render(visible_controls(text)))


def _sanitise(rendered: str) -> str:
    return nh3.clean(rendered, tags=TAGS, attributes=ATTRIBUTES, attribute_filter=_keep_attribute,
                     url_schemes=URL_SCHEMES, link_rel=LINK_REL)


def raw_html(text: str) -> str:
    """An answer exactly as written, as escaped text in a <pre> (newlines kept)."""
    return f'<pre class="raw-answer">{html.escape(visible_controls(text))}</pre>'
