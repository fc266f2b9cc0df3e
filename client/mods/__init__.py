"""Client mods: what a site composes around the local round (Flower's `ClientApp(mods=[...])` is the pattern).

Each concern is one module with one class: the privacy budget (privacy.py), link pacing (pacing.py), secure
aggregation (secure.py), error feedback (error_feedback.py), encoding (encode.py) and the audit trail (audit.py).
client/app.py builds them from the site's flags in the one declared order `build_mods` gives, and the session loop
knows none of them by name.
"""

from __future__ import annotations

from fedtl.client.mods.base import ClientMod, Io, Send, Upload, send_through

__all__ = ["ClientMod", "Io", "Send", "Upload", "send_through"]
