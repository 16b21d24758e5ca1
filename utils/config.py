"""Every environment variable of the tracker, its CLI and the monitor, validated once by ``from_env``.

A bad value raises :class:`ConfigError` naming the variable and what is allowed (exit 2); relative paths are
from the project root. Every hook imports this module, so email, ipaddress and pytz are imported where needed.
"""

from __future__ import annotations

import os

from utils.errors import TrackerError
from utils.model import is_valid_name
from utils.state_store import sibling_file
from utils.values import Value, frozen

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from utils.deadline import DailyDeadline

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TRACKER_FILE = os.path.join("data", "batch_tracker.json")
DEFAULT_CLI_COMMAND = os.path.join(PROJECT_ROOT, "bin", "batch_tracker")
DEFAULT_RUN_COMMAND = os.path.join(PROJECT_ROOT, "bin", "run_nightly.sh")
NAME_RULE = "use 1-64 of A-Z a-z 0-9 _ . -"
ALL_DAYS = frozenset(range(7))  # Monday = 0, as datetime.date.weekday()

DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "plain": 25}  # its keys are the SMTP_SECURITY modes
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_OUTBOX_DIR = os.path.join("data", "outbox")
MAX_PASSWORD_FILE_BYTES = 4096
_DECIMAL_CHARACTERS = frozenset("0123456789.eE+-")

# (variable, default as documented, meaning): the single source for --help and the docs.
VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("BATCH_TRACKER_FILE", "data/batch_tracker.json", "tracker state file (relative paths: from the project root)"),
    ("BATCH_COMPLETION_DEADLINE_HOUR", "5", "deadline hour, 0-23, local time"),
    ("BATCH_COMPLETION_DEADLINE_MINUTE", "0", "deadline minute, 0-59"),
    ("BATCH_COMPLETION_TIMEZONE", "America/New_York", "IANA time zone of the deadline"),
    ("BATCH_HISTORY_LIMIT", "90", "finished batches kept in the history file"),
    ("BATCH_EXPECTED_STAGES", "(empty)", "comma-separated stages a batch must finish, if it declares none"),
    ("BATCH_NAME", "nightly", "batch (job) name in e-mail subjects and metrics; with BATCH_JOBS_FILE: the hooks' job"),
    ("BATCH_JOBS_FILE", "(unset)", "TOML file of [jobs.NAME] tables (many jobs; see the user guide); unset = one job"),
    ("BATCH_PUSHGATEWAY_URL", "(unset)", "Pushgateway the tracker CLI pushes to (not used by the monitor)"),
    ("BATCH_PING_URL", "(unset)", "dead-man's switch (healthchecks.io protocol) the hooks ping on start, end, fail"),
    ("BATCH_COMPLETION_CHECK_INTERVAL_SECONDS", "300", "longest sleep between checks, 1-86400"),
    ("BATCH_ALERT_REPEAT_SECONDS", "0", "reminder interval while an incident stays open; 0 = no reminders"),
    ("BATCH_AT_RISK_MARGIN_SECONDS", "1800", "early warning when the projected finish passes the deadline by this"),
    ("BATCH_OUTBOX_DIR", "data/outbox", "persistent outbox of alert e-mails (relative paths: from the project root)"),
    ("ALERT_EMAIL_TO", "alerts@anthrasite.com", "comma-separated recipients, each user@domain or Name <user@domain>"),
    ("ALERT_EMAIL_FROM", "leadfactory@anthrasite.com", "sender, user@domain or Name <user@domain>; names Message-IDs"),
    ("BATCH_CLI_COMMAND", "bin/batch_tracker (in the project root)", "tracker CLI named in the e-mails"),
    ("BATCH_RUN_COMMAND", "bin/run_nightly.sh (in the project root)", "command the e-mails give to start a batch"),
    ("BATCH_RESUME_COMMAND", "bin/run_nightly.sh --resume (in the project root)", "command to resume a failed batch"),
    ("LOG_DIR", "logs", "directory of the nightly logs (nightly_YYYYMMDD.log), named in the e-mails"),
    ("STATUS_PAGE_URL", "(unset)", "public http(s) URL of the status page, linked from the e-mails"),
    ("ALERT_OUTPUT_TAIL_LINES", "20", "last lines of the failed stage's output in a failure e-mail, 0-100"),
    ("ALERTMANAGER_URL", "(unset)", "Alertmanager base URL(s), comma-separated; each open incident is posted there"),
    ("ALERT_WEBHOOK_URL", "(unset)", "http(s) URL that gets a JSON POST per notification (Slack-compatible text)"),
    ("ALERT_EMAIL", "on", "on | off: off sends no e-mail (needs ALERTMANAGER_URL or ALERT_WEBHOOK_URL)"),
    ("SMTP_SERVER", "(unset)", "SMTP host; unset = write alerts as .eml files into BATCH_OUTBOX_DIR"),
    ("SMTP_PORT", "587 starttls / 465 ssl / 25 plain", "SMTP port"),
    ("SMTP_SECURITY", "starttls", "starttls | ssl (implicit TLS) | plain"),
    ("SMTP_USERNAME", "(unset)", "log in with this user; unset = no login"),
    ("SMTP_PASSWORD", "(unset)", "SMTP password (prefer SMTP_PASSWORD_FILE)"),
    ("SMTP_PASSWORD_FILE", "(unset)", "file holding the SMTP password, read once at start-up"),
    ("SMTP_TIMEOUT_SECONDS", "10", "SMTP connect/command timeout, 1-300"),
    ("METRICS_ADDR", "127.0.0.1", "address of the /metrics, /healthz, /status.json and / HTTP server"),
    ("METRICS_PORT", "9469", "port of that server; 0 = no HTTP server"),
    ("LOG_LEVEL", "INFO", "DEBUG | INFO | WARNING | ERROR | CRITICAL"),
)


class ConfigError(TrackerError, ValueError):
    """An environment variable has a value that is not allowed; the message names it."""


@frozen()
class Secret(Value):
    """A string that never shows itself in ``repr``/``str`` (so never in logs or tracebacks)."""

    value: str

    def reveal(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


@frozen()
class TrackerConfig(Value):
    """Tracker settings; ``tracker_file`` is made absolute (from the working directory outside :meth:`from_env`)."""

    tracker_file: str
    deadline_hour: int = 5
    deadline_minute: int = 0
    timezone: str = "America/New_York"
    history_limit: int = 90
    expected_stages: tuple[str, ...] = ()
    pushgateway_url: str | None = None
    batch_name: str = "nightly"
    ping_url: str | None = None
    days: frozenset[int] = ALL_DAYS  # weekdays with a deadline (0 = Monday); a jobs file's ``days``
    start_by: tuple[int, int] | None = None  # local (hour, minute) a batch must have started by; ``start_by``
    _deadline: DailyDeadline | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tracker_file", os.path.abspath(os.fspath(self.tracker_file)))
        object.__setattr__(self, "expected_stages", tuple(self.expected_stages))

    @classmethod
    def from_env(cls, environ: dict | None = None) -> TrackerConfig:
        """Build the config from environment variables; raise :class:`ConfigError` naming a bad one."""
        env = os.environ if environ is None else environ
        tracker_file = _raw(env, "BATCH_TRACKER_FILE") or DEFAULT_TRACKER_FILE
        tracker_path = os.path.join(PROJECT_ROOT, os.path.expanduser(tracker_file))
        if "\0" in tracker_file or tracker_file.endswith(os.sep) or os.path.isdir(tracker_path):
            raise ConfigError(
                f"BATCH_TRACKER_FILE={_shown(tracker_file, 300)} names a directory (allowed: a file path, "
                "e.g. data/batch_tracker.json)"
            )
        expected = tuple(name.strip() for name in _raw(env, "BATCH_EXPECTED_STAGES").split(",") if name.strip())
        for name in expected:
            if not is_valid_name(name):
                raise ConfigError(f"BATCH_EXPECTED_STAGES: stage name {name!r} is not allowed ({NAME_RULE})")
        batch_name = _raw(env, "BATCH_NAME") or "nightly"
        if not is_valid_name(batch_name):
            raise ConfigError(f"BATCH_NAME={batch_name!r} is not allowed ({NAME_RULE})")
        return cls(
            tracker_file=tracker_path,
            deadline_hour=_int(env, "BATCH_COMPLETION_DEADLINE_HOUR", 5, 0, 23),
            deadline_minute=_int(env, "BATCH_COMPLETION_DEADLINE_MINUTE", 0, 0, 59),
            timezone=_raw(env, "BATCH_COMPLETION_TIMEZONE") or "America/New_York",
            history_limit=_int(env, "BATCH_HISTORY_LIMIT", 90, 1, 100_000),
            expected_stages=expected,
            pushgateway_url=_http_url(env, "BATCH_PUSHGATEWAY_URL"),
            batch_name=batch_name,
            ping_url=_endpoint_url(env, "BATCH_PING_URL"),
        )

    def deadline(self) -> DailyDeadline:
        """The daily deadline, built once; validates the time zone (pytz is imported here, not at start-up)."""
        if self._deadline is None:
            import pytz

            from utils.deadline import DailyDeadline

            try:
                deadline = DailyDeadline(
                    self.deadline_hour, self.deadline_minute, self.timezone, days=self.days, start_by=self.start_by
                )
            except pytz.UnknownTimeZoneError:
                raise ConfigError(
                    f"BATCH_COMPLETION_TIMEZONE={self.timezone!r} is not an IANA time zone "
                    "(e.g. America/New_York, Europe/Berlin, UTC)"
                ) from None
            object.__setattr__(self, "_deadline", deadline)
        return self._deadline


@frozen()
class MonitorConfig(Value):
    """Everything the monitor needs; paths are absolute. ``smtp_server`` None: write .eml files into the outbox."""

    tracker: TrackerConfig
    check_interval_seconds: int = 300
    alert_repeat_seconds: int = 0
    at_risk_margin_seconds: int = 1800
    outbox_dir: str = os.path.join(PROJECT_ROOT, DEFAULT_OUTBOX_DIR)
    email_to: tuple[str, ...] = ("alerts@anthrasite.com",)
    email_from: str = "leadfactory@anthrasite.com"
    smtp_server: str | None = None
    smtp_port: int = 587
    smtp_security: str = "starttls"
    smtp_username: str | None = None
    smtp_password: Secret | None = None
    smtp_timeout_seconds: float = 10.0
    metrics_addr: str = "127.0.0.1"
    metrics_port: int = 9469
    log_level: str = "INFO"
    cli_command: str = DEFAULT_CLI_COMMAND
    run_command: str = DEFAULT_RUN_COMMAND
    resume_command: str = DEFAULT_RUN_COMMAND + " --resume"
    log_dir: str = os.path.join(PROJECT_ROOT, "logs")
    status_page_url: str | None = None
    output_tail_lines: int = 20
    under_systemd: bool = False  # started by systemd (INVOCATION_ID set): its log is in the journal
    alertmanager_urls: tuple[str, ...] = ()
    webhook_url: str | None = None
    email_enabled: bool = True

    @property
    def monitor_state_file(self) -> str:
        """The monitor's alert-state file beside the tracker file."""
        return sibling_file(self.tracker.tracker_file, "monitor")

    @property
    def sender_domain(self) -> str:
        from email.utils import parseaddr

        return parseaddr(self.email_from)[1].rsplit("@", 1)[1]

    def describe_smtp(self) -> str:
        """Where alerts go, for logs (never includes the password)."""
        if self.smtp_server is None:
            return f".eml files in {self.outbox_dir}"
        login = f", login as {self.smtp_username}" if self.smtp_username else ""
        return f"smtp {self.smtp_server}:{self.smtp_port} ({self.smtp_security}{login})"

    @classmethod
    def from_env(cls, environ: dict | None = None) -> MonitorConfig:
        """Validate every variable once; raise :class:`ConfigError` naming the first bad one."""
        env = os.environ if environ is None else environ
        tracker = TrackerConfig.from_env(env)
        tracker.deadline()  # validates BATCH_COMPLETION_TIMEZONE now (and keeps it), not at the first deadline
        security = _choice(env, "SMTP_SECURITY", "starttls", tuple(DEFAULT_PORTS), lower=True)
        username = _optional_text(env, "SMTP_USERNAME")
        password = _password(env)
        if password is not None and username is None:
            raise ConfigError("SMTP_PASSWORD/SMTP_PASSWORD_FILE is set but SMTP_USERNAME is not (set both or neither)")
        alertmanagers = tuple(_endpoint_urls(env, "ALERTMANAGER_URL"))
        webhook = _endpoint_url(env, "ALERT_WEBHOOK_URL")
        email = _choice(env, "ALERT_EMAIL", "on", ("on", "off"), lower=True) == "on"
        if not email and not (alertmanagers or webhook):
            raise ConfigError(
                "ALERT_EMAIL=off but neither ALERTMANAGER_URL nor ALERT_WEBHOOK_URL is set (no alert would go out)"
            )
        if not email and _raw(env, "SMTP_SERVER"):
            raise ConfigError("ALERT_EMAIL=off but SMTP_SERVER is set (unset SMTP_SERVER or set ALERT_EMAIL=on)")
        return cls(
            tracker=tracker,
            check_interval_seconds=_int(env, "BATCH_COMPLETION_CHECK_INTERVAL_SECONDS", 300, 1, 86_400),
            alert_repeat_seconds=_int(env, "BATCH_ALERT_REPEAT_SECONDS", 0, 0, 30 * 86_400),
            at_risk_margin_seconds=_int(env, "BATCH_AT_RISK_MARGIN_SECONDS", 1800, 0, 86_400),
            outbox_dir=_path(env, "BATCH_OUTBOX_DIR", DEFAULT_OUTBOX_DIR),
            email_to=tuple(_addresses(env, "ALERT_EMAIL_TO", "alerts@anthrasite.com")),
            email_from=_addresses(env, "ALERT_EMAIL_FROM", "leadfactory@anthrasite.com", single=True)[0],
            smtp_server=_host(env, "SMTP_SERVER", "smtp.example.com, 192.0.2.7"),
            smtp_port=_int(env, "SMTP_PORT", DEFAULT_PORTS[security], 1, 65_535),
            smtp_security=security,
            smtp_username=username,
            smtp_password=password,
            smtp_timeout_seconds=_float(env, "SMTP_TIMEOUT_SECONDS", 10.0, 1.0, 300.0),
            metrics_addr=_host(env, "METRICS_ADDR", "127.0.0.1, ::1, 0.0.0.0", default="127.0.0.1"),
            metrics_port=_int(env, "METRICS_PORT", 9469, 0, 65_535),
            log_level=_choice(env, "LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
            cli_command=_optional_text(env, "BATCH_CLI_COMMAND") or DEFAULT_CLI_COMMAND,
            run_command=_optional_text(env, "BATCH_RUN_COMMAND") or DEFAULT_RUN_COMMAND,
            resume_command=_optional_text(env, "BATCH_RESUME_COMMAND") or DEFAULT_RUN_COMMAND + " --resume",
            log_dir=_path(env, "LOG_DIR", "logs"),
            status_page_url=_http_url(env, "STATUS_PAGE_URL"),
            output_tail_lines=_int(env, "ALERT_OUTPUT_TAIL_LINES", 20, 0, 100),
            under_systemd=bool(_raw(env, "INVOCATION_ID")),
            alertmanager_urls=alertmanagers,
            webhook_url=webhook,
            email_enabled=email,
        )


def help_text() -> str:
    width = max(len(name) for name, _, _ in VARIABLES)
    lines = [f"  {name:<{width}}  {meaning} [{default}]" for name, default, meaning in VARIABLES]
    return "\n".join(["environment variables (default in brackets):", *lines])


def is_plain_whole_number(text: str) -> bool:
    """True for 1-18 ASCII digits only: ``int()`` also takes ``" 5 "``, ``"5_0"``, other scripts' digits."""
    return 0 < len(text) <= 18 and text.isascii() and text.isdigit()


def is_plain_decimal(text: str) -> bool:
    """True when ``text`` may spell an ASCII decimal (``-0.5``, ``1e3``); ``float()`` also takes `` 5_0 ``, ``inf``."""
    return 0 < len(text) <= 400 and _DECIMAL_CHARACTERS.issuperset(text) and any(c.isdigit() for c in text)


def _raw(env: dict, name: str) -> str:
    return str(env.get(name, "")).strip()


def _shown(raw: str, limit: int = 60) -> str:
    return repr(raw if len(raw) <= limit else raw[:limit] + "...")


def _int(env: dict, name: str, default: int, low: int, high: int) -> int:
    raw = str(env.get(name, ""))
    if not raw.strip():
        return default
    if not is_plain_whole_number(raw):
        raise ConfigError(f"{name}={_shown(raw)} is not a whole number in ASCII digits (allowed: {low}-{high})")
    value = int(raw, 10)
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range (allowed: {low}-{high})")
    return value


def _float(env: dict, name: str, default: float, low: float, high: float) -> float:
    raw = str(env.get(name, ""))
    if not raw.strip():
        return default
    try:
        if not is_plain_decimal(raw):
            raise ValueError(raw)
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={_shown(raw)} is not a number (allowed: {low:g}-{high:g})") from None
    if not low <= value <= high:  # also rejects nan
        raise ConfigError(f"{name}={_shown(raw)} is out of range (allowed: {low:g}-{high:g})")
    return value


def _choice(env: dict, name: str, default: str, allowed: tuple[str, ...], *, lower=False, upper=False) -> str:
    raw = _raw(env, name)
    if not raw:
        return default
    value = raw.lower() if lower else raw.upper() if upper else raw
    if value not in allowed:
        raise ConfigError(f"{name}={_shown(raw)} is not allowed (allowed: {', '.join(allowed)})")
    return value


def _optional_text(env: dict, name: str) -> str | None:
    raw = _raw(env, name)
    if not raw:
        return None
    if any(not ch.isprintable() for ch in raw):
        raise ConfigError(f"{name} contains control characters (allowed: printable text)")
    return raw


def _path(env: dict, name: str, default: str) -> str:
    raw = _raw(env, name) or default
    if "\0" in raw:
        raise ConfigError(f"{name} contains a NUL character (allowed: a file system path)")
    return os.path.abspath(os.path.join(PROJECT_ROOT, os.path.expanduser(raw)))


def is_plausible_address(address: str) -> bool:
    """Loose e-mail address check: ``local@domain``, printable, no whitespace, no header syntax."""
    if not address or len(address) > 254 or address.count("@") != 1:
        return False
    local, domain = address.split("@")
    if not local or not domain or domain.startswith(".") or domain.endswith("."):
        return False
    return all(ch.isprintable() and not ch.isspace() and ch not in '<>,;:"()[]\\' for ch in address)


def _addresses(env: dict, name: str, default: str, *, single: bool = False) -> list[str]:
    """Addresses as ``user@domain`` or ``Name <user@domain>`` (display names kept, quoted as needed)."""
    from email import errors
    from email import policy as email_policy
    from email.headerregistry import Address

    raw = str(env.get(name, ""))
    if any(ch in raw for ch in "\r\n\0"):
        raise ConfigError(f"{name} contains a line break (allowed: {'an address' if single else 'addresses'})")
    raw = raw.strip() or default
    allowed = "user@domain or Name <user@domain>" + ("" if single else ", comma-separated")
    header = email_policy.default.header_factory("To", raw)
    bad = next((d for d in header.defects if not isinstance(d, errors.ObsoleteHeaderDefect)), None)
    addresses = [a for a in header.addresses if a.addr_spec]
    if single and len(addresses) != 1:
        raise ConfigError(f"{name}={_shown(raw)} must be exactly one address (like ops@example.com)")
    if not addresses:
        raise ConfigError(f"{name}={_shown(raw)} names no address (allowed: {allowed})")
    for address in addresses:
        if not is_plausible_address(address.addr_spec) or not address.display_name.isprintable():
            raise ConfigError(f"{name}: {_shown(str(address))} is not an e-mail address (allowed: {allowed})")
    if bad is not None:
        raise ConfigError(f"{name}={_shown(raw)} is not a valid address list ({bad}; allowed: {allowed})")
    unique = {a.addr_spec.lower(): a for a in reversed(addresses)}  # drop repeats, keep the first
    return [
        str(Address(a.display_name, addr_spec=a.addr_spec)) if a.display_name else a.addr_spec
        for a in addresses
        if unique[a.addr_spec.lower()] is a
    ]


def _http_url(env: dict, name: str) -> str | None:
    raw = _raw(env, name)
    if not raw:
        return None
    scheme, sep, rest = raw.partition("://")
    host = rest.split("/", 1)[0]
    if sep != "://" or scheme.lower() not in ("http", "https") or not host or not raw.isprintable() or " " in raw:
        raise ConfigError(f"{name}={_shown(raw)} is not an http:// or https:// URL")
    return raw


_EXAMPLE_URLS = {
    "ALERTMANAGER_URL": "http://alertmanager.example.com:9093",
    "ALERT_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXX",
    "BATCH_PING_URL": "https://hc-ping.com/your-check-uuid",
}


def _endpoint_urls(env: dict, name: str, *, single: bool = False) -> list[str]:
    """Comma-separated http(s) URLs, each with a host (and a valid port, no user:password); [] when unset."""
    raw = _raw(env, name)
    urls = [part.strip() for part in raw.split(",") if part.strip()]
    if not urls:
        return urls
    from urllib.parse import urlsplit  # only when set: every hook reads this configuration

    if single and len(urls) > 1:
        raise ConfigError(f"{name}={_shown(raw)} names more than one URL (allowed: one http:// or https:// URL)")
    for url in urls:
        allowed = f"an http:// or https:// URL with a host, e.g. {_EXAMPLE_URLS.get(name, 'https://host.example.com/')}"
        try:
            parts = urlsplit(url)
            valid = parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:  # a port that is not a number, or out of range
            valid = False
        if not valid or not url.isprintable() or " " in url:
            raise ConfigError(f"{name}={_shown(url)} is not allowed ({allowed})")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"{name}: user:password@ in the URL is not supported (allowed: {allowed})")
    return urls


def _endpoint_url(env: dict, name: str) -> str | None:
    return next(iter(_endpoint_urls(env, name, single=True)), None)


def _host(env: dict, name: str, examples: str, default: str = "") -> str | None:
    """An IP address (``[v6]`` unbracketed) or a host name of ASCII labels, the last not all digits; None if unset."""
    import ipaddress

    raw = _raw(env, name) or default
    if not raw:
        return None
    candidate = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        pass
    labels = candidate.removesuffix(".").split(".")
    plain = candidate is raw and candidate.isascii() and len(candidate) <= 253 and not labels[-1].isdigit()
    valid = plain and all(
        0 < len(label) <= 63 and "-" not in (label[0], label[-1]) and all(ch.isalnum() or ch in "-_" for ch in label)
        for label in labels
    )
    if not valid:
        raise ConfigError(f"{name}={_shown(raw)} is not a host name or IP address (e.g. {examples})")
    return candidate


def _password(env: dict) -> Secret | None:
    inline = str(env.get("SMTP_PASSWORD", ""))
    file_name = _raw(env, "SMTP_PASSWORD_FILE")
    if inline and file_name:
        raise ConfigError("SMTP_PASSWORD and SMTP_PASSWORD_FILE are both set (allowed: one of them)")
    if any(ch in inline for ch in "\r\n\0"):
        raise ConfigError("SMTP_PASSWORD contains a line break (allowed: one line)")
    if not file_name:
        return Secret(inline) if inline else None
    variable = f"SMTP_PASSWORD_FILE={_shown(file_name)}"
    try:
        with open(os.path.expanduser(file_name), "rb") as handle:
            data = handle.read(MAX_PASSWORD_FILE_BYTES + 1)
    except OSError as exc:  # name the file and the OS reason; never echo its contents
        raise ConfigError(f"{variable} cannot be read: {exc.strerror}") from None
    if len(data) > MAX_PASSWORD_FILE_BYTES:
        raise ConfigError(f"{variable} is too large for a password file")
    try:
        # One trailing newline is how editors and `echo` write files; it is not part of the password.
        password = data.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise ConfigError(f"{variable} is not UTF-8 text") from None
    if not password:
        raise ConfigError(f"{variable} is empty")
    if any(ch in password for ch in "\r\n\0"):
        raise ConfigError(f"{variable} holds more than one line")
    return Secret(password)
