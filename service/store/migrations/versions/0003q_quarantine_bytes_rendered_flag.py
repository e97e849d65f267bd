"""quarantined bodies as bytes; deliveries say whether their params are rendered

Revision ID: 0003q
Revises: 0002

A quarantined body is kept byte for byte (NUL and invalid UTF-8 included, which PostgreSQL's text
refuses). Bodies stored before were decoded with backslashreplace; they are kept as that text's UTF-8.
Deliveries planned from now on hold their unrendered templates (rendered at action time); rows from
before this revision hold rendered params, hence the server default.
"""
import sqlalchemy as sa
from alembic import op

revision = '0003q'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column('quarantine', 'body', type_=sa.LargeBinary(), existing_nullable=False,
                        postgresql_using="convert_to(body, 'UTF8')")
    else:
        with op.batch_alter_table('quarantine', schema=None) as batch_op:
            batch_op.alter_column('body', type_=sa.LargeBinary(), existing_nullable=False)
        # SQLite keeps each value's own storage class: make the old text values blobs too.
        op.execute("UPDATE quarantine SET body = CAST(body AS BLOB) WHERE typeof(body) = 'text'")
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rendered', sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('rendered')
    # Back to text as before this revision: undecodable bytes and NUL become backslash escapes.
    bind = op.get_bind()
    with op.batch_alter_table('quarantine', schema=None) as batch_op:
        batch_op.add_column(sa.Column('body_text', sa.Text(), nullable=True))
    for row_id, body in bind.execute(sa.text("SELECT id, body FROM quarantine")).all():
        text = bytes(body).decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
        bind.execute(sa.text("UPDATE quarantine SET body_text = :text WHERE id = :id"), {"text": text, "id": row_id})
    with op.batch_alter_table('quarantine', schema=None) as batch_op:
        batch_op.drop_column('body')
        batch_op.alter_column('body_text', new_column_name='body', existing_type=sa.Text(), nullable=False)
