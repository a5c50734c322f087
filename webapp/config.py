"""Configuration: environment variables (and ``.env``), an optional YAML file, then overrides.

Precedence, lowest first: built-in defaults, the YAML file named by ``ASYNC_TASK_CONFIG_FILE``
(shaped like the original module's ``application.yml``), environment variables, and the mapping
passed to ``create_app``. Every value is parsed and checked here so that a bad value stops the
application at start-up with a message naming the setting, instead of failing later in a worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .schedules.setting import parse_schedules_setting

if TYPE_CHECKING:
    from flask import Flask


class ConfigError(ValueError, SystemExit):
    """A setting has a value the application cannot use.

    Also a ``SystemExit`` whose code is the one-line message: uncaught (``flask …``, gunicorn,
    ``make run``) it prints that line and exits 1 instead of a 48-line traceback, while code and
    tests still catch it as a ``ValueError``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = f"Configuration error: {message}"


def _reason(exc: Exception) -> str:
    """A parser's complaint in the operator's words (Python's conversion messages name types)."""
    text = str(exc)
    if text.startswith("could not convert"):
        return "expected a number"
    if text.startswith("invalid literal for int"):
        return "expected a whole number"
    return text


def _shown(default: Any) -> str:
    if isinstance(default, bool):
        return "true" if default else "false"
    if default is None or default == []:
        return "(none)"
    return str(default)


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _positive_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    number = float(value)
    if not number > 0 or number != number or number == float("inf"):
        raise ValueError("expected a positive number")
    return number


def _positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("expected a whole number")
    number = int(str(value).strip()) if not isinstance(value, int | float) else int(value)
    if number < 1:
        raise ValueError("expected a whole number of at least 1")
    return number


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("expected a whole number")
    number = int(str(value).strip()) if not isinstance(value, int | float) else int(value)
    if number < 0:
        raise ValueError("expected a whole number of at least 0")
    return number


def _module_list(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        items = [str(item).strip() for item in value]
    else:
        items = [item.strip() for item in str(value).split(",")]
    return [item for item in items if item]


def _optional_str(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _log_format(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("text", "json"):
        raise ValueError("expected text or json")
    return text


def _mail_language(value: Any) -> str:
    """The default notification mail's language: ``en`` or ``zh_Hans`` (``zh``, ``zh-CN`` accepted)."""
    text = str(value).strip().replace("-", "_").lower()
    if text in ("en", "en_us", "en_gb"):
        return "en"
    if text in ("zh", "zh_hans", "zh_cn", "zh_sg"):
        return "zh_Hans"
    raise ValueError("expected en or zh_Hans")


# name -> (parser, default). Every ASYNC_TASK_* setting the engine reads is listed here.
SETTINGS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "ASYNC_TASK_CONSUMER_ENABLED": (_parse_bool, True),
    "ASYNC_TASK_POLL_INTERVAL": (_positive_float, 5.0),
    "ASYNC_TASK_BATCH_SIZE": (_positive_int, 10),
    "ASYNC_TASK_CONCURRENCY": (_positive_int, 3),
    "ASYNC_TASK_PREFETCH": (_non_negative_int, 0),
    # Attempts of ``async def`` processors one worker runs at a time on its event loop.
    "ASYNC_TASK_ASYNC_CONCURRENCY": (_positive_int, 100),
    "ASYNC_TASK_RETENTION_DAYS": (_non_negative_int, 0),
    "ASYNC_TASK_TRUSTED_PROXIES": (_non_negative_int, 0),
    "ASYNC_TASK_DIRECT_CONNECTIONS": (_parse_bool, True),
    "ASYNC_TASK_MAX_PROCESSING_TIME": (_positive_float, 3600.0),
    "ASYNC_TASK_HEARTBEAT_INTERVAL": (_positive_float, 5.0),
    "ASYNC_TASK_SHUTDOWN_GRACE": (_positive_float, 30.0),
    "ASYNC_TASK_PROCESSORS": (_module_list, []),
    "ASYNC_TASK_REDIS_LOCK_PREFIX": (str, "asynctask:"),
    "ASYNC_TASK_NOTIFY_RETRY_BASE": (_positive_float, 30.0),
    "ASYNC_TASK_NOTIFY_MAX_ATTEMPTS": (_positive_int, 8),
    "ASYNC_TASK_BASE_URL": (str, "http://127.0.0.1:5000"),
    "ASYNC_TASK_NOTIFY_TIMEOUT": (_positive_float, 10.0),
    "ASYNC_TASK_NOTIFY_CONCURRENCY": (_positive_int, 2),
    "ASYNC_TASK_WEBHOOK_SECRET": (_optional_str, None),
    "ASYNC_TASK_WEBHOOK_ALLOW_PRIVATE": (_parse_bool, False),
    "ASYNC_TASK_MAIL_LANGUAGE": (_mail_language, "en"),
    # Development: mails written as .eml files into this folder instead of sent (make run sets it).
    "ASYNC_TASK_DEV_MAIL_DIR": (_optional_str, None),
    "REDIS_URL": (_optional_str, None),
    # Operations (docs/deploy.md): log format, /metrics bearer token, a direct URL for LISTEN.
    "ASYNC_TASK_LOG_FORMAT": (_log_format, "text"),
    "ASYNC_TASK_METRICS_TOKEN": (_optional_str, None),
    "ASYNC_TASK_METRICS_PUBLIC": (_parse_bool, False),
    "ASYNC_TASK_METRICS_CACHE_SECONDS": (_positive_float, 10.0),
    "ASYNC_TASK_LISTEN_DATABASE_URL": (_optional_str, None),
    # Recurring schedules (docs/schedules.md): declared schedules, the scheduler job, catch-up.
    "ASYNC_TASK_SCHEDULES": (parse_schedules_setting, None),
    "ASYNC_TASK_SCHEDULER_ENABLED": (_parse_bool, True),
    "ASYNC_TASK_SCHEDULER_INTERVAL": (_positive_float, 1.0),
    "ASYNC_TASK_SCHEDULE_MISFIRE_GRACE": (_positive_float, 30.0),
    "ASYNC_TASK_SCHEDULE_CATCH_UP_LIMIT": (_positive_int, 100),
    # Workflows (docs/workflows.md): the most tasks one workflow may hold.
    "ASYNC_TASK_WORKFLOW_MAX_TASKS": (_positive_int, 10000),
    # Console sessions (seconds): end after this long without activity (polling is not activity),
    # and this long after login whatever happens.
    "ASYNC_TASK_SESSION_IDLE_TIMEOUT": (_positive_float, 1800.0),
    "ASYNC_TASK_SESSION_LIFETIME": (_positive_float, 43200.0),
    # Process isolation (docs/flow-control.md): a child process is replaced after this many tasks,
    # or once its resident memory passes this many MiB after a task (0: never).
    "ASYNC_TASK_MAX_TASKS_PER_CHILD": (_non_negative_int, 0),
    "ASYNC_TASK_MAX_MEMORY_PER_CHILD": (_non_negative_int, 0),
}

# Flask-Mail's settings, parsed (the environment gives strings; "false" must not mean True).
MAIL_SETTINGS: dict[str, Callable[[Any], Any]] = {
    "MAIL_SERVER": str,
    "MAIL_PORT": _positive_int,
    "MAIL_USE_TLS": _parse_bool,
    "MAIL_USE_SSL": _parse_bool,
    "MAIL_USERNAME": _optional_str,
    "MAIL_PASSWORD": _optional_str,
    "MAIL_DEFAULT_SENDER": _optional_str,
    "MAIL_TIMEOUT": _positive_float,
    "MAIL_MAX_EMAILS": _positive_int,
    "MAIL_SUPPRESS_SEND": _parse_bool,
}

# YAML keys of the original module (under ``async-task: consumer:``) -> setting names.
YAML_CONSUMER_KEYS = {
    "enabled": "ASYNC_TASK_CONSUMER_ENABLED",
    "poll-interval": "ASYNC_TASK_POLL_INTERVAL",
    "batch-size": "ASYNC_TASK_BATCH_SIZE",
    "concurrency": "ASYNC_TASK_CONCURRENCY",
    "max-processing-time": "ASYNC_TASK_MAX_PROCESSING_TIME",
    "heartbeat-interval": "ASYNC_TASK_HEARTBEAT_INTERVAL",
    "shutdown-grace": "ASYNC_TASK_SHUTDOWN_GRACE",
    "prefetch": "ASYNC_TASK_PREFETCH",
}
YAML_TOP_KEYS = {"processors": "ASYNC_TASK_PROCESSORS", "schedules": "ASYNC_TASK_SCHEDULES"}


def normalise_database_url(url: str) -> str:
    """Map the URL spellings people use for PostgreSQL onto the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def read_yaml_settings(path: str) -> dict[str, Any]:
    """Read an ``application.yml``-shaped file into setting names."""
    import yaml  # only a configuration file needs it, not every start

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"ASYNC_TASK_CONFIG_FILE: no such file: {path}")
    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"ASYNC_TASK_CONFIG_FILE: {path} is not valid YAML: {exc}") from exc
    section = document.get("async-task") if isinstance(document, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"ASYNC_TASK_CONFIG_FILE: {path} has no 'async-task:' mapping")
    found: dict[str, Any] = {}
    consumer = section.get("consumer") or {}
    if not isinstance(consumer, dict):
        raise ConfigError(f"ASYNC_TASK_CONFIG_FILE: 'async-task.consumer' in {path} is not a mapping")
    for key, value in consumer.items():
        if key not in YAML_CONSUMER_KEYS:
            raise ConfigError(f"ASYNC_TASK_CONFIG_FILE: unknown key 'async-task.consumer.{key}'")
        found[YAML_CONSUMER_KEYS[key]] = value
    for key, value in section.items():
        if key == "consumer":
            continue
        if key not in YAML_TOP_KEYS:
            raise ConfigError(f"ASYNC_TASK_CONFIG_FILE: unknown key 'async-task.{key}'")
        found[YAML_TOP_KEYS[key]] = value
    return found


def load_settings(
    instance_path: str,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return the application's configuration, parsed and validated."""
    env = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    raw: dict[str, Any] = {name: default for name, (_, default) in SETTINGS.items()}

    config_file = overrides.get("ASYNC_TASK_CONFIG_FILE") or env.get("ASYNC_TASK_CONFIG_FILE")
    if config_file:
        raw.update(read_yaml_settings(str(config_file)))
    for name in SETTINGS:
        if name in env:
            raw[name] = env[name]
    for name in SETTINGS:
        if name in overrides:
            raw[name] = overrides[name]

    settings: dict[str, Any] = {}
    for name, (parse, default) in SETTINGS.items():
        try:
            settings[name] = parse(raw[name])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: invalid value {raw[name]!r} ({_reason(exc)}); correct it, "
                              f"or unset it for the default {_shown(default)}") from None

    default_db = "sqlite:///" + os.path.join(instance_path, "tasks.sqlite3")
    database_url = overrides.get("SQLALCHEMY_DATABASE_URI") or env.get("DATABASE_URL") or default_db
    settings["SQLALCHEMY_DATABASE_URI"] = normalise_database_url(str(database_url))
    settings["SECRET_KEY"] = overrides.get("SECRET_KEY") or env.get("SECRET_KEY")
    settings["MAX_CONTENT_LENGTH"] = _positive_int(
        overrides.get("MAX_CONTENT_LENGTH") or env.get("MAX_CONTENT_LENGTH") or 1024 * 1024
    )
    for name, parse_mail in MAIL_SETTINGS.items():
        value = overrides[name] if name in overrides else env.get(name)
        if value is None:
            continue
        try:
            settings[name] = parse_mail(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: invalid value {value!r} ({_reason(exc)}); correct or unset it") from None
    # Everything else passed explicitly (tests, embedding applications) goes through untouched.
    for name, value in overrides.items():
        if name not in settings and name != "ASYNC_TASK_CONFIG_FILE":
            settings[name] = value
    return settings


@dataclass(frozen=True)
class EngineSettings:
    """The engine's settings, typed: built once per app from its parsed configuration.

    The consumer, the notification dispatcher and the senders take their values from here,
    so no default is written anywhere but in ``SETTINGS`` above.
    """

    concurrency: int
    batch_size: int
    prefetch: int
    async_concurrency: int
    max_tasks_per_child: int
    max_memory_per_child: int  # MiB
    poll_interval: float
    heartbeat_interval: float
    max_processing_time: float
    shutdown_grace: float
    retention_days: int
    direct_connections: bool
    listen_database_url: str | None
    redis_url: str | None
    redis_lock_prefix: str
    notify_concurrency: int
    notify_retry_base: float
    notify_max_attempts: int
    notify_timeout: float
    mail_timeout: float | None
    webhook_secret: str | None
    webhook_allow_private: bool
    mail_language: str
    base_url: str
    dev_mail_dir: str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EngineSettings:
        """Read the values ``load_settings`` parsed (``config`` is ``app.config``)."""
        return cls(
            concurrency=config["ASYNC_TASK_CONCURRENCY"],
            batch_size=config["ASYNC_TASK_BATCH_SIZE"],
            prefetch=config["ASYNC_TASK_PREFETCH"],
            async_concurrency=config["ASYNC_TASK_ASYNC_CONCURRENCY"],
            poll_interval=config["ASYNC_TASK_POLL_INTERVAL"],
            heartbeat_interval=config["ASYNC_TASK_HEARTBEAT_INTERVAL"],
            max_processing_time=config["ASYNC_TASK_MAX_PROCESSING_TIME"],
            shutdown_grace=config["ASYNC_TASK_SHUTDOWN_GRACE"],
            retention_days=config["ASYNC_TASK_RETENTION_DAYS"],
            direct_connections=config["ASYNC_TASK_DIRECT_CONNECTIONS"],
            listen_database_url=config["ASYNC_TASK_LISTEN_DATABASE_URL"],
            redis_url=config["REDIS_URL"],
            redis_lock_prefix=config["ASYNC_TASK_REDIS_LOCK_PREFIX"],
            notify_concurrency=config["ASYNC_TASK_NOTIFY_CONCURRENCY"],
            notify_retry_base=config["ASYNC_TASK_NOTIFY_RETRY_BASE"],
            notify_max_attempts=config["ASYNC_TASK_NOTIFY_MAX_ATTEMPTS"],
            notify_timeout=config["ASYNC_TASK_NOTIFY_TIMEOUT"],
            mail_timeout=config.get("MAIL_TIMEOUT"),
            webhook_secret=config["ASYNC_TASK_WEBHOOK_SECRET"],
            webhook_allow_private=config["ASYNC_TASK_WEBHOOK_ALLOW_PRIVATE"],
            mail_language=config["ASYNC_TASK_MAIL_LANGUAGE"],
            base_url=config["ASYNC_TASK_BASE_URL"],
            dev_mail_dir=config.get("ASYNC_TASK_DEV_MAIL_DIR"),
            max_tasks_per_child=config["ASYNC_TASK_MAX_TASKS_PER_CHILD"],
            max_memory_per_child=config["ASYNC_TASK_MAX_MEMORY_PER_CHILD"],
        )

    @property
    def redis_lock_ttl(self) -> float:
        """A task's Redis lock lives three heartbeats unless its worker's heartbeat extends it."""
        return 3 * self.heartbeat_interval

    @property
    def smtp_timeout(self) -> float:
        """Seconds per SMTP socket operation: ``MAIL_TIMEOUT`` if set, else the notify timeout."""
        return self.mail_timeout or self.notify_timeout

    @property
    def notification_lease(self) -> float:
        """How long a claimed notification stays its sender's.

        An SMTP exchange is about ten socket operations, each allowed the timeout; the lease
        outlasts the slowest send that still succeeds, so a live sender is never overtaken.
        """
        return 12 * max(self.notify_timeout, self.mail_timeout or 0.0) + 30


ENGINE_SETTINGS_KEY = "taskdeck_engine_settings"


def engine_settings(app: Flask) -> EngineSettings:
    """The app's ``EngineSettings``, built from ``app.config`` on first use and kept."""
    settings = app.extensions.get(ENGINE_SETTINGS_KEY)
    if settings is None:
        settings = app.extensions.setdefault(ENGINE_SETTINGS_KEY, EngineSettings.from_config(app.config))
    return settings  # type: ignore[no-any-return]
