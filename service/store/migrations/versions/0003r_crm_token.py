"""separate CRM hook token; explicit opt-in to unsigned CRM hooks

Existing accounts get no CRM token here: the migration cannot encrypt (the keys are the service's,
not Alembic's), and reusing the VirtualPBX token is what this revision ends. Their CRM endpoint
answers 404 until `pbxrelay accounts rotate-token ID --crm`, or applying a rules file with `crm:`,
issues a CRM token.

Revision ID: 0003r
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = '0003r'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('crm_token_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('crm_token_encrypted', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('crm_unsigned', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.create_index(batch_op.f('ix_accounts_crm_token_hash'), ['crm_token_hash'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_accounts_crm_token_hash'))
        batch_op.drop_column('crm_unsigned')
        batch_op.drop_column('crm_token_encrypted')
        batch_op.drop_column('crm_token_hash')
