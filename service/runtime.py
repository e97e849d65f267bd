"""The process-wide collaborators a worker or the web app needs, built once from Settings."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import redis as redis_py
from sqlalchemy.orm import Session, sessionmaker

from integrations import REGISTRY
from integrations.ratelimit import RateLimiter
from service.config import Settings
from service.pbx.calls import CallCorrelator, RedisCallWindow
from service.redisconn import make_redis
from service.secrets import SecretBox, media_link_box, secret_box
from service.store.models import session_factory


@dataclass
class Runtime:
    """Settings plus lazily built database sessions, Redis, encryption, limiter and correlator."""

    settings: Settings

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        """Session factory for the configured database."""
        return session_factory(self.settings.effective_database_url)

    @cached_property
    def redis(self) -> redis_py.Redis:
        """Redis client for correlation windows, limits and caches."""
        return make_redis(self.settings.effective_redis_url)

    @cached_property
    def box(self) -> SecretBox:
        """Encryption of connection credentials."""
        return secret_box(self.settings)

    @cached_property
    def link_box(self) -> SecretBox:
        """Sealing of voicemail links, under keys of their own (never the credentials' keys)."""
        return media_link_box(self.settings)

    @cached_property
    def limiter(self) -> RateLimiter:
        """Token buckets shared by all workers."""
        return RateLimiter(self.redis, namespace=self.settings.namespace)

    @cached_property
    def correlator(self) -> CallCorrelator:
        """Legs-to-calls correlation window."""
        return CallCorrelator(RedisCallWindow(self.redis, namespace=self.settings.namespace,
                                              window_seconds=self.settings.call_window_seconds))

    @cached_property
    def registry(self) -> dict:
        """The integration registry (the one way engine code reaches it)."""
        return REGISTRY

    def api_urls(self) -> dict[str, str]:
        """Effective vendor base URLs by integration key: the operator's override, else the integration's default."""
        return {key: self.settings.api_url_override(key) or cls.default_api_url
                for key, cls in self.registry.items() if cls.default_api_url}
