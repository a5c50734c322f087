"""Workflows: tasks that wait for other tasks, callbacks

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 10:30:00

"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade():
    op.create_table('workflow',
    sa.Column('id', BIG_ID, autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('on_failure', sa.String(length=32), nullable=False),
    sa.Column('callbacks', JSON_DOC, nullable=False),
    sa.Column('task_count', sa.Integer(), nullable=False),
    sa.Column('succeeded', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('cancelled', sa.Integer(), nullable=False),
    sa.Column('principal', sa.String(length=255), nullable=True),
    sa.Column('created_by', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_workflow_status_id', 'workflow', ['status', 'id'])
    op.create_index('ix_workflow_name_id', 'workflow', ['name', 'id'])
    # No foreign key to workflow: adding one would rebuild async_task on SQLite.
    with op.batch_alter_table('async_task') as batch:
        batch.add_column(sa.Column('workflow_id', BIG_ID, nullable=True))
        batch.add_column(sa.Column('workflow_key', sa.String(length=100), nullable=True))
        batch.add_column(sa.Column('pending_parents', sa.Integer(), nullable=False, server_default='0'))
    op.create_index('uq_async_task_workflow_key', 'async_task', ['workflow_id', 'workflow_key'], unique=True,
                    postgresql_where=sa.text('workflow_id IS NOT NULL'),
                    sqlite_where=sa.text('workflow_id IS NOT NULL'))
    op.create_table('workflow_edge',
    sa.Column('parent_id', BIG_ID, nullable=False),
    sa.Column('child_id', BIG_ID, nullable=False),
    sa.ForeignKeyConstraint(['parent_id'], ['async_task.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['child_id'], ['async_task.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('parent_id', 'child_id'),
    )
    op.create_index('ix_workflow_edge_child_id', 'workflow_edge', ['child_id'])


def downgrade():
    op.drop_index('ix_workflow_edge_child_id', table_name='workflow_edge')
    op.drop_table('workflow_edge')
    op.drop_index('uq_async_task_workflow_key', table_name='async_task')
    with op.batch_alter_table('async_task') as batch:
        batch.drop_column('pending_parents')
        batch.drop_column('workflow_key')
        batch.drop_column('workflow_id')
    op.drop_index('ix_workflow_name_id', table_name='workflow')
    op.drop_table('workflow')
