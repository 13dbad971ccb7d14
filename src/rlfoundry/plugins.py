"""Import user plugins so their registrations exist before a run is built.

Two ways in: ``plugins: [my_package.my_losses, ./path/to/file.py]`` in a config (or
``rlfoundry list --plugins ...``), and installed packages that declare an entry point in the
``rlfoundry.plugins`` group (``[project.entry-points."rlfoundry.plugins"] my_losses =
"my_package.my_losses"``), which are imported automatically.

A plugin that fails to import (an exception, or ``sys.exit()`` / ``KeyboardInterrupt`` raised
by its own code) is a :class:`ConfigError` naming it and, for an exit, the line; a real Ctrl-C
still stops at once. (``os._exit`` cannot be caught: it ends the process.)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from rlfoundry.errors import ConfigError
from rlfoundry.user_code import (
    EXITS,
    InterruptWatch,
    describe_exit,
    raise_site,
    watching_interrupts,
)

_loaded: set[str] = set()
ENTRY_POINT_GROUP = "rlfoundry.plugins"


def import_entry_point_plugins() -> list[str]:
    """Import every installed ``rlfoundry.plugins`` entry point once; return their names."""
    from importlib.metadata import entry_points

    names = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        key = f"entry-point:{ep.value}"
        names.append(ep.name)
        if key in _loaded:
            continue
        with watching_interrupts() as watch:
            try:
                ep.load()
            except (Exception, *EXITS) as e:
                if watch.is_real(e):
                    raise
                raise ConfigError(f"plugin entry point '{ep.name} = {ep.value}' (group "
                                  f"{ENTRY_POINT_GROUP}) {_failed(e)}") from e
        _loaded.add(key)
    return names


def import_plugins(specs: list[str]) -> None:
    """Import the entry-point plugins, then each ``package.module`` or ``path/to/file.py``
    once; errors name the plugin."""
    import_entry_point_plugins()
    for spec in specs:
        if spec in _loaded:
            continue
        with watching_interrupts() as watch:
            _import_one(spec, watch)
        _loaded.add(spec)


def _failed(error: BaseException) -> str:
    """"failed to import: ValueError: msg" or "called sys.exit(0) at file:line in f"."""
    if isinstance(error, Exception):
        return f"failed to import: {type(error).__name__}: {error}"
    return (f"{describe_exit(error)} at {raise_site(error)} while being imported; a plugin must "
            f"only define and register things")


def _import_one(spec: str, watch: InterruptWatch) -> None:
    name = None
    try:
        if spec.endswith(".py") or "/" in spec:
            path = Path(spec).resolve()
            if not path.is_file():
                raise ConfigError(f"plugins: file '{spec}' does not exist")
            name = f"rlfoundry_plugin_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except ConfigError:
        raise
    except (Exception, *EXITS) as e:
        if watch.is_real(e):
            raise
        if name is not None:
            sys.modules.pop(name, None)  # no half-imported module left behind
        if isinstance(e, Exception):
            raise ConfigError(f"plugins: importing '{spec}' failed: {type(e).__name__}: {e}") from e
        raise ConfigError(f"plugins: '{spec}' {_failed(e)}") from e
