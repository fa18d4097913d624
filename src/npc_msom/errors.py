"""Errors raised for bad input, each naming the patient, the file and what was expected.

Library code raises these; only the CLI turns them into a message and an exit code.
"""
from __future__ import annotations

from pathlib import Path


class NpcMsomError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(NpcMsomError):
    """A configuration value or override that cannot be used."""


class InputError(NpcMsomError):
    """Bad input data. The message names the patient, the file and what was expected."""

    def __init__(self, problem: str, *, patient: str | None = None,
                 file: str | Path | None = None, expected: str | None = None):
        self.problem = problem
        self.patient = patient
        self.file = str(file) if file is not None else None
        self.expected = expected
        parts = []
        if patient is not None:
            parts.append(f"patient {patient}")
        if self.file is not None:
            parts.append(f"file {self.file}")
        where = f"[{', '.join(parts)}] " if parts else ""
        tail = f" (expected: {expected})" if expected else ""
        super().__init__(f"{where}{problem}{tail}")

    def to_dict(self) -> dict:
        return {"problem": self.problem, "patient": self.patient, "file": self.file,
                "expected": self.expected, "message": str(self)}


class DicomError(InputError):
    """A DICOM file or series that cannot be read or used."""


class RTStructError(InputError):
    """An RTSTRUCT that cannot be matched to a series or rasterised."""


class NiftiError(InputError):
    """A NIfTI image or label file that cannot be read or used."""


class CohortError(InputError):
    """A cohort-level problem: duplicate patient, missing sequence, images without clinical row."""


class ClinicalTableError(InputError):
    """A clinical table with bad cells. ``problems`` lists every bad cell at once."""

    def __init__(self, problems: list[dict], *, file: str | Path | None = None):
        self.problems = problems
        lines = [f"row {p.get('row')}, column {p.get('column')!r}: value {p.get('value')!r}, "
                 f"expected {p.get('expected')}" for p in problems]
        super().__init__(f"{len(problems)} bad cell(s) in the clinical table:\n  " + "\n  ".join(lines),
                         file=file)


class TrainingError(NpcMsomError):
    """Training cannot go on (e.g. a non-finite loss)."""


class StaleArtifactError(NpcMsomError):
    """A stage's artifacts were made with other settings or inputs than the ones asked for now."""
