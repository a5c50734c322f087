"""Task search: trigram indexes over error text and payload text (PostgreSQL only)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 01:45:00

"""
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name != 'postgresql':
        return  # SQLite searches with LIKE over the rows its other filters leave
    op.execute('CREATE EXTENSION IF NOT EXISTS pg_trgm')
    op.execute('CREATE INDEX IF NOT EXISTS ix_async_task_error_trgm ON async_task '
               'USING gin (error gin_trgm_ops) WHERE error IS NOT NULL')
    op.execute('CREATE INDEX IF NOT EXISTS ix_async_task_payload_trgm ON async_task '
               'USING gin ((payload::text) gin_trgm_ops)')


def downgrade():
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute('DROP INDEX IF EXISTS ix_async_task_payload_trgm')
    op.execute('DROP INDEX IF EXISTS ix_async_task_error_trgm')
