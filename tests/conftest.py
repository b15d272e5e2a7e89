"""Settings for every test: Hypothesis checks behaviour, not speed.

Its default deadline (200 ms an example) fails a property test when the machine is
busy (two cores that also run livekit-server), which says nothing about the property;
performance is measured in bench/, not in tests.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("behaviour", deadline=None)
settings.load_profile("behaviour")
