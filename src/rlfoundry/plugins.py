"""Import user plugins (modules or .py files) so their registrations exist before a run is built."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from rlfoundry.errors import ConfigError

_loaded: set[str] = set()


def import_plugins(specs: list[str]) -> None:
    """Import each ``package.module`` or ``path/to/file.py`` once; errors name the plugin."""
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
