"""tenant boundary: who supplied a rule set; operator-linked sub-accounts

Revision ID: 0003t
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = '0003t'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rule sets applied before this revision came from the operator's CLI.
    with op.batch_alter_table('rulesets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('supplied_by', sa.String(length=20), nullable=False,
                                      server_default='operator'))
    op.create_table('account_links',
    sa.Column('account_id', sa.String(length=64), nullable=False),
    sa.Column('sub_account_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id', 'sub_account_id')
    )


def downgrade() -> None:
    op.drop_table('account_links')
    with op.batch_alter_table('rulesets', schema=None) as batch_op:
        batch_op.drop_column('supplied_by')
