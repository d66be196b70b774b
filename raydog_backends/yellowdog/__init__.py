"""The ``yellowdog`` compute backend (the default).

``yellowdog_client`` is imported here only, when this plugin is loaded by name. The emulator of
the YellowDog platform is a product of its own, ``raydog_backends.yellowdog_emulator``; nothing
here imports it.
"""

from raydog_backends.yellowdog.backend import YellowDogComputeBackend

__all__ = ["YellowDogComputeBackend"]
