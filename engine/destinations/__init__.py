"""Destinations: webhooks that receive the entries and exits of saved segments (see docs/activation.md).

``registry.Destinations`` is what the engine holds; ``outbox`` keeps each destination's changes
and position, ``delivery`` posts them, ``store`` makes definitions and positions durable.
"""
from __future__ import annotations

from .delivery import SIGNATURE_HEADER, signature
from .outbox import DeliveryOptions, DestinationDef
from .registry import Destinations

__all__ = ["Destinations", "DeliveryOptions", "DestinationDef", "SIGNATURE_HEADER", "signature"]
