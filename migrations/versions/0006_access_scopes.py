"""API token scopes and reach; the principal that submitted each task

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 10:00:00

Tokens that exist already keep every scope and reach every task (server defaults), until an
admin narrows them with ``flask tokens update``; tokens created from now on reach their own
tasks unless created with ``--reach all``. Existing tasks have no principal (NULL): only a
token reaching every task sees them.
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('api_token') as batch:
        batch.add_column(sa.Column('scopes', sa.String(length=64), nullable=False,
                                   server_default='submit,read,operate'))
        batch.add_column(sa.Column('reach', sa.String(length=8), nullable=False, server_default='all'))
        batch.add_column(sa.Column('allowed_recipients', sa.String(length=2000), nullable=True))
        batch.add_column(sa.Column('notifications_per_hour', sa.Integer(), nullable=True))
    with op.batch_alter_table('async_task') as batch:
        batch.add_column(sa.Column('principal', sa.String(length=255), nullable=True))
    op.create_index('ix_async_task_principal_id', 'async_task', ['principal', 'id'], unique=False)


def downgrade():
    op.drop_index('ix_async_task_principal_id', table_name='async_task')
    with op.batch_alter_table('async_task') as batch:
        batch.drop_column('principal')
    with op.batch_alter_table('api_token') as batch:
        batch.drop_column('notifications_per_hour')
        batch.drop_column('allowed_recipients')
        batch.drop_column('reach')
        batch.drop_column('scopes')
