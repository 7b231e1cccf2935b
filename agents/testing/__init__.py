"""Emulators of remote institutions' services, for tests and demos (like ``socs.testing``)."""
