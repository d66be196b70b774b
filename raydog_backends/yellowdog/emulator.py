"""An alias: ``python -m raydog_backends.yellowdog.emulator`` runs the YellowDog emulator.

The emulator is a product of its own, ``python -m raydog_backends.yellowdog_emulator``; this
module keeps the older command (in docs and users' scripts) working. Nothing imports it.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("raydog_backends.yellowdog_emulator", run_name="__main__", alter_sys=True)
