"""Timeline lines in Chinese (issue 16 item 11): the engine's stored English event messages are
translated when the console shows them; stored data and processors' own text stay as written."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import select

from tests.console_support import logged_in_client
from webapp.console.event_messages import event_message
from webapp.console.i18n import LANGUAGE_COOKIE
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.models import TaskEvent

ZH = {"Cookie": f"{LANGUAGE_COOKIE}=zh_Hans"}


@pytest.mark.parametrize("stored,shown", [
    ("cancel requested while running; the processor decides when to stop", "运行中请求取消；何时停止由处理器决定"),
    ("edited and resubmitted as task 42", "已编辑并重新提交为任务 42"),
    ("bulk cancel", "批量取消"),
    ("worker host-1:123:ab stopped heartbeating", "工作进程 host-1:123:ab 停止了心跳"),
    ("the cancel request was not honoured; the attempt ended SUCCESS", "取消请求未被执行；该次尝试以 SUCCESS 结束"),
    # A processor's own message is kept; only the engine's wrapping is translated, nested ones too.
    ("disk full (retry 1 of 3 in 2.5s)", "disk full（2.5 秒后第 1 次重试，共 3 次）"),
    ("time limit of 2 s exceeded (retry 2 of 3 in 10s)", "超过时间限制 2 秒（10 秒后第 2 次重试，共 3 次）"),
    ("recovered 4 times already (limit max_retry_count + 1 = 4); last: worker w1 stopped heartbeating; giving up",
     "已恢复 4 次（上限 max_retry_count + 1 = 4）；最近一次：工作进程 w1 停止了心跳；放弃"),
    ("bad row 7 (not retryable)", "bad row 7（不可重试）"),
    ("bad row 7", "bad row 7"),
    ("", ""),
])
def test_engine_messages_in_chinese(app: Flask, stored: str, shown: str) -> None:
    with app.test_request_context("/", headers=ZH):
        assert event_message(stored) == shown
    with app.test_request_context("/"):
        assert event_message(stored) == stored  # English: the stored text itself


def test_the_timeline_shows_them_translated_and_the_stored_text_stays(app: Flask) -> None:
    with app.app_context():
        service = AsyncTaskService()
        task_id = service.submit_task("NOOP", {"n": 1}).id
        assert service.cancel_waiting([task_id], "someone", message="bulk cancel") == [task_id]
        db.session.commit()
        db.session.remove()
    client, _ = logged_in_client(app, "viewer", "zh-viewer")
    client.set_cookie(LANGUAGE_COOKIE, "zh_Hans")
    page = client.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert '<div class="event-message">批量取消</div>' in page
    english, _ = logged_in_client(app, "viewer", "en-viewer")
    assert '<div class="event-message">bulk cancel</div>' in english.get(f"/tasks/{task_id}").get_data(as_text=True)
    with app.app_context():
        try:
            messages = db.session.scalars(select(TaskEvent.message).where(TaskEvent.task_id == task_id)).all()
            assert "bulk cancel" in messages
        finally:
            db.session.remove()
