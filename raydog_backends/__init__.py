"""RayDog's built-in plugins, one module or sub-package each; loaded by name, never eagerly."""
