"""The alert mail: Jinja2 text and HTML parts, sent over SMTP (STARTTLS, SSL or plain).

The templates get ASSyncy's two variables, so an operator's ``epnalert-text.j2`` and
``epnalert-html.j2`` keep working: ``epn_details`` (one paragraph per unknown EPN with
portal visit details) and ``unknown_epns`` (the unknown EPNs without visit details, eight
per row). hpcsync's own templates also get ``epns`` (a list of dicts) and ``now``. The HTML
part is rendered with autoescaping: names from the portal cannot inject markup.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import tempfile
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import jinja2

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.secrets import Secret

DEFAULT_SUBJECT = "Unknown ownership of EPNs"
DEFAULT_TEXT = """\
EPNs are waiting at the Australian Synchrotron that no project claims.
Add each to epn_cap_map (its number -> the project) so that MxSync repatriates it.

{{ epn_details }}
{%- if unknown_epns %}
The following epns are not known:

{{ unknown_epns }}
{% endif %}"""
DEFAULT_HTML = """\
<html>
<head></head>
<body>
<p>EPNs are waiting at the Australian Synchrotron that no project claims.
Add each to <code>epn_cap_map</code> (its number &rarr; the project) so that MxSync repatriates it.</p>
<pre>
{{ epn_details }}
{%- if unknown_epns %}
The following epns are not known:

{{ unknown_epns }}
{% endif %}
</pre>
</body>
</html>
"""


class MailError(OSError):
    """The mail could not be sent (server unreachable, TLS or auth refused, recipient refused)."""


@dataclass(frozen=True)
class Templates:
    """ASSyncy's template folder and names, or hpcsync's defaults (``folder`` None)."""

    folder: str | None = None
    text: str = "epnalert-text.j2"
    html: str = "epnalert-html.j2"

    def render(self, variables: dict) -> tuple[str, str]:
        """``(text, html)``; ConfigError naming the template on a missing or broken one."""
        out = []
        for name, default, escape in ((self.text, DEFAULT_TEXT, False), (self.html, DEFAULT_HTML, True)):
            if self.folder:
                env = jinja2.Environment(
                    loader=jinja2.FileSystemLoader(self.folder), autoescape=escape, keep_trailing_newline=True
                )
                try:
                    template = env.get_template(name)
                except jinja2.TemplateNotFound:
                    raise ConfigError(f"template {name} is not in {self.folder}") from None
                except jinja2.TemplateSyntaxError as exc:
                    raise ConfigError(
                        f"template {os.path.join(self.folder, name)} line {exc.lineno}: {exc.message}"
                    ) from None
            else:
                template = jinja2.Environment(autoescape=escape, keep_trailing_newline=True).from_string(default)
            try:
                out.append(template.render(**variables))
            except jinja2.TemplateError as exc:
                raise ConfigError(f"template {name} cannot be rendered: {exc}") from None
        return out[0], out[1]


@dataclass(frozen=True)
class MailSettings:
    """Where the alert goes and how."""

    to: tuple[str, ...]
    sender: str
    host: str | None = None
    port: int | None = None
    security: str = "starttls"  # starttls | ssl | none
    user: str | None = None
    password: Secret | None = None
    ca_file: str | None = None
    timeout: float = 30.0
    subject: str = DEFAULT_SUBJECT
    #: write each mail as an .eml file here instead of sending it (the demo)
    mail_dir: str | None = None

    def describe(self) -> str:
        if self.mail_dir:
            return f"files in {self.mail_dir}"
        return f"smtp {self.host}:{self.port or self.default_port()} ({self.security})"

    def default_port(self) -> int:
        return {"ssl": 465, "starttls": 587}.get(self.security, 25)


def build_message(settings: MailSettings, text: str, html: str) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = settings.subject
    msg["From"] = settings.sender
    msg["To"] = ", ".join(settings.to)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="hpcsync.epnalert")
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg


def _login(server: smtplib.SMTP, user: str, password: str) -> None:
    """AUTH PLAIN when offered (one round trip, inside TLS), else smtplib's own choice.
    smtplib's ``login`` tries the next mechanism after a refusal, which some servers
    answer by waiting: one clear refusal is what the operator needs."""
    server.ehlo_or_helo_if_needed()
    if "PLAIN" in server.esmtp_features.get("auth", "").upper().split():
        server.user, server.password = user, password
        server.auth("PLAIN", server.auth_plain)
    else:
        server.login(user, password)


def deliver(settings: MailSettings, msg: EmailMessage) -> str:
    """Send ``msg`` (or write it to ``mail_dir``); return where it went. MailError on failure."""
    if settings.mail_dir:
        os.makedirs(settings.mail_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".mail-", dir=settings.mail_dir)
        with os.fdopen(fd, "wb") as fh:
            fh.write(bytes(msg))
        final = os.path.join(
            settings.mail_dir, f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.path.basename(tmp)[6:]}.eml"
        )
        os.replace(tmp, final)
        return final
    if not settings.host:
        raise ConfigError("no SMTP server: set epnalert-email-smtp in the config or pass --smtp-host")
    context = ssl.create_default_context(cafile=settings.ca_file) if settings.security != "none" else None
    port = settings.port or settings.default_port()
    where = f"SMTP server {settings.host}:{port}"
    try:
        if settings.security == "ssl":
            server: smtplib.SMTP = smtplib.SMTP_SSL(settings.host, port, timeout=settings.timeout, context=context)
        else:
            server = smtplib.SMTP(settings.host, port, timeout=settings.timeout)
        with server:
            if settings.security == "starttls":
                server.starttls(context=context)
            if settings.user:
                if settings.password is None:
                    raise ConfigError("--smtp-user is set but no --smtp-password reference")
                _login(server, settings.user, settings.password.reveal())
            refused = server.send_message(msg)
    except smtplib.SMTPAuthenticationError as exc:
        raise MailError(f"{where} refused the login of {settings.user!r} (SMTP {exc.smtp_code})") from None
    except smtplib.SMTPNotSupportedError as exc:
        raise MailError(f"{where} does not offer what was asked ({exc}); check --smtp-security") from None
    except ssl.SSLError as exc:
        raise MailError(f"{where}: TLS failed ({exc.reason or exc}); check --smtp-ca-file") from None
    except smtplib.SMTPResponseException as exc:
        raise MailError(f"{where} answered {exc.smtp_code}: {exc.smtp_error.decode(errors='replace')}") from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise MailError(f"{where} refused every recipient: {', '.join(exc.recipients)}") from None
    except (TimeoutError, smtplib.SMTPException, OSError) as exc:
        raise MailError(f"{where}: {exc}") from None
    if refused:
        raise MailError(f"{where} refused {', '.join(refused)}")
    return f"{where} for {', '.join(settings.to)}"
