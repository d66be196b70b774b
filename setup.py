"""setuptools' build (the project is declared in pyproject.toml), plus one file at the root of
site-packages: ``raydog-startup.pth``, which Python runs at start-up (``_raydog_startup.py`` says
why). setuptools puts no such file in a wheel by itself, nor in ``pip install -e``'s wheel."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

STARTUP_HOOK = "raydog-startup.pth"
STARTUP_LINE = "import _raydog_startup; _raydog_startup.install()\n"


class BuildPyWithStartupHook(build_py):
    """``build_py``, and the ``.pth`` beside the packages: in the wheel's root."""

    def run(self) -> None:
        super().run()
        # An editable build's build_lib is a scratch folder; that wheel is made of what is
        # installed into install_lib (setuptools' editable_wheel points it there).
        target = (
            self.get_finalized_command("install").install_lib
            if self.editable_mode
            else self.build_lib
        )
        Path(target, STARTUP_HOOK).write_text(STARTUP_LINE)


setup(cmdclass={"build_py": BuildPyWithStartupHook})
