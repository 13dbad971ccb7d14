"""Import user plugins so their registrations exist before a run is built.

Two ways in: ``plugins: [my_package.my_losses, ./path/to/file.py]`` in a config (or
``rlfoundry list --plugins ...``), and installed packages that declare an entry point in the
``rlfoundry.plugins`` group (``[project.entry-points."rlfoundry.plugins"] my_losses =
"my_package.my_losses"``), which are imported automatically.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from rlfoundry.errors import ConfigError

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
        try:
            ep.load()
        except Exception as e:
            raise ConfigError(f"plugin entry point '{ep.name} = {ep.value}' (group {ENTRY_POINT_GROUP}) "
                              f"failed to import: {type(e).__name__}: {e}") from e
        _loaded.add(key)
    return names


def import_plugins(specs: list[str]) -> None:
    """Import the entry-point plugins, then each ``package.module`` or ``path/to/file.py``
    once; errors name the plugin."""
    import_entry_point_plugins()
    for spec in specs:
        if spec in _loaded:
            continue
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
        except Exception as e:
            raise ConfigError(f"plugins: importing '{spec}' failed: {type(e).__name__}: {e}") from e
        _loaded.add(spec)
