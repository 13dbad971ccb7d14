"""Config ``data.train`` / ``data.eval`` -> a dataset: built-in names, file paths or row lists."""

from __future__ import annotations

from pathlib import Path

from rlfoundry.config.schema import DataConfig
from rlfoundry.errors import ConfigError

BUILTIN = "builtin:"


def load_dataset_spec(data: DataConfig, split: str, cls):
    """Build ``cls`` (PreferenceDataset / PromptDataset) for ``split`` ('train' or 'eval').

    A built-in train set without an explicit ``data.eval`` gets the matching built-in eval
    split (generated with a different seed and de-duplicated against train).
    """
    spec = data.train if split == "train" else (data.eval if data.eval is not None else data.train)
    key = f"data.{split}" if split == "train" or data.eval is not None else "data.train"
    if isinstance(spec, str) and spec.startswith(BUILTIN):
        from rlfoundry.data.synthetic import builtin_dataset

        size = data.train_size if split == "train" else data.eval_size
        try:
            rows = builtin_dataset(spec[len(BUILTIN):], split, size, seed=0, **data.builtin_options)
        except (KeyError, ValueError, TypeError) as e:
            raise ConfigError(f"{key}: {e}") from None
        return cls.from_rows(rows, on_bad_row=data.on_bad_row, duplicates=data.duplicates)
    if isinstance(spec, str):
        check_data_path(spec, key)
    return cls.from_rows(spec, on_bad_row=data.on_bad_row, duplicates=data.duplicates)


def check_data_path(spec: str, key: str) -> None:
    """A data path that is not a file fails here, naming the config key and where a relative
    path is looked up (the working directory, not the config file's folder)."""
    path = Path(spec)
    if path.is_file():
        return
    what = "is a directory, not a data file" if path.is_dir() else "does not exist"
    where = (f"relative paths are read from the working directory, {Path.cwd()}" if not path.is_absolute()
             else "the path is absolute")
    raise ConfigError(f"{key}: '{spec}' {what} ({where}); give a .jsonl/.json/.parquet/.csv "
                      f"file or a built-in set such as builtin:sort_preferences (`rlfoundry list "
                      f"datasets`)")
