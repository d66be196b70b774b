"""The ``yellowdog`` compute backend (the default) and an emulator of the YellowDog platform.

``yellowdog_client`` is imported here only, when this plugin is loaded by name.
"""

from raydog_backends.yellowdog.backend import YellowDogComputeBackend

__all__ = ["YellowDogComputeBackend"]
