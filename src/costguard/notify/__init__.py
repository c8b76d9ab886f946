"""Delivering events off the request path."""

from costguard.notify.dispatcher import Background, Notifier

__all__ = ["Background", "Notifier"]
