"""The project's exceptions. Torch-free: the runtime raises them too.

Every message names what was expected and what came.
"""


class HoEError(Exception):
    """Base of every error this project raises on purpose."""


class PreferenceError(HoEError, ValueError):
    """A preference vector that is not a usable point of the simplex."""


class ConfigError(HoEError, ValueError):
    """A configuration value or manifest field that is missing or out of range."""


class CheckpointError(HoEError):
    """A checkpoint or exported folder that is missing, corrupt or for another base."""


class ShapeMismatchError(CheckpointError):
    """Expert or router tensors whose shapes do not fit the base model."""


class UnsupportedModelError(HoEError):
    """A base architecture or module layout we cannot adapt."""


class InputError(HoEError, ValueError):
    """A prompt or generation request we cannot serve (e.g. longer than the context)."""


class BackendError(HoEError):
    """A backend or execution provider that is unknown or unavailable."""


class ParityError(HoEError):
    """An exported graph or backend that does not reproduce the PyTorch reference within tolerance."""
