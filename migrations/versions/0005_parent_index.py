"""Edit-and-retry lineage: index the (few) tasks that have a parent

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 02:30:00

"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index('ix_async_task_parent_id', 'async_task', ['parent_id'], unique=False,
                    postgresql_where=sa.text('parent_id IS NOT NULL'),
                    sqlite_where=sa.text('parent_id IS NOT NULL'))


def downgrade():
    op.drop_index('ix_async_task_parent_id', table_name='async_task')
