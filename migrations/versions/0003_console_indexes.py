"""Console at scale: indexes for the task list's type filter, the oldest due task and the
notification recipient filter

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 02:30:00

"""
from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

WAITING = "status IN ('PENDING', 'RETRYING')"


def upgrade():
    # /tasks?task_type=X is ordered by id: without (task_type, id) a type whose rows are all
    # old makes the planner walk the primary key backwards through every newer row.
    op.create_index('ix_async_task_type_id', 'async_task', ['task_type', 'id'])
    # min(next_run_at) of waiting tasks and the (capped) count of due ones read the start of
    # this index; the claim's index leads with priority, so it had to be read whole.
    op.create_index('ix_async_task_waiting_next_run', 'async_task', ['next_run_at'],
                    postgresql_where=sa.text(WAITING), sqlite_where=sa.text(WAITING))
    # Equality only, and a hash entry is a few bytes whatever the length of a webhook URL.
    op.create_index('ix_notification_recipient', 'notification', ['recipient'],
                    postgresql_using='hash')


def downgrade():
    op.drop_index('ix_notification_recipient', table_name='notification')
    op.drop_index('ix_async_task_waiting_next_run', table_name='async_task')
    op.drop_index('ix_async_task_type_id', table_name='async_task')
