"""Connection credentials encrypted at rest with MultiFernet: the first key encrypts, all keys decrypt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from service.config import Settings
from service.datafiles import private_dir, private_file, write_private


class SecretsError(Exception):
    """Keys are missing or malformed, or a stored value cannot be decrypted with any key."""


class SecretBox:
    """Encrypts and decrypts JSON documents; rotation re-encrypts with the newest key."""

    def __init__(self, keys: list[str], *, setting: str = "PBXRELAY_SECRET_KEYS") -> None:
        if not keys:
            raise SecretsError(f"no encryption keys configured ({setting})")
        try:
            self._fernet = MultiFernet([Fernet(k.strip().encode()) for k in keys])
        except (ValueError, TypeError):
            raise SecretsError(f"{setting} must be comma-separated Fernet keys "
                               "(generate one with `pbxrelay secrets generate-key`)") from None

    def encrypt(self, doc: dict[str, Any]) -> str:
        """Encrypt a JSON-serialisable document to an opaque token."""
        return self._fernet.encrypt(json.dumps(doc, sort_keys=True).encode()).decode()

    def decrypt(self, token: str) -> dict[str, Any]:
        """Decrypt a token made by :meth:`encrypt` with any configured key."""
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise SecretsError("a stored credential cannot be decrypted with the configured keys") from None

    def seal(self, text: str) -> str:
        """Encrypt one string (a cached session token) for Redis; :meth:`unseal` reads it back."""
        return self.encrypt({"v": text})

    def unseal(self, token: str) -> str | None:
        """The string :meth:`seal` encrypted, or None when no configured key opens it (rotated keys, tampering)."""
        try:
            doc = self.decrypt(token)
        except SecretsError:
            return None
        value = doc.get("v") if isinstance(doc, dict) else None
        return value if isinstance(value, str) else None

    def rotate(self, token: str) -> str:
        """Re-encrypt ``token`` with the first (newest) key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise SecretsError("a stored credential cannot be decrypted with the configured keys") from None


def load_keys(settings: Settings) -> list[str]:
    """The configured keys, or a key generated once into var_dir/secret.key (mode 0600) for local use."""
    return _keys_or_generated(settings.secret_keys, Path(settings.var_dir) / "secret.key")


def load_media_link_keys(settings: Settings) -> list[str]:
    """Keys of voicemail links (not the credentials' keys), or one generated once into var_dir/media-link.key."""
    return _keys_or_generated(settings.media_link_keys, Path(settings.var_dir) / "media-link.key")


def _keys_or_generated(configured, path: Path) -> list[str]:
    if configured is not None:
        return [k for k in configured.get_secret_value().split(",") if k.strip()]
    private_dir(path.parent)
    write_private(path, Fernet.generate_key().decode())  # O_EXCL: the first of racing processes wins
    return [private_file(path).read_text().strip()]


def secret_box(settings: Settings) -> SecretBox:
    """The SecretBox for the configured keys."""
    return SecretBox(load_keys(settings))


def media_link_box(settings: Settings) -> SecretBox:
    """The SecretBox that seals voicemail links: a leaked link key forges links but decrypts no credential."""
    return SecretBox(load_media_link_keys(settings), setting="PBXRELAY_MEDIA_LINK_KEYS")
