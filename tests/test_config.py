"""Configuration: environment, YAML file, validation naming the setting."""

import pytest

from webapp import create_app
from webapp.config import ConfigError, load_settings, normalise_database_url


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
