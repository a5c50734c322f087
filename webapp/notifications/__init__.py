"""Notifications: the outbox rows a finished task calls for, and their delivery (mail, webhooks).

The task engine calls in through one function, ``composing.queue_for_finished_task`` (inside
the transaction that writes a task's final status), and checks recipients at submit with
``addresses``; nothing here imports the task service back. Modules:

* ``addresses``  what a mail address and a webhook URL must look like (no I/O)
* ``composing``  which rows a task's final status writes, and the default mail
* ``outbox``     claiming due rows and recording outcomes, fenced by the claim token; resend
* ``mail``       SMTP with a timeout on every socket operation
* ``webhook``    signed POSTs, to globally routable addresses only
* ``dispatcher`` the claim pool that sends due rows on threads of its own
* ``queries``    what the console and the API read
* ``quota``      how many notifications an API token's tasks may still send this hour

See docs/notifications.md.
"""
