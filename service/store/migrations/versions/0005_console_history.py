"""console history: delivery attempts, rules versions, replay jobs; indexes for the console's lists

Revision ID: 0005
Revises: 0004

The single-column account_id indexes of deliveries and events are replaced by (account_id, id) ones,
which serve every query the old ones did and also give the console's newest-first pages.
Every existing rulesets row gets its version row (actor "migration"), so history starts at today's rules.
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

DELIVERY_INDEXES = (
    ('ix_deliveries_account_id_id', ['account_id', 'id']),
    ('ix_deliveries_account_status_id', ['account_id', 'status', 'id']),
    ('ix_deliveries_account_connection_id', ['account_id', 'connection', 'id']),
    ('ix_deliveries_account_rule_id', ['account_id', 'rule_name', 'id']),
    ('ix_deliveries_account_event_type_id', ['account_id', 'event_type', 'id']),
    ('ix_deliveries_account_created_at', ['account_id', 'created_at']),
)
EVENT_INDEXES = (
    ('ix_events_account_id_id', ['account_id', 'id']),
    ('ix_events_account_type_id', ['account_id', 'type', 'id']),
    ('ix_events_account_type_occurred_at', ['account_id', 'type', 'occurred_at']),
)


def upgrade() -> None:
    op.create_table('delivery_attempts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.String(length=64), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=20), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('request_excerpt', sa.Text(), nullable=True),
    sa.Column('response_excerpt', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('delivery_attempts', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_attempts_delivery_id_id', ['delivery_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_delivery_attempts_account_id'), ['account_id'], unique=False)

    op.create_table('ruleset_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('applied_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=100), server_default='service', nullable=False),
    sa.Column('supplied_by', sa.String(length=20), server_default='operator', nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('account_id', 'version')
    )
    op.execute("INSERT INTO ruleset_versions (account_id, version, source, applied_at, actor, supplied_by) "
               "SELECT account_id, version, source, applied_at, 'migration', supplied_by FROM rulesets")

    op.create_table('replay_jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.String(length=64), nullable=False),
    sa.Column('filter', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('total', sa.Integer(), nullable=True),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('last_delivery_id', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('replay_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_replay_jobs_account_id'), ['account_id'], unique=False)

    _swap_indexes(('deliveries', DELIVERY_INDEXES, 'ix_deliveries_account_id'),
                  ('events', EVENT_INDEXES, 'ix_events_account_id'))


def _swap_indexes(*changes: tuple[str, tuple, str]) -> None:
    """Create each table's new indexes, then drop its old one. On PostgreSQL CONCURRENTLY, outside the
    transaction, so a large deliveries table keeps taking writes (ingest runs on) while they are built;
    IF NOT EXISTS / IF EXISTS let a migration interrupted half-way run again."""
    if op.get_bind().dialect.name == 'postgresql':
        with op.get_context().autocommit_block():
            for table, indexes, old in changes:
                for name, columns in indexes:
                    op.create_index(name, table, columns, unique=False, postgresql_concurrently=True,
                                    if_not_exists=True)
                op.drop_index(old, table_name=table, postgresql_concurrently=True, if_exists=True)
        return
    for table, indexes, old in changes:
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name, columns in indexes:
                batch_op.create_index(name, columns, unique=False)
            batch_op.drop_index(old)


def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_account_id', ['account_id'], unique=False)
        for name, _columns in EVENT_INDEXES:
            batch_op.drop_index(name)
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_account_id', ['account_id'], unique=False)
        for name, _columns in DELIVERY_INDEXES:
            batch_op.drop_index(name)
    with op.batch_alter_table('replay_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_replay_jobs_account_id'))
    op.drop_table('replay_jobs')
    op.drop_table('ruleset_versions')
    with op.batch_alter_table('delivery_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_attempts_account_id'))
        batch_op.drop_index('ix_delivery_attempts_delivery_id_id')
    op.drop_table('delivery_attempts')
