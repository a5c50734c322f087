"""Console round 2: one clock per user (local time or UTC)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 13:40:00

``console_user.time_zone`` remembers whether the console shows this user every time in their
browser's own zone (``local``, the default) or in UTC (``utc``). The browser's zone itself is not
stored: it is the browser's, sent with each request (see ``webapp/console/clock.py``).
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('console_user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('time_zone', sa.String(length=8), nullable=False,
                                      server_default='local'))


def downgrade():
    with op.batch_alter_table('console_user', schema=None) as batch_op:
        batch_op.drop_column('time_zone')
