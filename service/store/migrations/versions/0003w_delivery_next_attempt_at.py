"""deliveries.next_attempt_at: due times live in the row, not in a worker's memory

Revision ID: 0003w
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = '0003w'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_deliveries_status_next_attempt_at', ['status', 'next_attempt_at'], unique=False)
    # Retries scheduled before this revision were countdowns in a worker's memory: make them due now.
    op.execute("UPDATE deliveries SET next_attempt_at = updated_at WHERE status = 'retrying'")


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_status_next_attempt_at')
        batch_op.drop_column('next_attempt_at')
