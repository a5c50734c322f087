"""Login throttling shared by every process; password and session lifetimes

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 10:00:00

Failed and throttled logins are counted in ``login_failure_counter`` (one row per address,
per user, and per user and address) so every gunicorn worker and every web host applies the
same limits. Password rules and session lifetimes need no schema change.
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'login_failure_counter',
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('scope', sa.String(length=16), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('window_started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_failure_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('audit_id', sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint('key'),
    )
    with op.batch_alter_table('login_failure_counter', schema=None) as batch_op:
        batch_op.create_index('ix_login_failure_counter_last_failure_at', ['last_failure_at'],
                              unique=False)


def downgrade():
    with op.batch_alter_table('login_failure_counter', schema=None) as batch_op:
        batch_op.drop_index('ix_login_failure_counter_last_failure_at')
    op.drop_table('login_failure_counter')
