"""Console round 2: per-minute and hourly task statistics

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 10:30:00

"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('task_stat',
    sa.Column('task_type', sa.String(length=100), nullable=False),
    sa.Column('period_seconds', sa.Integer(), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started', sa.Integer(), nullable=False),
    sa.Column('succeeded', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('retried', sa.Integer(), nullable=False),
    sa.Column('run_count', sa.Integer(), nullable=False),
    sa.Column('run_p50_ms', sa.Float(), nullable=True),
    sa.Column('run_p95_ms', sa.Float(), nullable=True),
    sa.Column('run_max_ms', sa.Float(), nullable=True),
    sa.Column('wait_count', sa.Integer(), nullable=False),
    sa.Column('wait_p50_ms', sa.Float(), nullable=True),
    sa.Column('wait_p95_ms', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('task_type', 'period_seconds', 'period_start'),
    )
    op.create_index('ix_task_stat_period', 'task_stat', ['period_seconds', 'period_start'])
    op.create_table('task_stat_mark',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('next_minute', sa.DateTime(timezone=True), nullable=True),
    sa.Column('event_floor', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name'),
    )
    # The one row every aggregation run locks (so concurrent workers never aggregate twice at once).
    op.execute("INSERT INTO task_stat_mark (name, next_minute, event_floor) VALUES ('minutes', NULL, 0)")


def downgrade():
    op.drop_table('task_stat_mark')
    op.drop_index('ix_task_stat_period', table_name='task_stat')
    op.drop_table('task_stat')
