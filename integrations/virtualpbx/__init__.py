"""VirtualPBX (Kazoo Crossbar) integration: API client, local emulator, webhook sender, call simulator."""

from .client import Envelope, VirtualPBXClient

__all__ = ["Envelope", "VirtualPBXClient"]
