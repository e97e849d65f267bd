"""Voicemail audio for actions (Trello attachments): fetched from VirtualPBX, size-capped, or linked.

An account reaches its VirtualPBX API through its ``virtualpbx`` connection. Audio larger than an
action's cap is not attached; instead the action gets a link to ``/media/voicemail/<token>`` on
this service. The link's token is (account, box, message, issued, expiry) sealed with the media-link
keys (``PBXRELAY_MEDIA_LINK_KEYS``, never the credentials' keys); it works for
``PBXRELAY_MEDIA_LINK_TTL_SECONDS`` (6 h), until the account's links are revoked, and not at all once
the account is deleted. The receiver streams the audio from VirtualPBX chunk by chunk when someone opens it.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from integrations.base import Media, MediaTooLarge, PermanentError
from integrations.virtualpbx import errors
from service.accounts import binding_problem
from service.config import MAX_MEDIA_LINK_TTL_SECONDS
from service.events import Event, aware
from service.secrets import SecretsError
from service.store.models import Account, Connection


class LinkError(Exception):
    """A voicemail link that does not open: unknown (forged, or sealed with a retired key) or gone."""

    def __init__(self, message: str, *, gone: bool) -> None:
        super().__init__(message)
        self.gone = gone  # expired, revoked or its account deleted: HTTP 410 rather than 404


def pbx_client(rt, account_id: str):
    """A VirtualPBX API client from the account's `virtualpbx` connection, or None when it has none."""
    with rt.sessions() as session:
        row = session.scalars(sa.select(Connection).where(Connection.account_id == account_id,
                                                          Connection.integration == "virtualpbx")
                              .order_by(Connection.name)).first()
        if row is None:
            return None
        config = rt.box.decrypt(row.config_encrypted)
        integration_cls = rt.registry["virtualpbx"]
        problem = binding_problem(session, account_id, integration_cls, config)
    if problem:
        raise PermanentError(f"connection {row.name!r}: {problem}", code="foreign_account")
    allow_private = rt.settings.allow_private_urls
    integration = integration_cls(integration_cls.Config.model_validate(
        config, context={"allow_private_urls": allow_private}))
    return integration.client(api_urls=rt.api_urls(), redis=rt.redis, namespace=rt.settings.namespace,
                              owner=account_id, allow_private=allow_private, seal=rt.box.seal, unseal=rt.box.unseal)


def _voicemail_ids(event: Event | None) -> tuple[str, str] | None:
    data: dict[str, Any] = event.data if event else {}
    box, message = data.get("vmbox_id"), data.get("voicemail_id")
    if isinstance(box, str) and box and isinstance(message, str) and message:
        return box, message
    return None


def voicemail_audio(rt, account_id: str, event: Event | None, max_bytes: int) -> Media | None:
    """The triggering voicemail's audio (None without one); MediaTooLarge with a link past ``max_bytes``."""
    ids = _voicemail_ids(event)
    if ids is None:
        return None
    client = pbx_client(rt, account_id)
    if client is None:
        return None
    box, message = ids
    try:
        content, content_type, filename = client.download_vmbox_message(box, message, max_bytes=max_bytes)
    except errors.MediaTooLarge:
        raise MediaTooLarge(f"voicemail {message} is larger than {max_bytes} bytes",
                            url=voicemail_link(rt, account_id, box, message)) from None
    return Media(content=content, content_type=content_type or "audio/mpeg",
                 filename=filename or f"voicemail-{message}.mp3")


def voicemail_link(rt, account_id: str, box: str, message: str) -> str:
    """A short-lived, revocable link on this service that streams one voicemail's audio."""
    now = time.time()
    token = rt.link_box.encrypt({"a": account_id, "b": box, "m": message, "iat": now,
                                 "exp": now + rt.settings.media_link_ttl_seconds})
    return f"{rt.settings.public_url}/media/voicemail/{token}"


def _revoked_key(rt, account_id: str) -> str:
    return f"{rt.settings.namespace}:media-revoked:{account_id}"


def revoke_links(rt, account_id: str) -> None:
    """Make every voicemail link issued so far for ``account_id`` stop working (new links still work)."""
    # Kept as long as any link can live, so it outlives every link it revokes.
    rt.redis.set(_revoked_key(rt, account_id), repr(time.time()), ex=MAX_MEDIA_LINK_TTL_SECONDS)


def read_link(rt, token: str) -> tuple[str, str, str]:
    """(account, box, message) of a voicemail link token; LinkError when forged, expired, revoked or orphaned."""
    try:
        doc = rt.link_box.decrypt(token)
    except SecretsError:
        raise LinkError("unknown voicemail link", gone=False) from None
    if not isinstance(doc, dict) or not {"a", "b", "m", "iat", "exp"} <= doc.keys():
        raise LinkError("unknown voicemail link", gone=False)
    if doc["exp"] < time.time():
        raise LinkError("this voicemail link has expired", gone=True)
    revoked_at = rt.redis.get(_revoked_key(rt, doc["a"]))
    if revoked_at is not None and doc["iat"] <= float(revoked_at):
        raise LinkError("this voicemail link was revoked", gone=True)
    with rt.sessions() as session:
        account = session.get(Account, doc["a"])
        # An account deleted, or deleted and added again since the link was made, does not serve it.
        if account is None or aware(account.created_at).timestamp() > doc["iat"]:
            raise LinkError("this voicemail link's account no longer exists", gone=True)
    return doc["a"], doc["b"], doc["m"]
