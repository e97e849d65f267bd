"""deliveries: when the effect landed (succeeded_at) and the receiver's request id

Revision ID: 0003b
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = '0003b'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('succeeded_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('request_id', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('request_id')
        batch_op.drop_column('succeeded_at')
