"""An emulator of the YellowDog platform: try a cluster config, and test, without spending money.

Run ``python -m raydog_backends.yellowdog_emulator --port PORT`` and point ``YD_API_URL`` at
``http://127.0.0.1:PORT``; or, in a test, ``Emulator(EmulatorConfig(...)).start()``.
"""

from raydog_backends.yellowdog_emulator.client import EmulatorClient
from raydog_backends.yellowdog_emulator.platform import Platform
from raydog_backends.yellowdog_emulator.records import EmulatorConfig
from raydog_backends.yellowdog_emulator.server import Emulator, Fault

__all__ = ["Emulator", "EmulatorClient", "EmulatorConfig", "Fault", "Platform"]
