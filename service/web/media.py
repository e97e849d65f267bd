"""The voicemail link endpoint: streams audio that was too large to attach (see service.pbx.media)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from integrations.base import IntegrationError
from service.pbx import media as pbx_media
from service.web.receiver import current_receiver

# Largest voicemail the media link serves (Kazoo voicemails are minutes of MP3: a few MB).
MAX_LINKED_AUDIO_BYTES = 100 * 1024 * 1024

blueprint = Blueprint("media", __name__)


@blueprint.get("/media/voicemail/<token>")
def voicemail_media(token: str):
    """Stream a voicemail's audio for a link handed to an integration (audio too large to attach)."""
    runtime = current_receiver().runtime
    try:
        account_id, box, message = pbx_media.read_link(runtime, token)
    except pbx_media.LinkError as exc:
        return jsonify(error=str(exc)), 410 if exc.gone else 404
    client = pbx_media.pbx_client(runtime, account_id)
    if client is None:
        return jsonify(error="the account has no virtualpbx connection"), 404
    try:
        audio = client.open_vmbox_message(box, message, max_bytes=MAX_LINKED_AUDIO_BYTES)
    except IntegrationError as exc:
        return jsonify(error=str(exc)), 502

    def body():
        # One chunk in memory at a time; past the cap the generator raises and the response is cut short
        # (the declared Content-Length, when there is one, tells the client it is incomplete).
        with audio:
            yield from audio.chunks()

    safe_name = (audio.filename or f"voicemail-{message}.mp3").replace('"', "")
    headers = {"Content-Disposition": f'attachment; filename="{safe_name}"', "Cache-Control": "no-store"}
    if audio.length is not None:
        headers["Content-Length"] = str(audio.length)
    return Response(body(), mimetype=audio.content_type or "audio/mpeg", headers=headers, direct_passthrough=True)
