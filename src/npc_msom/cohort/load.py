"""``load_cohort``: a cohort folder (DICOM and/or NIfTI + clinical table) as a ``Cohort``.

Indexing (``index.py``) reads headers, structure sets and masks only, one file at a time, so
memory does not grow with the cohort; ``Cohort.load_patient`` reads one patient's pixels and
rasterises its masks on demand. The manifest and ``inspect``'s text are in ``manifest.py``.

Bad input raises the matching ``InputError`` subclass naming the patient and the file; with
``CohortConfig.skip_bad`` the patient is recorded in ``manifest["skipped"]`` instead.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

from npc_msom.cohort import clinical as clin
from npc_msom.cohort import dicom as dcm
from npc_msom.cohort import dicom_mask as dmask
from npc_msom.cohort import nifti as nii
from npc_msom.cohort.index import (Entry, index_dicom_patient, index_nifti_patient, read_sets, scan_folder,
                                   seg_masks)
from npc_msom.cohort.manifest import build_manifest, format_manifest, skip_record
from npc_msom.cohort.model import Patient, Series
from npc_msom.cohort.rtstruct import masks_on_grid
from npc_msom.config import SEQUENCES, CohortConfig
from npc_msom.errors import ClinicalTableError, CohortError, DicomError, InputError
from npc_msom.runtime import progress, write_json_atomic

log = logging.getLogger(__name__)

__all__ = ["Cohort", "format_manifest", "inspect_cohort", "load_cohort"]


@dataclass
class Cohort:
    """An indexed cohort. Pixels are read per patient by ``load_patient``.

    patient_ids: sorted IDs of the usable patients.
    clinical: validated clinical table of those patients, indexed by ``patient_id`` (empty with
        the schema's columns if the cohort has no table).
    manifest: JSON-ready record of what was found, ignored and skipped (see ``manifest_schema``
        in the module docs of ``npc_msom.cohort``).
    """
    root: Path
    config: CohortConfig
    patient_ids: list[str]
    clinical: pd.DataFrame
    manifest: dict
    _entries: dict[str, Entry] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.patient_ids)

    @property
    def skip_bad(self) -> bool:
        """Whether bad input is recorded and skipped (``CohortConfig.skip_bad``) or raised."""
        return bool(self.config.skip_bad)

    def load_patient(self, patient_id: str, sequences: Sequence[str] | None = None) -> Patient:
        """Read one patient's images and masks: Series per sequence, clinical dict, Outcome.

        sequences: read only these (default: every sequence the patient has); a caller that needs
        one sequence (the radiomics comparison model on CE-T1WI) does not read the others' pixels
        and structure sets."""
        entry = self._entries.get(patient_id)
        if entry is None:
            skipped = [s for s in self.manifest.get("skipped", []) if s.get("patient") == patient_id]
            why = f" (skipped: {skipped[0]['message']})" if skipped else ""
            raise CohortError(f"patient {patient_id!r} is not a usable patient of this cohort{why}",
                              patient=patient_id, file=self.root,
                              expected=f"one of {len(self.patient_ids)} patient IDs")
        wanted = tuple(SEQUENCES) if sequences is None else tuple(sequences)
        if entry.source == "nifti":
            series = _load_nifti(entry, wanted)
        else:
            series = _load_dicom(entry, self.config, wanted)
        rec = clin.clinical_record(self.clinical, patient_id)
        return Patient(patient_id=patient_id, series=series, clinical=rec,
                       outcome=clin.outcome_from_record(rec))

    def iter_patients(self) -> Iterator[Patient]:
        """Patients one at a time, in ``patient_ids`` order."""
        for pid in self.patient_ids:
            yield self.load_patient(pid)

    def write_manifest(self, path: str | Path) -> None:
        write_json_atomic(path, self.manifest)

    def summary(self) -> str:
        return format_manifest(self.manifest)


# ---------------------------------------------------------------------------------------------
# Loading pixels
# ---------------------------------------------------------------------------------------------
def _load_dicom(entry: Entry, config: CohortConfig, sequences: Sequence[str] = SEQUENCES) -> dict[str, Series]:
    out: dict[str, Series] = {}
    for seq in SEQUENCES:
        if seq not in entry.dicom or seq not in sequences:
            continue
        ds = entry.dicom[seq]
        s = ds.series
        image = dcm.read_volume(s)
        masks: dict = {}
        warnings = list(s.warnings)
        if ds.rtstruct_paths:
            sets = read_sets(ds.rtstruct_paths, config, entry.patient_id)
            masks, _, w = masks_on_grid(sets, s.stack, s.plan, missing_positions_mm=s.missing_positions_mm,
                                        missing_grid_index=s.missing_grid_index, patient=entry.patient_id)
            warnings.extend(w)
        elif ds.seg_paths:
            masks, _, w = seg_masks(ds.seg_paths, s, config, entry.patient_id)
            warnings.extend(w)
        elif ds.nifti_mask is not None:
            masks, _, w = dmask.mask_on_series(ds.nifti_mask, s.geometry, config.dicom_mask_structure,
                                               patient=entry.patient_id)
            warnings.extend(w)
        out[seq] = Series(sequence=seq, image=image, geometry=s.geometry, masks=masks,
                          series_uid=s.series_uid, description=s.description,
                          source=dcm.series_summary(s)["folder"], warnings=warnings)
    return out


def _load_nifti(entry: Entry, sequences: Sequence[str] = SEQUENCES) -> dict[str, Series]:
    out: dict[str, Series] = {}
    for seq in SEQUENCES:
        if entry.nifti is None or seq not in entry.nifti.sequences or seq not in sequences:
            continue
        ns = entry.nifti.sequences[seq]
        image, geometry, masks = nii.load_sequence(ns, patient=entry.patient_id)
        out[seq] = Series(sequence=seq, image=image, geometry=geometry, masks=masks, series_uid="",
                          description=ns.image_path.name, source=str(ns.image_path),
                          warnings=list(ns.warnings))
    return out


# ---------------------------------------------------------------------------------------------
# Indexing (index.py) and the manifest (manifest.py)
# ---------------------------------------------------------------------------------------------
def load_cohort(path: str | Path, config: CohortConfig | None = None,
                clinical: str | Path | None = None, *, show_progress: bool | None = None,
                clinical_schema: tuple | None = None) -> Cohort:
    """Index the cohort under ``path``: DICOM (any layout) and/or NIfTI folders, plus the
    clinical table (``clinical`` or ``clinical.csv``/``.xlsx`` found in ``path``).

    Reads headers, structure sets and label maps only (and one test-decoded slice per series);
    pixels are read by ``load_patient``.
    Raises an ``InputError`` subclass (patient, file and expectation in the message) at the first
    bad input, unless ``config.skip_bad``, when bad patients are listed in
    ``manifest["skipped"]`` and left out of ``patient_ids``. A clinical table with bad cells
    raises ``ClinicalTableError`` listing every bad cell (with ``skip_bad`` only a missing
    column or an unreadable table still raises; patients with bad cells are skipped).
    ``clinical_schema`` replaces the clinical schema (e.g. ``clinical.relaxed_schema``'s).
    """
    config = config or CohortConfig()
    root = Path(path)
    if not root.is_dir():
        raise CohortError(f"cohort folder {root} does not exist or is not a folder", file=root,
                          expected="a folder with DICOM or NIfTI files")
    root = root.resolve()
    skip = bool(config.skip_bad)
    skipped: list[dict] = []
    skipped_ids: set[str] = set()

    def fail(exc: InputError, pid: str | None) -> None:
        if not skip:
            raise exc
        skipped.append(skip_record(exc, pid))
        if pid:
            skipped_ids.add(pid)
        log.warning("skipped: %s", exc)

    # clinical table
    table_path = Path(clinical) if clinical is not None else clin.find_clinical_table(root)
    clinical_problems: list[dict] = []
    if table_path is not None:
        kw = {"schema": clinical_schema} if clinical_schema is not None else {}
        if skip:
            table, clinical_problems = clin.load_clinical(table_path, collect=True, **kw)
        else:
            table = clin.load_clinical(table_path, **kw)
    else:
        table = clin.empty_clinical()
    bad_clinical_ids: dict[str, list[dict]] = {}
    for p in clinical_problems:
        if p.get("patient"):
            bad_clinical_ids.setdefault(p["patient"], []).append(p)

    found = scan_folder(root, config, table_path, show_progress=show_progress)
    for exc, pid in found.problems:
        fail(exc, pid)

    entries: dict[str, Entry] = {}
    patients_manifest: dict[str, dict] = {}
    all_ids = found.patient_ids
    def index_one(pid: str):
        """(entry, record) of one patient; raises InputError (record attached as ``found_record``)."""
        record = None
        try:
            if pid in found.unreadable:
                p, problem = found.unreadable[pid][0]
                raise DicomError(problem, patient=pid, file=p, expected="a complete, readable DICOM file")
            has_dicom = pid in found.images or pid in found.rtstructs or pid in found.segs
            if has_dicom and pid in found.nifti_folders:
                raise CohortError(f"duplicate patient ID: {pid!r} has both DICOM files and a NIfTI folder "
                                  f"({found.nifti_folders[pid][0]})", patient=pid, file=found.nifti_folders[pid][0],
                                  expected="each patient once, as DICOM or as NIfTI")
            if has_dicom:
                entry, record = index_dicom_patient(pid, found.images.get(pid, []), found.rtstructs.get(pid, []),
                                                    config, found.series_owner, root, found.notes.get(pid, []),
                                                    found.segs.get(pid, []), found.nifti_masks.get(pid, {}))
                if pid in found.pid_from_folder:
                    record["patient_id_from"] = "folder name (PatientID is empty in the DICOM files)"
                    record["warnings"].append(f"PatientID is empty: patient ID {pid!r} taken from the folder name")
            else:
                folder, names = found.nifti_folders[pid]
                entry, record = index_nifti_patient(pid, folder, names, config, root)
            if pid in bad_clinical_ids:
                raise ClinicalTableError(bad_clinical_ids[pid], file=table_path)
            if table_path is not None and pid not in table.index:
                raise CohortError(f"patient {pid} has images but no row in the clinical table",
                                  patient=pid, file=table_path,
                                  expected="a clinical row for every patient with images")
        except InputError as exc:
            exc.found_record = record
            raise
        return entry, record

    todo = [pid for pid in all_ids if pid not in skipped_ids]
    results = _index_in_parallel(index_one, todo, config.workers, show_progress)
    for pid in (todo if results else progress(todo, desc="patients", unit="patient",
                                              disable=None if show_progress is None else not show_progress)):
        try:
            # a patient whose indexing failed in a worker is redone here, so that its error is raised
            # (or skipped) in this process with its full message
            entry, record = results[pid] if results.get(pid) is not None else index_one(pid)
        except InputError as exc:
            fail(exc, pid)
            record = getattr(exc, "found_record", None)
            if record is not None:  # the images were fine: say what was found
                skipped[-1]["found"] = {q: i.get("description") or i.get("image")
                                        for q, i in record["sequences"].items()}
            continue
        record["clinical"] = pid in table.index
        entries[pid] = entry
        patients_manifest[pid] = record

    imaged = set(all_ids)
    image_only = sorted(pid for pid in imaged if table_path is not None and pid not in table.index
                        and pid not in bad_clinical_ids)
    clinical_only = []
    if table_path is not None:
        for pid in table.index:
            if pid not in imaged:
                clinical_only.append(pid)
                fail(CohortError(f"patient {pid} has a row in the clinical table but no images in {root}",
                                 patient=pid, file=table_path,
                                 expected="images (DICOM or a NIfTI folder) for every clinical row"), pid)
    usable = sorted(entries)
    clinical_usable = table.loc[[p for p in usable if p in table.index]] if len(table) else table.iloc[0:0]
    manifest = build_manifest(root, config, table_path, usable, patients_manifest, skipped, clinical_only,
                              image_only, clinical_problems, found.unreadable_files, found.unused_nifti_files,
                              found.ignored_files, found.archives)
    return Cohort(root=root, config=config, patient_ids=usable, clinical=clinical_usable,
                  manifest=manifest, _entries=entries)


_INDEX_FN = None
_PARALLEL_MIN = 8   # patients; below this, forking costs more than it saves


def _index_worker(pid: str):
    try:
        return pid, _INDEX_FN(pid)
    except InputError:
        return pid, None


def _index_in_parallel(fn, pids: list[str], workers: int, show_progress: bool | None) -> dict:
    """{pid: (entry, record) or None (failed: the caller redoes it)}; forked processes when there
    are enough patients (indexing parses every structure set and rasterises it once)."""
    import multiprocessing as mp
    import os
    n = workers or min(2, os.cpu_count() or 1)
    bar = {"desc": "patients", "unit": "patient", "total": len(pids),
           "disable": None if show_progress is None else not show_progress}
    if n <= 1 or len(pids) < _PARALLEL_MIN or "fork" not in mp.get_all_start_methods():
        return {}   # the caller indexes them one by one
    global _INDEX_FN
    _INDEX_FN = fn
    try:
        with mp.get_context("fork").Pool(n) as pool:
            return dict(progress(pool.imap(_index_worker, pids, chunksize=4), **bar))
    finally:
        _INDEX_FN = None


def inspect_cohort(path: str | Path, config: CohortConfig | None = None,
                   clinical: str | Path | None = None, *, all_problems: bool = True) -> tuple[Cohort, str]:
    """Index a cohort and describe it for people: (Cohort, text).

    With ``all_problems`` (the default) bad patients are listed rather than raised, as with
    ``skip_bad``, so that one look shows everything that is wrong.
    """
    config = config or CohortConfig()
    if all_problems and not config.skip_bad:
        config = dataclasses.replace(config, skip_bad=True)
    cohort = load_cohort(path, config, clinical)
    return cohort, format_manifest(cohort.manifest)
