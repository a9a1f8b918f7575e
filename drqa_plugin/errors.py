"""One error hierarchy for the whole package.

Every error a user can cause (a bad file, option, image or launch) is a
:class:`DRQAError`; each entry point (``drqa``, ``python -m drqa_plugin.train``,
the integration launchers) catches it once and prints its one-line message.
The classes also derive from the builtin a caller would have caught before
(``ValueError``, ``FileNotFoundError``, ``RuntimeError``), so existing
``except ValueError`` code keeps working.
"""

from __future__ import annotations


class DRQAError(Exception):
    """Base of every error drqa-plugin raises on purpose; its message is meant for the user."""


class WeightsError(DRQAError, ValueError):
    """A weights file is missing, corrupt, or does not fit the architecture."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A weights file or checkpoint does not exist (and is not a known weights name)."""


class ImageInputError(DRQAError, ValueError):
    """An input image cannot be used (wrong type, shape, range or unreadable file)."""


class DataError(DRQAError, ValueError):
    """A data folder, list file or image is missing, empty or malformed."""


class ConfigError(DRQAError, ValueError):
    """A config file, option file or ``key=value`` override is malformed."""


class OptionError(ConfigError):
    """An integration's option (BasicSR, traiNNer-redux, ...) asks for something DR-IQA cannot do."""


class MissingFileError(DRQAError, FileNotFoundError):
    """A file the user named (an option file, a checkpoint folder, an input) does not exist."""


class TrainingError(DRQAError, RuntimeError):
    """A training run cannot start or continue (empty data, bad resume, misconfigured launch)."""


__all__ = [
    "ConfigError",
    "DRQAError",
    "DataError",
    "ImageInputError",
    "MissingFileError",
    "OptionError",
    "TrainingError",
    "WeightsError",
    "WeightsNotFoundError",
]
