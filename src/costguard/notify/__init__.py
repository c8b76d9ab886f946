"""Delivering events off the request path: the dispatcher and the built-in notifiers (imported lazily)."""

from costguard.notify.dispatcher import Background, DeliveryError, Dispatcher, LaneStats, Notifier

__all__ = ["Background", "DeliveryError", "Dispatcher", "LaneStats", "Notifier"]
