"""Subscribers to the round events (server/events.py). A new sink is one module here plus one subscribe call."""
