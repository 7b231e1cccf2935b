"""EpnAlert's arguments (or ASSyncy's ``config.yml``: the same file MxSync reads).

The source, portal and EPN-map options are MxSync's (:func:`~hpcsync.agents.mxsync.options.add_source_arguments`),
resolved the same way; the mail options are EpnAlert's own. Each has a config key
(``epnalert-email-to`` ...) and an argument that overrides it.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.jobs import JobContext
from hpcsync.agents.core.secrets import load_secret
from hpcsync.agents.mxsync.config import AssyncyConfig, secret_value
from hpcsync.agents.mxsync.options import MxSyncOptions, add_source_arguments
from hpcsync.db import Database

from .engine import EpnAlertEngine
from .mail import DEFAULT_SUBJECT, MailSettings, Templates

MAIL_KEYS = {
    "email_to": "epnalert-email-to",
    "email_from": "epnalert-email-from",
    "smtp_host": "epnalert-email-smtp",
    "template_folder": "epnalert-template-folder",
    "template_text": "epnalert-template-text",
    "template_html": "epnalert-template-html",
    "smtp_port": "epnalert-smtp-port",
    "smtp_security": "epnalert-smtp-security",
    "smtp_user": "epnalert-smtp-user",
    "smtp_password": "epnalert-smtp-password",
    "reminder_days": "epnalert-reminder-days",
    "run_at": "epnalert-run-at",
    "subject": "epnalert-subject",
}


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    add_source_arguments(parser)
    parser.add_argument("--email-to", help="recipients, comma-separated (config: epnalert-email-to)")
    parser.add_argument("--email-from", help="sender (config: epnalert-email-from)")
    parser.add_argument("--smtp-host", help="SMTP server (config: epnalert-email-smtp; host or host:port)")
    parser.add_argument("--smtp-port", type=int, help="SMTP port (default: 587 with starttls, 465 with ssl, else 25)")
    parser.add_argument(
        "--smtp-security",
        choices=("starttls", "ssl", "none"),
        help="starttls (default), ssl, or none (ASSyncy sent in clear)",
    )
    parser.add_argument("--smtp-user", help="SMTP login (default: no login)")
    parser.add_argument("--smtp-password", help="where the SMTP password is: file:/path or env:NAME")
    parser.add_argument("--smtp-ca-file", help="CA certificates that sign the SMTP server's (default: the system's)")
    parser.add_argument("--template-folder", help="folder of the Jinja2 templates (default: hpcsync's own)")
    parser.add_argument("--template-text", help="text template name (default epnalert-text.j2)")
    parser.add_argument("--template-html", help="HTML template name (default epnalert-html.j2)")
    parser.add_argument("--subject", help=f"mail subject (default: {DEFAULT_SUBJECT!r})")
    parser.add_argument("--reminder-days", type=float, help="mail about an EPN again after this many days (default 7)")
    parser.add_argument("--run-at", help="local time of the run process's daily check, HH:MM (default 01:00)")
    parser.add_argument(
        "--run-send", action="store_true", help="the run process sends the mail (default: renders only)"
    )
    parser.add_argument("--mail-dir", help="write each mail as an .eml file here instead of sending it (the demo)")


@dataclass
class EpnAlertOptions(MxSyncOptions):
    email_to: str | None = None
    email_from: str | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_security: str | None = None
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_ca_file: str | None = None
    template_folder: str | None = None
    template_text: str | None = None
    template_html: str | None = None
    subject: str | None = None
    reminder_days: float | None = None
    run_at: str | None = None
    run_send: bool = False
    mail_dir: str | None = None

    @classmethod
    def add_arguments(cls, parser) -> None:
        add_arguments(parser)

    def mail_setting(self, name: str, config: AssyncyConfig, default: Any = None) -> Any:
        value = getattr(self, name)
        if value is None:
            value = config.get(MAIL_KEYS[name])
        return default if value is None else value

    def run_time(self) -> str:
        try:
            config = self.read_config()
        except ConfigError:
            config = AssyncyConfig("", {})
        value = str(self.mail_setting("run_at", config, "01:00"))
        m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", value)
        if not m:
            raise ConfigError(f"run-at {value!r} is not a time HH:MM")
        return f"{int(m.group(1)):02d}:{m.group(2)}"

    def mail_settings(self, config: AssyncyConfig) -> MailSettings:
        to = [a.strip() for a in str(self.mail_setting("email_to", config, "")).split(",") if a.strip()]
        sender = self.mail_setting("email_from", config)
        if not self.mail_dir and (not to or not sender):
            raise ConfigError(
                "the alert needs a recipient and a sender: set epnalert-email-to and epnalert-email-from "
                "(or --email-to, --email-from)"
            )
        host = self.mail_setting("smtp_host", config)
        port = self.mail_setting("smtp_port", config)
        if host and ":" in str(host) and port is None:
            host, _, port_text = str(host).rpartition(":")
            port = int(port_text) if port_text.isdigit() else None
        password = self.mail_setting("smtp_password", config)
        if password is not None and not str(password).startswith(("file:", "env:")):
            if self.smtp_password is not None:
                raise ConfigError("--smtp-password takes file:/path or env:NAME, never the password itself")
            secret = secret_value(str(password), "SMTP password")
        else:
            secret = load_secret(str(password), what="SMTP password") if password else None
        return MailSettings(
            to=tuple(to),
            sender=str(sender or "epnalert@localhost"),
            host=host,
            port=int(port) if port else None,
            security=str(self.mail_setting("smtp_security", config, "starttls")),
            user=self.mail_setting("smtp_user", config),
            password=secret,
            ca_file=self.smtp_ca_file,
            subject=str(self.mail_setting("subject", config, DEFAULT_SUBJECT)),
            mail_dir=self.mail_dir or (os.path.join(self.demo, "mail") if self.demo else None),
        )

    def build_engine(self, ctx: JobContext, database: Callable[[], Database]) -> EpnAlertEngine:
        config = self.read_config()
        folder = self.mail_setting("template_folder", config)
        templates = Templates(
            folder,
            self.mail_setting("template_text", config, "epnalert-text.j2"),
            self.mail_setting("template_html", config, "epnalert-html.j2"),
        )
        beamline = self.setting("beamline", config)
        backend = self.backend(config)
        return EpnAlertEngine(
            backend=backend,
            portal=self.portal(config, ctx.cancel),
            db=database,
            scope=self.scope or f"{beamline}:{backend.describe()}"[:128],
            epn_map=self.epn_map_of(config),
            visit_day_range=float(self.setting("visit_day_range", config)),
            templates=templates,
            mail=self.mail_settings(config),
            reminder_days=float(self.mail_setting("reminder_days", config, 7.0)),
            run_at=self.run_time(),
            cancel=ctx.cancel,
        )
