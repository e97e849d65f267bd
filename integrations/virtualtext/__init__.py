"""VirtualText (VirtualPBX Business SMS) integration: send SMS/MMS with idempotency keys, plus its stand-in."""

from integrations.virtualtext.integration import VirtualTextConfig, VirtualTextIntegration

__all__ = ["VirtualTextConfig", "VirtualTextIntegration"]
