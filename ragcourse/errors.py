"""The course's own error kinds, low in the import order so every module can raise them (notebook 00, "When it fails").

Each message is one line that names the input (file and line where there is one) and the fix; the CLI prints it as
``error: <message>`` and exits 2 (``--verbose`` adds the traceback).
"""

from __future__ import annotations


class CourseError(Exception):
    """Base of every error a user can fix from its one-line message: the CLI catches this type alone."""


class DataError(CourseError, ValueError):
    """Input data is unusable; the message names the file (and line) and the fix."""


class HardwareError(CourseError, RuntimeError):
    """The chosen preset needs hardware this runtime cannot use (a CUDA GPU); the message says why and the fix."""
