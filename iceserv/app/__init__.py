"""Entry points: build settings, wire the components, run, return an exit code.

Only this package knows every other package; nothing imports it.
"""

__all__: list[str] = []
