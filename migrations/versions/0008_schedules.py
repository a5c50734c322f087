"""Recurring schedules and their run records

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 10:00:00

"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade():
    op.create_table('schedule',
    sa.Column('id', BIG_ID, autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('task_type', sa.String(length=100), nullable=False),
    sa.Column('payload', JSON_DOC, nullable=False),
    sa.Column('priority', sa.Integer(), nullable=True),
    sa.Column('created_by', sa.String(length=255), nullable=True),
    sa.Column('cron', sa.String(length=200), nullable=True),
    sa.Column('interval_seconds', sa.Integer(), nullable=True),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('start_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('end_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('overlap', sa.String(length=16), nullable=False),
    sa.Column('catch_up', sa.String(length=16), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('declared_in', sa.String(length=500), nullable=True),
    sa.Column('anchor_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_fire_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=255), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', name='uq_schedule_name'),
    )
    # The scheduler job's one query when nothing is due: the earliest next fire of enabled rows.
    op.create_index('ix_schedule_due', 'schedule', ['next_fire_at'],
                    postgresql_where=sa.text('enabled'), sqlite_where=sa.text('enabled = 1'))
    op.create_table('schedule_run',
    sa.Column('id', BIG_ID, autoincrement=True, nullable=False),
    sa.Column('schedule_id', BIG_ID, nullable=False),
    sa.Column('slot_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('task_id', BIG_ID, nullable=True),
    sa.Column('skip_reason', sa.String(length=500), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=255), nullable=True),
    sa.ForeignKeyConstraint(['schedule_id'], ['schedule.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['async_task.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    # One task per slot, whatever the number of schedulers: the racers' inserts collide here.
    sa.UniqueConstraint('schedule_id', 'slot_at', name='uq_schedule_run_slot'),
    )
    op.create_index('ix_schedule_run_task_id', 'schedule_run', ['task_id'])


def downgrade():
    op.drop_index('ix_schedule_run_task_id', table_name='schedule_run')
    op.drop_table('schedule_run')
    op.drop_index('ix_schedule_due', table_name='schedule')
    op.drop_table('schedule')
