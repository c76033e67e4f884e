"""Markdown (as language models write it) to Telegram's HTML parse mode.

Telegram's HTML accepts a handful of tags and refuses the whole message when a tag is unknown or
unbalanced, so this converter only ever emits balanced tags it knows: fenced code becomes
`<pre><code class="language-x">`, inline code `<code>`, `**bold**` `<b>`, `*italic*`/`_italic_`
`<i>`, `~~strike~~` `<s>`, `[text](url)` `<a>`, `> quote` `<blockquote>`, headings bold lines;
lists and tables stay text; everything else is escaped. The visible text is never longer than
the Markdown it came from, so splitting the Markdown at a limit keeps every chunk within it.
An unclosed fence (a streamed answer cut mid-block) runs to the end of the text.
"""

from __future__ import annotations

import html
import re

_FENCE_OPEN = re.compile(r"^ {0,3}(?P<marker>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(?P<text>.*?)(?:[ \t]+#+)?[ \t]*$")
_BULLET = re.compile(r"^(?P<indent>[ \t]*)[-*+][ \t]+(?P<text>.*)$")
_QUOTE = re.compile(r"^ {0,3}> ?(?P<text>.*)$")
_LANGUAGE = re.compile(r"[A-Za-z0-9_+#.-]{1,32}")
_SAFE_URL = re.compile(r"(?:https?://|tg://|mailto:)[^\s<>\"]+", re.IGNORECASE)
_INLINE = re.compile(
    r"(?P<code>`+)(?P<code_body>.+?)(?<!`)(?P=code)(?!`)"
    r"|\[(?P<link_text>[^\[\]\n]+)\]\((?P<link_url>[^()\s]+)\)"
    r"|\*\*(?P<bold>\S(?:.*?\S)?)\*\*"
    r"|(?<!\w)__(?P<bold_u>\S(?:.*?\S)?)__(?!\w)"
    r"|~~(?P<strike>\S(?:.*?\S)?)~~"
    r"|(?<![\w*])\*(?P<italic>[^\s*](?:.*?[^\s*])?)\*(?![\w*])"
    r"|(?<![\w_])_(?P<italic_u>[^\s_](?:.*?[^\s_])?)_(?![\w_])"
)


def escape(text: str) -> str:
    """Escape the three characters Telegram's HTML parse mode requires escaped."""
    return html.escape(text, quote=False)


def markdown_to_html(markdown: str) -> str:
    """Telegram HTML for `markdown`; tags are always balanced."""
    lines = markdown.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE_OPEN.match(line)
        if fence is not None:
            body, i = _fenced_body(lines, i + 1, fence.group("marker"))
            out.append(_code_block(body, fence.group("info")))
            continue
        if _QUOTE.match(line):
            quoted: list[str] = []
            while i < len(lines) and (quote := _QUOTE.match(lines[i])) is not None:
                quoted.append(_inline(quote.group("text")))
                i += 1
            out.append("<blockquote>" + "\n".join(quoted) + "</blockquote>")
            continue
        if (heading := _HEADING.match(line)) is not None:
            out.append("<b>" + _inline(heading.group("text")) + "</b>" if heading.group("text") else "")
        elif (bullet := _BULLET.match(line)) is not None:
            out.append(bullet.group("indent") + "• " + _inline(bullet.group("text")))
        else:
            out.append(_inline(line))
        i += 1
    return "\n".join(out)


def _fenced_body(lines: list[str], start: int, marker: str) -> tuple[list[str], int]:
    close = re.compile("^ {0,3}" + re.escape(marker[0]) + "{" + str(len(marker)) + r",}[ \t]*$")
    end = start
    while end < len(lines) and close.match(lines[end]) is None:
        end += 1
    return lines[start:end], end + 1


def _code_block(body: list[str], info: str) -> str:
    code = escape("\n".join(body))
    if not code:
        return ""
    if _LANGUAGE.fullmatch(info):
        return f'<pre><code class="language-{info}">{code}</code></pre>'
    return f"<pre>{code}</pre>"


def _inline(text: str) -> str:
    out: list[str] = []
    pos = 0
    for match in _INLINE.finditer(text):
        out.append(escape(text[pos : match.start()]))
        out.append(_inline_span(match))
        pos = match.end()
    out.append(escape(text[pos:]))
    return "".join(out)


def _inline_span(match: re.Match[str]) -> str:
    groups = match.groupdict()
    if groups["code"] is not None:
        body = groups["code_body"]
        if len(body) > 2 and body.startswith(" ") and body.endswith(" "):
            body = body[1:-1]
        return "<code>" + escape(body) + "</code>"
    if groups["link_text"] is not None:
        url = groups["link_url"]
        if _SAFE_URL.fullmatch(url) is None:
            return escape(match.group(0))
        return f'<a href="{html.escape(url, quote=True)}">{_inline(groups["link_text"])}</a>'
    for name, tag in (("bold", "b"), ("bold_u", "b"), ("strike", "s"), ("italic", "i"), ("italic_u", "i")):
        if groups[name] is not None:
            return f"<{tag}>{_inline(groups[name])}</{tag}>"
    return escape(match.group(0))  # unreachable: every alternative has a named group
