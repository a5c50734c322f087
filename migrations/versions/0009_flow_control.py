"""Flow control: limits, runtime overrides, start-by deadlines

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 10:30:00

"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade():
    # Starts of rate-limited task types: the claim counts those inside the window.
    op.create_table('task_limit_start',
    sa.Column('id', BIG_ID, autoincrement=True, nullable=False),
    sa.Column('task_type', sa.String(length=100), nullable=False),
    sa.Column('rate_key', sa.String(length=200), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_task_limit_start_window', 'task_limit_start', ['task_type', 'rate_key', 'started_at'])
    # Start-by deadlines: a task not started by then is never started.
    op.add_column('async_task', sa.Column('start_by', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_async_task_start_by', 'async_task', ['start_by'],
                    postgresql_where=sa.text("start_by IS NOT NULL AND status IN ('PENDING', 'RETRYING')"),
                    sqlite_where=sa.text("start_by IS NOT NULL AND status IN ('PENDING', 'RETRYING')"))
    # Operators' runtime overrides of a type's limits (NULL: the processor's value).
    op.create_table('task_limit_override',
    sa.Column('task_type', sa.String(length=100), nullable=False),
    sa.Column('concurrency', sa.Integer(), nullable=True),
    sa.Column('rate_count', sa.Integer(), nullable=True),
    sa.Column('rate_per_seconds', sa.Float(), nullable=True),
    sa.Column('time_limit', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=255), nullable=True),
    sa.PrimaryKeyConstraint('task_type'),
    )


def downgrade():
    op.drop_index('ix_async_task_start_by', table_name='async_task')
    with op.batch_alter_table('async_task') as batch_op:
        batch_op.drop_column('start_by')
    op.drop_table('task_limit_override')
    op.drop_index('ix_task_limit_start_window', table_name='task_limit_start')
    op.drop_table('task_limit_start')
