"""Voicemail audio for actions (Trello attachments): fetched from VirtualPBX, size-capped, or linked.

An account reaches its VirtualPBX API through its ``virtualpbx`` connection. Audio larger than an
action's cap is not attached; instead the action gets a link to ``/media/voicemail/<token>`` on
this service, where the token is the encrypted (account, box, message, expiry) and the receiver
streams the audio from VirtualPBX when someone opens it.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from integrations.base import Media, MediaTooLarge, PermanentError
from service.events import Event
from service.accounts import binding_problem
from service.secrets import SecretsError
from service.store.models import Connection

# How long a voicemail link stays valid (a card may be opened days later).
LINK_TTL_SECONDS = 30 * 24 * 3600


def pbx_client(rt, account_id: str):
    """A VirtualPBX API client from the account's `virtualpbx` connection, or None when it has none."""
    from integrations.virtualpbx.integration import VirtualPBXIntegration

    with rt.sessions() as session:
        row = session.scalars(sa.select(Connection).where(Connection.account_id == account_id,
                                                          Connection.integration == "virtualpbx")
                              .order_by(Connection.name)).first()
        if row is None:
            return None
        config = rt.box.decrypt(row.config_encrypted)
        problem = binding_problem(session, account_id, VirtualPBXIntegration, config)
    if problem:
        raise PermanentError(f"connection {row.name!r}: {problem}", code="foreign_account")
    allow_private = rt.settings.allow_private_urls
    integration = VirtualPBXIntegration(VirtualPBXIntegration.Config.model_validate(
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
    from integrations.virtualpbx import errors

    box, message = ids
    try:
        content, content_type, filename = client.download_vmbox_message(box, message, max_bytes=max_bytes)
    except errors.MediaTooLarge:
        raise MediaTooLarge(f"voicemail {message} is larger than {max_bytes} bytes",
                            url=voicemail_link(rt, account_id, box, message)) from None
    return Media(content=content, content_type=content_type or "audio/mpeg",
                 filename=filename or f"voicemail-{message}.mp3")


def voicemail_link(rt, account_id: str, box: str, message: str) -> str:
    """A time-limited link on this service that streams one voicemail's audio."""
    token = rt.box.encrypt({"a": account_id, "b": box, "m": message, "exp": int(time.time()) + LINK_TTL_SECONDS})
    return f"{rt.settings.public_url}/media/voicemail/{token}"


def read_link(rt, token: str) -> tuple[str, str, str]:
    """(account, box, message) of a voicemail link token; PermanentError when forged or expired."""
    try:
        doc = rt.box.decrypt(token)
    except SecretsError:
        raise PermanentError("unknown voicemail link") from None
    if not isinstance(doc, dict) or doc.get("exp", 0) < time.time():
        raise PermanentError("this voicemail link has expired")
    return doc["a"], doc["b"], doc["m"]
