"""Merge the schema changes made side by side on 0002 (one head again).

Revision ID: 0004
Revises: 0003b, 0003c, 0003q, 0003r, 0003t, 0003w
"""

revision = '0004'
down_revision = ('0003b', '0003c', '0003q', '0003r', '0003t', '0003w')
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
