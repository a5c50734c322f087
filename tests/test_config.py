"""Configuration: environment, YAML file, validation naming the setting, typed engine settings."""

from pathlib import Path

import pytest

from webapp import create_app
from webapp.config import (
    ConfigError,
    EngineSettings,
    engine_settings,
    load_settings,
    normalise_database_url,
)
from webapp.notifications.dispatcher import NotificationDispatcher
from webapp.tasks.consumer import Consumer


def test_defaults(tmp_path):
    settings = load_settings(str(tmp_path), environ={})
    assert settings["ASYNC_TASK_POLL_INTERVAL"] == 5.0
    assert settings["ASYNC_TASK_BATCH_SIZE"] == 10
    assert settings["ASYNC_TASK_CONCURRENCY"] == 3
    assert settings["ASYNC_TASK_MAX_PROCESSING_TIME"] == 3600.0
    assert settings["ASYNC_TASK_CONSUMER_ENABLED"] is True
    assert settings["REDIS_URL"] is None
    assert settings["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path}/tasks.sqlite3"


def test_environment_values_are_parsed(tmp_path):
    env = {"ASYNC_TASK_POLL_INTERVAL": "0.25", "ASYNC_TASK_BATCH_SIZE": "50",
           "ASYNC_TASK_CONSUMER_ENABLED": "false", "ASYNC_TASK_PROCESSORS": "a.b, c.d,,",
           "REDIS_URL": "redis://x:6379/2"}
    settings = load_settings(str(tmp_path), environ=env)
    assert settings["ASYNC_TASK_POLL_INTERVAL"] == 0.25
    assert settings["ASYNC_TASK_BATCH_SIZE"] == 50
    assert settings["ASYNC_TASK_CONSUMER_ENABLED"] is False
    assert settings["ASYNC_TASK_PROCESSORS"] == ["a.b", "c.d"]
    assert settings["REDIS_URL"] == "redis://x:6379/2"


@pytest.mark.parametrize("name,value", [
    ("ASYNC_TASK_POLL_INTERVAL", "soon"),
    ("ASYNC_TASK_POLL_INTERVAL", "0"),
    ("ASYNC_TASK_BATCH_SIZE", "2.5"),
    ("ASYNC_TASK_CONCURRENCY", "-1"),
    ("ASYNC_TASK_CONSUMER_ENABLED", "maybe"),
    ("ASYNC_TASK_MAX_PROCESSING_TIME", "nan"),
])
def test_bad_values_name_the_setting(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings(str(tmp_path), environ={name: value})


@pytest.mark.parametrize("url,expected", [
    ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
    ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
    ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ("sqlite:///x.db", "sqlite:///x.db"),
])
def test_database_url_spellings(url, expected):
    assert normalise_database_url(url) == expected


def test_yaml_file_like_the_original(tmp_path):
    config_file = tmp_path / "application.yml"
    config_file.write_text(
        "async-task:\n  consumer:\n    enabled: false\n    poll-interval: 2\n    batch-size: 20\n"
        "    concurrency: 4\n    max-processing-time: 600\n")
    settings = load_settings(str(tmp_path), environ={"ASYNC_TASK_CONFIG_FILE": str(config_file)})
    assert settings["ASYNC_TASK_CONSUMER_ENABLED"] is False
    assert settings["ASYNC_TASK_POLL_INTERVAL"] == 2.0
    assert settings["ASYNC_TASK_BATCH_SIZE"] == 20
    assert settings["ASYNC_TASK_CONCURRENCY"] == 4
    assert settings["ASYNC_TASK_MAX_PROCESSING_TIME"] == 600.0


def test_environment_beats_yaml(tmp_path):
    config_file = tmp_path / "application.yml"
    config_file.write_text("async-task:\n  consumer:\n    batch-size: 20\n")
    settings = load_settings(str(tmp_path), environ={"ASYNC_TASK_CONFIG_FILE": str(config_file),
                                                     "ASYNC_TASK_BATCH_SIZE": "7"})
    assert settings["ASYNC_TASK_BATCH_SIZE"] == 7


@pytest.mark.parametrize("text,message", [
    ("async-task:\n  consumer:\n    poll-intervall: 2\n", "poll-intervall"),
    ("async-task:\n  consumer:\n    batch-size: lots\n", "ASYNC_TASK_BATCH_SIZE"),
    ("other: 1\n", "async-task"),
    ("async-task: [\n", "not valid YAML"),
])
def test_bad_yaml_is_a_startup_error(tmp_path, text, message):
    config_file = tmp_path / "application.yml"
    config_file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(str(tmp_path), environ={"ASYNC_TASK_CONFIG_FILE": str(config_file)})


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(str(tmp_path), environ={"ASYNC_TASK_CONFIG_FILE": str(tmp_path / "nope.yml")})


def test_create_app_refuses_a_bad_setting(tmp_path):
    with pytest.raises(ConfigError, match="ASYNC_TASK_CONCURRENCY"):
        create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/x.db",
                    "ASYNC_TASK_CONCURRENCY": "zero"})


def test_trusted_proxies_give_the_real_client_address(tmp_path):
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/x.db",
                      "ASYNC_TASK_TRUSTED_PROXIES": 1})

    @app.get("/_whoami")
    def whoami():
        from flask import request

        return f"{request.remote_addr} {request.scheme}"

    reply = app.test_client().get("/_whoami", headers={"X-Forwarded-For": "203.0.113.9",
                                                       "X-Forwarded-Proto": "https"})
    assert reply.text == "203.0.113.9 https"
    plain = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/y.db"})
    assert plain.config["ASYNC_TASK_TRUSTED_PROXIES"] == 0


# -- typed engine settings ----------------------------------------------------------------------

ENGINE_PACKAGES = ("webapp/tasks", "webapp/notifications")


def test_engine_settings_are_built_once_from_the_parsed_configuration(make_app):
    app = make_app("sqlite", ASYNC_TASK_CONCURRENCY="7", ASYNC_TASK_NOTIFY_TIMEOUT="4", MAIL_TIMEOUT="6",
                   ASYNC_TASK_PREFETCH="2", ASYNC_TASK_HEARTBEAT_INTERVAL="2")
    settings = engine_settings(app)
    assert isinstance(settings, EngineSettings)
    assert engine_settings(app) is settings  # one object, kept
    assert (settings.concurrency, settings.prefetch, settings.notify_timeout) == (7, 2, 4.0)
    assert settings.smtp_timeout == 6.0
    assert settings.notification_lease == 12 * 6.0 + 30
    consumer = Consumer(app)
    assert (consumer.concurrency, consumer.prefetch, consumer.heartbeat_interval) == (7, 2, 2.0)
    assert NotificationDispatcher(app).lease_seconds == settings.notification_lease


def test_the_engine_reads_no_setting_outside_engine_settings():
    """Defaults live in config.SETTINGS only: the engine's parts never read ``app.config`` themselves."""
    root = Path(__file__).resolve().parent.parent
    readers = []
    for package in ENGINE_PACKAGES:
        for path in sorted((root / package).glob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if ("config.get(" in line or 'config["' in line) and path.name != "engine.py":
                    readers.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert readers == []
