"""Email content: per-type templates, HTML escaping, addresses, the MIME message.

A type's ``[[email.templates]]`` entry renders the subject, the text part and
the HTML part from the notification's vars with the template engine of
``realtimed.templates``; every value put into the HTML part is HTML-escaped
(the template's own markup is the operator's). A type without a template (and
every digest, whose text is the digest's) mails its rendered title as the
subject and its body as the text, the HTML part being that text, escaped, in
a minimal page. Every message carries ``List-Unsubscribe`` (the signed link)
and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from typing import Any, Final

import attrs

from realtimed.config import EmailConfig, EmailTemplateConfig
from realtimed.templates import render, var_text

__all__ = ["Rendered", "build_message", "check_address", "digest_parts", "new_message_id", "render_parts"]

MAX_SUBJECT_CHARS: Final = 250
# An ASCII address: a local part without spaces, quotes or brackets, and a dotted domain.
_ADDRESS: Final = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.[A-Za-z]{2,63}")
_LINE_BREAKS: Final = re.compile(r"[\r\n\t\x00-\x1f\x7f]+")
# Headers are not folded below RFC 5322's 998 characters: a long List-Unsubscribe stays on one line.
_POLICY: Final = compat32.clone(max_line_length=998)


def check_address(address: str, *, max_chars: int) -> str | None:
    """Why ``address`` cannot be mailed (None: it can): ``local@domain.tld`` in ASCII,
    at most ``max_chars`` characters, no dots at the ends of the local part."""
    if len(address) > max_chars:
        return f"must be at most {max_chars} characters"
    if not _ADDRESS.fullmatch(address):
        return "must be an email address (local@domain.tld, ASCII)"
    local = address.rsplit("@", 1)[0]
    if local.startswith(".") or local.endswith(".") or ".." in address or len(local) > 64:
        return "must be an email address (local@domain.tld, ASCII)"
    return None


@attrs.frozen
class Rendered:
    subject: str
    text: str
    html: str


def _header(text: str) -> str:
    """A header value on one line: CR, LF and other controls become spaces."""
    return _LINE_BREAKS.sub(" ", text).strip()


def _one_line(text: str) -> str:
    """A subject: one line, cut to ``MAX_SUBJECT_CHARS``."""
    line = _header(text)
    return line if len(line) <= MAX_SUBJECT_CHARS else line[: MAX_SUBJECT_CHARS - 1] + "…"


def _escaped(values: Mapping[str, Any]) -> dict[str, str]:
    return {name: html.escape(var_text(value), quote=True) for name, value in values.items()}


def _page(text: str) -> str:
    paragraphs = "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in text.split("\n\n") if p.strip())
    return f'<!doctype html><html><body style="font-family:sans-serif">{paragraphs}</body></html>'


def render_parts(
    *, title: str, body: str, values: Mapping[str, Any], template: EmailTemplateConfig | None
) -> Rendered:
    """Subject, text and HTML of one email (see the module docstring).

    Raises:
        KeyError: a template names a var the notification does not give (the
            config allows only the type's vars, which the pipeline requires).
    """
    subject = render(template.subject, values) if template is not None and template.subject else title
    text = render(template.text, values) if template is not None and template.text else body
    page = render(template.html, _escaped(values)) if template is not None and template.html else _page(text)
    return Rendered(subject=_one_line(subject), text=text, html=page)


def digest_parts(*, subject: str, items: Sequence[tuple[str, str]], total: int) -> Rendered:
    """A digest email: one line (and one list item, escaped) per notification's
    title and body; ``total`` beyond the items listed is counted at the end."""
    lines = [f"- {title}: {body}" if body else f"- {title}" for title, body in items]
    entries = "".join(
        f"<li><b>{html.escape(title)}</b>{': ' + html.escape(body) if body else ''}</li>" for title, body in items
    )
    more = total - len(items)
    if more > 0:
        lines.append(f"and {more} more")
        entries += f"<li>and {more} more</li>"
    page = f'<!doctype html><html><body style="font-family:sans-serif"><ul>{entries}</ul></body></html>'
    return Rendered(subject=_one_line(subject), text="\n".join(lines), html=page)


def build_message(
    cfg: EmailConfig, *, to: str, rendered: Rendered, unsubscribe_url: str, message_id: str
) -> Message:
    """The MIME message: ``multipart/alternative`` with the text and HTML parts
    (UTF-8, base64). Built with the standard library's legacy MIME
    classes, a tenth of the CPU of ``EmailMessage``'s header parsing; every header
    value is one line (CR, LF and other controls become spaces), so no value can
    add a header."""
    msg = MIMEMultipart("alternative", policy=_POLICY)
    msg["From"] = _address_header(cfg.from_address)
    msg["To"] = _header(to)
    if cfg.reply_to:
        msg["Reply-To"] = _address_header(cfg.reply_to)
    subject = _one_line(rendered.subject)
    msg["Subject"] = subject if subject.isascii() else Header(subject, "utf-8").encode()
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = _header(message_id)
    msg["List-Unsubscribe"] = f"<{_header(unsubscribe_url)}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Auto-Submitted"] = "auto-generated"
    msg.attach(MIMEText(rendered.text, "plain", "utf-8"))
    msg.attach(MIMEText(rendered.html, "html", "utf-8"))
    return msg


def _address_header(value: str) -> str:
    """``Name <address>`` with a non-ASCII name encoded (RFC 2047)."""
    value = _header(value)
    if value.isascii():
        return value
    name, address = parseaddr(value)
    return formataddr((name, address), "utf-8")


def new_message_id(cfg: EmailConfig) -> str:
    """A Message-ID in the From address's domain, made once per email (a retry keeps it)."""
    domain = cfg.from_address.rsplit("@", 1)[-1].strip(" >") or "realtimed.invalid"
    return make_msgid(domain=domain)
