"""VirtualPBX (Kazoo Crossbar) integration: API client, local standin, webhook sender, call simulator."""

from .client import Envelope, VirtualPBXClient
from .integration import VirtualPBXConfig, VirtualPBXIntegration

__all__ = ["Envelope", "VirtualPBXClient", "VirtualPBXConfig", "VirtualPBXIntegration"]
