"""Indexing a cohort folder: finding and matching its files, without pixels.

``scan_folder`` walks the folder once, reads the DICOM headers and sorts what it finds by patient
(images, RTSTRUCTs, SEGs, NIfTI masks beside DICOM series, NIfTI patient folders);
``index_dicom_patient`` and ``index_nifti_patient`` then check one patient's files, choose a
series per sequence, match each structure set, SEG or mask to its series, and describe the
patient for the manifest. Only headers, structure sets, segment labels and masks are read (plus
one test-decoded slice per series used), one file at a time, so memory does not grow with the
cohort.
"""
from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from npc_msom.cohort import dicom as dcm
from npc_msom.cohort import dicom_mask as dmask
from npc_msom.cohort import nifti as nii
from npc_msom.cohort import seg as segmod
from npc_msom.cohort.manifest import label
from npc_msom.cohort.rtstruct import (StructureSet, looks_like_tumour, masks_on_grid,
                                      read_structure_set, structures_of)
from npc_msom.config import SEQUENCES, STRUCTURES, CohortConfig
from npc_msom.errors import CohortError, DicomError, InputError, NiftiError, RTStructError
from npc_msom.runtime import progress

log = logging.getLogger(__name__)

_ARCHIVE_SUFFIXES = {".gz", ".tgz", ".zip", ".bz2", ".xz", ".7z", ".tar", ".rar"}


_MAGNITUDE = {"M", "MAGNITUDE"}


_OTHER_PARTS = {"P", "PHASE", "R", "REAL", "I", "IMAGINARY"}


_SEQUENCE_FOLDERS = {"t1wi": "T1WI", "t1": "T1WI", "t2wi": "T2WI", "t2": "T2WI", "cet1wi": "CE-T1WI",
                     "cet1": "CE-T1WI", "t1c": "CE-T1WI", "t1ce": "CE-T1WI", "t1wice": "CE-T1WI"}


@dataclass
class DicomSequence:
    series: dcm.SeriesIndex
    rtstruct_paths: list[Path] = field(default_factory=list)
    seg_paths: list[Path] = field(default_factory=list)       # used only when there is no RTSTRUCT
    nifti_mask: Path | None = None                             # used only when neither of those


@dataclass
class Entry:
    patient_id: str
    source: str                                    # "dicom" | "nifti"
    dicom: dict[str, DicomSequence] = field(default_factory=dict)
    nifti: nii.NiftiPatient | None = None


def parse_rtstruct(path: Path, config: CohortConfig, patient: str) -> StructureSet:
    """Read and parse one RTSTRUCT; any reader failure becomes an RTStructError naming the file."""
    try:
        return read_structure_set(dcm.read_header(path, patient=patient), path, config, patient=patient)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed values surface as many exception types
        raise RTStructError(f"cannot parse the RTSTRUCT ({type(exc).__name__}: {exc})", patient=patient,
                            file=path, expected="a readable DICOM RT Structure Set") from None


def read_sets(paths: list[Path], config: CohortConfig, patient: str) -> list[StructureSet]:
    return [parse_rtstruct(p, config, patient) for p in paths]


def seg_masks(paths: list[Path], s: dcm.SeriesIndex, config: CohortConfig, pid: str):
    """Masks of one or more SEGs on a series' grid, merged per structure."""
    masks: dict = {}
    counts: dict[str, int] = {}
    warnings: list[str] = []
    for p in paths:
        ss = segmod.read_seg(p, config, patient=pid)
        m, c, w = segmod.seg_masks_on_grid(ss, [f.sop_uid for f in s.files], s.stack.shape_yx, s.plan,
                                           patient=pid)
        for k, v in m.items():
            masks[k] = masks[k] | v if k in masks else v
        counts.update(c)
        warnings.extend(w)
    return masks, counts, warnings


# ---------------------------------------------------------------------------------------------
# The folder
# ---------------------------------------------------------------------------------------------
def walk(root: Path) -> list[Path]:
    """Every non-hidden file under ``root``, following symbolic links to folders (exports are often
    linked in from a network share) but never entering the same real folder twice (link loops)."""
    out: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                out.append(Path(dirpath) / name)
    return out


def rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _owner_by_folder(root: Path, owned: list[tuple[Path, str]]) -> dict[Path, set[str]]:
    """Folder -> patient IDs of the readable files below it (up to ``root``)."""
    out: dict[Path, set[str]] = {}
    for path, pid in owned:
        d = path.parent
        while True:
            out.setdefault(d, set()).add(pid)
            if d == root or d.parent == d:
                break
            d = d.parent
    return out


def _attribute(path: Path, root: Path, owners: dict[Path, set[str]]) -> str | None:
    """The one patient whose files share the nearest folder with ``path``, if unambiguous."""
    d = path.parent
    while True:
        pids = owners.get(d)
        if pids:
            return next(iter(pids)) if len(pids) == 1 else None
        if d == root or d.parent == d:
            return None
        d = d.parent


def _norm_name(name: str) -> str:
    return " ".join(name.replace("^", " ").upper().split())


def _check_one_person(pid: str, files: list[tuple[Path, str, str]]) -> None:
    """files: (path, PatientName, PatientBirthDate). CohortError if they describe two people."""
    for what, idx in (("names", 1), ("birth dates", 2)):
        seen: dict[str, Path] = {}
        for f in files:
            v = _norm_name(f[idx]) if idx == 1 else f[idx].strip()
            if v and v not in seen:
                seen[v] = f[0]
        if len(seen) > 1:
            (v1, p1), (v2, p2) = list(seen.items())[:2]
            raise CohortError(f"duplicate patient ID: {pid!r} is used with different patient {what} "
                              f"({v1!r} in {p1}, {v2!r} in {p2})", patient=pid, file=p2,
                              expected="one patient per PatientID (rename one of them)")


def _choose(cands: list[tuple[dcm.SeriesIndex, list[Path]]]) -> tuple[int, str]:
    """Index of the series to use among those of one sequence, and why."""
    def key(i):
        s, rts = cands[i]
        axial = dcm.orientation_label(s.geometry.direction).startswith("axial")
        return (0 if rts else 1, 0 if axial else 1, -s.n_files, s.series_number or 0, s.series_uid)
    order = sorted(range(len(cands)), key=key)
    best = order[0]
    s, rts = cands[best]
    why = "it has contours" if rts and not all(c[1] for c in cands) else "it is axial with the most slices"
    return best, why


def _match_rtstruct(ss: StructureSet, series: dict[str, dcm.SeriesIndex], sop_to_series: dict[str, str],
                    series_owner: dict[str, str], pid: str) -> tuple[str, str]:
    """(series UID, how) of the series this structure set was drawn on; RTStructError if none."""
    cands = [u for u in ss.referenced_series_uids if u in series]
    how = "referenced series UID"
    if not cands and ss.referenced_sop_uids:
        cands = sorted({sop_to_series[u] for u in ss.referenced_sop_uids
                        if u in sop_to_series and sop_to_series[u] in series})
        how = "referenced SOP instances"
    if not cands and not ss.referenced_series_uids and not ss.referenced_sop_uids:
        cands = [u for u, s in series.items() if s.sequence is not None
                 and s.frame_of_reference_uid in ss.frame_of_reference_uids]
        how = "frame of reference only (the RTSTRUCT references no series or image)"
    if len(cands) == 1:
        uid = cands[0]
        s = series[uid]
        if ss.frame_of_reference_uids and s.frame_of_reference_uid \
                and s.frame_of_reference_uid not in ss.frame_of_reference_uids:
            raise RTStructError(f"RTSTRUCT references series {s.description!r} but its frame of reference "
                                f"{ss.frame_of_reference_uids[0]} differs from the series' "
                                f"{s.frame_of_reference_uid}", patient=pid, file=ss.path,
                                expected="an RTSTRUCT in the frame of reference of the series it was drawn on")
        return uid, how
    if len(cands) > 1:
        names = ", ".join(repr(series[u].description) for u in cands)
        raise RTStructError(f"RTSTRUCT matches {len(cands)} series ({names}) by {how}", patient=pid,
                            file=ss.path, expected="an RTSTRUCT that references exactly one image series")
    refs = ss.referenced_series_uids or sorted(ss.referenced_sop_uids)[:3]
    others = sorted({series_owner[u] for u in ss.referenced_series_uids if u in series_owner} - {pid})
    here = ", ".join(f"{s.description!r}" for s in series.values()) or "none"
    if others:
        problem = (f"RTSTRUCT references series {refs[0]} of another patient ({', '.join(others)}), "
                   f"not a series of patient {pid}")
    elif refs:
        problem = (f"RTSTRUCT references {'series' if ss.referenced_series_uids else 'images'} "
                   f"{', '.join(refs)} which {'is' if len(refs) == 1 else 'are'} not in this cohort "
                   f"(series of this patient: {here})")
    else:
        problem = (f"RTSTRUCT references no series and its frame of reference matches no classified series "
                   f"(series of this patient: {here})")
    raise RTStructError(problem, patient=pid, file=ss.path,
                        expected="an RTSTRUCT drawn on one of this patient's MR series")


def _magnitude_only(files: list[dcm.ImageFile]) -> tuple[list[dcm.ImageFile], list[dcm.ImageFile]]:
    """(magnitude images, the rest) of a series that stores magnitude and phase (or real /
    imaginary) images together, told apart by ImageType; (files, []) for any other series."""
    mag = [f for f in files if _MAGNITUDE & set(f.image_type)]
    rest = [f for f in files if _OTHER_PARTS & set(f.image_type) and not _MAGNITUDE & set(f.image_type)]
    if mag and rest and len(mag) + len(rest) == len(files):
        return mag, rest
    return files, []


def _where(files: list[dcm.ImageFile], root: Path) -> dict:
    """Description, number and folder of a series, for the manifest (a series may lack the first)."""
    f0 = files[0]
    folder = dcm._common_folder([f.path for f in files])
    return {"description": f0.description, "series_number": f0.series_number,
            "folder": rel(Path(folder), root) if folder else ""}


def _folder_sequence_name(name: str) -> str | None:
    """'CE-T1WI' for a folder named 'CE-T1WI', 'ce_t1wi', 'T1C'...; None for other names."""
    return _SEQUENCE_FOLDERS.get("".join(ch for ch in name.lower() if ch.isalnum()))


def _sequence_of_folder(path: Path, root: Path) -> tuple[str | None, str]:
    """(sequence, folder name) named by the nearest folder above ``path`` (below ``root``)."""
    d = path.parent
    while d != root and d.parent != d:
        seq = _folder_sequence_name(d.name)
        if seq:
            return seq, d.name
        d = d.parent
    return None, ""


def _patient_folder(path: Path, root: Path) -> str:
    """The patient ID a folder gives a file without PatientID: the nearest folder above it that
    does not name a sequence (MRI-Segments/001/T2WI/IM1 -> '001')."""
    d = path.parent
    while d != root and d.parent != d and _folder_sequence_name(d.name):
        d = d.parent
    return d.name


def _usable_series(by_series: dict[str, list[dcm.ImageFile]], config: CohortConfig, pid: str, root: Path,
                   warnings: list[str]) -> tuple[dict[str, dcm.SeriesIndex], list[dict], dict[str, DicomError]]:
    """Classify and check every image series of a patient: (usable MR series by UID with their
    sequence, ignored series for the manifest, sequence -> the error of its unusable series)."""
    series: dict[str, dcm.SeriesIndex] = {}
    ignored: list[dict] = []
    failed: dict[str, DicomError] = {}
    for uid, files in sorted(by_series.items(), key=lambda kv: (kv[1][0].series_number or 0, kv[0])):
        files, set_aside = _magnitude_only(files)
        if set_aside:
            kind = "/".join(set_aside[0].image_type)
            ignored.append({"series_uid": uid, **_where(set_aside, root), "n_files": len(set_aside),
                            "reason": f"phase/real/imaginary images stored in the magnitude series (ImageType "
                                      f"{kind}); the {len(files)} magnitude images were used"})
        f0 = files[0]
        if f0.modality and f0.modality != "MR":
            ignored.append({"series_uid": uid, **_where(files, root), "n_files": len(files),
                            "reason": f"modality {f0.modality}, not MR"})
            continue
        seq, why = dcm.classify_series(f0.description, f0.protocol, config,
                                       contrast_agent=next((f.contrast_agent for f in files if f.contrast_agent), ""),
                                       image_type=f0.image_type)
        folder_seq, folder = _sequence_of_folder(f0.path, root)
        # the folder names the sequence when the description does not say (or says only "T1",
        # which cannot tell a contrast-enhanced series without a contrast agent tag)
        if folder_seq and (why.startswith("unrecognised") or (seq == "T1WI" and folder_seq == "CE-T1WI")):
            seq, why = folder_seq, f"folder name {folder!r} (description {f0.description!r} does not say)"
        elif folder_seq and seq and seq != folder_seq:
            warnings.append(f"series {f0.description!r} is classified as {seq} by its description but lies in "
                            f"folder {folder!r}; the description was used")
        if seq is None:
            ignored.append({"series_uid": uid, **_where(files, root), "n_files": len(files),
                            "reason": why})
            continue
        try:
            s = dcm.build_series(files, config, patient=pid)
        except DicomError as exc:
            # unusable; an error only if no other series gives this sequence (checked below)
            failed.setdefault(seq, exc)
            ignored.append({"series_uid": uid, **_where(files, root), "n_files": len(files),
                            "reason": f"{seq} series not usable: {exc.problem}"})
            continue
        s.sequence, s.reason = seq, why
        series[uid] = s
    return series, ignored, failed


def index_dicom_patient(pid: str, images: list[dcm.ImageFile], rtfiles: list[dcm.RTStructFile],
                         config: CohortConfig, series_owner: dict[str, str], root: Path,
                         notes: list[dict], segfiles: list[dcm.RTStructFile] | None = None,
                         nifti_masks: dict[str, list[Path]] | None = None) -> tuple[Entry, dict]:
    segfiles = segfiles or []
    nifti_masks = nifti_masks or {}
    if not pid:
        f = (images or rtfiles or segfiles)[0].path
        raise DicomError("file without PatientID", file=f, expected="a PatientID in every DICOM file")
    # images only: planning systems often rewrite the name in the RTSTRUCT they export
    _check_one_person(pid, [(f.path, f.patient_name, f.birth_date) for f in images])
    by_series: dict[str, list[dcm.ImageFile]] = {}
    warnings: list[str] = []
    seen_sop: dict[str, dcm.ImageFile] = {}
    for f in images:
        if f.sop_uid and f.sop_uid in seen_sop:
            other = seen_sop[f.sop_uid]
            if other.ipp is not None and f.ipp is not None and (abs(other.ipp - f.ipp).max() > 1e-3):
                raise DicomError(f"SOPInstanceUID {f.sop_uid} is used by two different slices "
                                 f"({other.path} and {f.path})", patient=pid, file=f.path,
                                 expected="a unique SOPInstanceUID per slice")
            warnings.append(f"duplicate copy of a slice ignored: {rel(f.path, root)} "
                            f"(same SOPInstanceUID as {rel(other.path, root)})")
            continue
        seen_sop[f.sop_uid] = f
        by_series.setdefault(f.series_uid, []).append(f)

    series, ignored, failed = _usable_series(by_series, config, pid, root, warnings)
    sop_to_series = {f.sop_uid: f.series_uid for fs in by_series.values() for f in fs}
    all_series_uids = set(by_series)

    # structure sets -> series
    sets_by_series: dict[str, list[StructureSet]] = {}
    rt_notes: list[dict] = []
    for rf in rtfiles:
        ss = parse_rtstruct(rf.path, config, pid)
        # match against classified series first; an RTSTRUCT on an ignored series (a CT, an
        # unclassified or unusable MR series) is only noted. The series it was drawn on comes from
        # RTReferencedStudySequence or, when that optional sequence is absent, from its images.
        refs = list(dict.fromkeys(ss.referenced_series_uids
                                  + sorted({sop_to_series[u] for u in ss.referenced_sop_uids
                                            if u in sop_to_series})))
        ignored_ref = [u for u in refs if u in all_series_uids and u not in series]
        if ignored_ref and not any(u in series for u in refs):
            desc = by_series[ignored_ref[0]][0].description
            why = next((i["reason"] for i in ignored if i["series_uid"] == ignored_ref[0]), "not used")
            rt_notes.append({"file": rel(rf.path, root),
                             "reason": f"drawn on ignored series {desc!r} ({why})"})
            continue
        uid, how = _match_rtstruct(ss, series, sop_to_series, series_owner, pid)
        if how.startswith("frame of reference"):
            warnings.append(f"RTSTRUCT {rel(rf.path, root)} matched to {series[uid].description!r} by "
                            f"frame of reference only")
        sets_by_series.setdefault(uid, []).append(ss)

    # DICOM SEG -> series, through the images its frames were derived from
    segs_by_series: dict[str, list[Path]] = {}
    for sf in segfiles or []:
        sg = segmod.read_seg(sf.path, config, patient=pid)
        refs = list(dict.fromkeys(sg.referenced_series_uids
                                  + sorted({sop_to_series[u] for u in sg.referenced_sop_uids if u in sop_to_series})))
        used = [u for u in refs if u in series]
        if len(used) == 1:
            segs_by_series.setdefault(used[0], []).append(sf.path)
            continue
        if len(used) > 1:
            raise DicomError(f"DICOM SEG references {len(used)} series", patient=pid, file=sf.path,
                             expected="a SEG derived from the images of one series")
        known = [u for u in refs if u in all_series_uids]
        reason = (f"drawn on ignored series {by_series[known[0]][0].description!r}" if known
                  else "references no image series of this patient")
        rt_notes.append({"file": rel(sf.path, root), "reason": f"DICOM SEG {reason}"})

    # one series per sequence
    chosen: dict[str, DicomSequence] = {}
    for seq in SEQUENCES:
        cands = [(s, [ss.path for ss in sets_by_series.get(u, [])] + segs_by_series.get(u, []))
                 for u, s in series.items() if s.sequence == seq]
        if not cands:
            continue
        best, why = _choose(cands)
        s, _ = cands[best]
        rts = [ss.path for ss in sets_by_series.get(s.series_uid, [])]
        segs = segs_by_series.get(s.series_uid, [])
        if rts and segs:
            # the planning system's RTSTRUCT is the clinical record; an AI SEG is a proposal
            for p in segs:
                rt_notes.append({"file": rel(p, root), "reason": f"DICOM SEG not used: an RTSTRUCT on the "
                                                                   f"same series ({s.description!r}) wins"})
            segs = []
        chosen[seq] = DicomSequence(series=s, rtstruct_paths=rts, seg_paths=segs)
        for i, (o, orts) in enumerate(cands):
            if i != best:
                ignored.append({"series_uid": o.series_uid, **_where(o.files, root), "n_files": o.n_files,
                                "reason": f"another {seq} series ({s.description!r}) was used: {why}"})
                for p in orts:
                    rt_notes.append({"file": rel(p, root), "reason": f"drawn on unused series {o.description!r}"})

    # NIfTI masks beside the DICOM series (ROI-T1.nii, ...): used where no RTSTRUCT or SEG is
    for seq, paths in sorted(nifti_masks.items()):
        if len(paths) > 1:
            raise CohortError(f"{len(paths)} NIfTI masks for {seq}: {', '.join(rel(p, root) for p in paths)}",
                              patient=pid, file=paths[1], expected=f"one mask per sequence ({seq})")
        cs = chosen.get(seq)
        if cs is None:
            rt_notes.append({"file": rel(paths[0], root), "reason": f"NIfTI mask for {seq}, but no {seq} series"})
        elif cs.rtstruct_paths or cs.seg_paths:
            rt_notes.append({"file": rel(paths[0], root), "reason": f"NIfTI mask not used: the {seq} series has "
                                                                   f"an {'RTSTRUCT' if cs.rtstruct_paths else 'SEG'}"})
        else:
            cs.nifti_mask = paths[0]

    # decode one slice of every series used, so that pixel data that cannot be decoded (a transfer
    # syntax without an installed decoder, corrupt compressed data) are reported by `inspect`,
    # not first by `preprocess`
    for seq, cs in chosen.items():
        s = cs.series
        dcm.read_slice(s.files[len(s.files) // 2], patient=pid)

    sequences = {seq: _describe_sequence(seq, cs, sets_by_series.get(cs.series.series_uid, []), config, pid, root)
                 for seq, cs in chosen.items()}

    missing = [q for q in config.required_sequences if q not in chosen]
    for q in missing:
        if q in failed:
            raise failed[q]
    if missing:
        found = [f"{label(_where(s.files, root))} ({s.sequence})" for s in series.values()] + \
                [f"{label(i)} ({i['reason']})" for i in ignored]
        f = (images or rtfiles or segfiles)[0].path
        raise CohortError(f"missing sequence(s) {', '.join(missing)}; series found: "
                          f"{'; '.join(found) or 'none'}", patient=pid, file=f.parent,
                          expected=f"series classified as {', '.join(config.required_sequences)} "
                                   "(see cohort.sequence_patterns)")
    entry = Entry(patient_id=pid, source="dicom", dicom=chosen)
    record = {"source": "dicom", "sequences": sequences, "ignored_series": ignored,
              "ignored_rtstructs": rt_notes, "ignored_files": notes, "warnings": warnings}
    return entry, record


def _describe_sequence(seq: str, cs: DicomSequence, sets: list[StructureSet], config: CohortConfig,
                       pid: str, root: Path) -> dict:
    """The manifest's record of one chosen series and its structures (RTSTRUCT, SEG or NIfTI mask,
    in that order of precedence); rasterises the masks once to count voxels and raises for
    structure sets whose names map to nothing."""
    s = cs.series
    info = dcm.series_summary(s)
    info["folder"] = rel(Path(info["folder"]), root)
    info["classified_by"] = s.reason
    info["rtstructs"] = [rel(p, root) for p in cs.rtstruct_paths]
    info["segs"] = [rel(p, root) for p in cs.seg_paths]
    info["mask_source"] = ("RTSTRUCT" if sets else "SEG" if cs.seg_paths
                           else "NIfTI" if cs.nifti_mask is not None else None)
    info["nifti_mask"] = rel(cs.nifti_mask, root) if cs.nifti_mask is not None else None
    w = list(s.warnings)
    if sets:
        mapped, unmatched = structures_of(sets)
        if not mapped:
            names = [r.name for ss in sets for r in ss.rois]
            raise RTStructError(f"none of the ROIs of the {seq} RTSTRUCT maps to GTV or GTVln: "
                                f"{', '.join(repr(n) for n in names) or 'no ROI at all'}",
                                patient=pid, file=sets[0].path,
                                expected="ROI names such as GTV, GTVnx, GTVp, GTVnd, GTVln, GTVn_L "
                                         "(or add the spelling to cohort.roi_patterns)")
        _, counts, mw = masks_on_grid(sets, s.stack, s.plan, missing_positions_mm=s.missing_positions_mm,
                                      missing_grid_index=s.missing_grid_index, patient=pid)
    elif cs.seg_paths:
        mapped, unmatched = {}, []
        for p in cs.seg_paths:
            m, u = segmod.structures_of_seg(segmod.read_seg(p, config, patient=pid))
            for k, v in m.items():
                mapped.setdefault(k, []).extend(v)
            unmatched += u
        if not mapped:
            raise DicomError(f"none of the segments of the {seq} SEG maps to GTV or GTVln: "
                             f"{', '.join(repr(n) for n in unmatched) or 'no segment at all'}",
                             patient=pid, file=cs.seg_paths[0],
                             expected="segment labels such as GTV, GTVp, GTVnd (or add the spelling to "
                                      "cohort.roi_patterns)")
        mapped = {k: mapped[k] for k in STRUCTURES if k in mapped}
        _, counts, mw = seg_masks(cs.seg_paths, s, config, pid)
    elif cs.nifti_mask is not None:
        mapped, unmatched = {config.dicom_mask_structure: [cs.nifti_mask.name]}, []
        _, counts, mw = dmask.mask_on_series(cs.nifti_mask, s.geometry, config.dicom_mask_structure, patient=pid)
    else:
        mapped, unmatched, counts = {}, [], {}
        mw = ["no RTSTRUCT, SEG or NIfTI mask for this series: no structures"]
    w.extend(mw)
    for n in unmatched:
        if looks_like_tumour(n):
            w.append(f"ROI {n!r} looks like a tumour volume but matches no pattern of "
                     f"cohort.roi_patterns; it was not used")
    info.update(structures=mapped, roi_voxels=counts, unmatched_rois=unmatched, warnings=w)
    return info


def index_nifti_patient(pid: str, folder: Path, names: list[str], config: CohortConfig,
                         root: Path) -> tuple[Entry, dict]:
    np_ = nii.index_patient(folder, names, config, patient=pid)
    missing = [q for q in config.required_sequences if q not in np_.sequences]
    if missing:
        raise CohortError(f"missing sequence(s) {', '.join(missing)}; NIfTI files found: {', '.join(names)}",
                          patient=pid, file=folder,
                          expected="image files named by cohort.nifti_image_patterns, e.g. "
                                   + ", ".join(config.nifti_image_patterns.get(missing[0], ())))
    sequences = {}
    for seq in SEQUENCES:
        if seq not in np_.sequences:
            continue
        ns = np_.sequences[seq]
        g = ns.geometry
        sequences[seq] = {"image": rel(ns.image_path, root),
                          "label": rel(ns.label_path, root) if ns.label_path else None,
                          "n_slices": g.size[2], "size": list(g.size),
                          "spacing_mm": [round(v, 4) for v in g.spacing_mm],
                          "origin_mm": [round(v, 4) for v in g.origin_mm],
                          "direction": [round(v, 6) for v in g.direction],
                          "orientation": dcm.orientation_label(g.direction),
                          "structures": {s: [f"label {k}"] for k, s in nii.LABELS.items() if s in ns.structures},
                          "unmatched_rois": [], "warnings": list(ns.warnings)}
    record = {"source": "nifti", "sequences": sequences, "ignored_series": [],
              "ignored_files": [{"file": rel(folder / n, root), "reason": "matches no NIfTI pattern"}
                                for n in np_.unused_files],
              "warnings": []}
    return Entry(patient_id=pid, source="nifti", nifti=np_), record


def _safe_nifti_match(folder: Path, names: list[str], config: CohortConfig, pid: str):
    try:
        return nii.match_sequences(folder, names, config, patient=pid)
    except NiftiError:
        # two files for one sequence: still a patient folder; the error comes when indexing it
        return {"?": None}, []


@dataclass
class FolderScan:
    """What ``scan_folder`` found, sorted by patient (IDs from PatientID, or from the folder).

    problems: (error, patient or None) for bad input found before any patient is indexed (an
    unreadable file whose patient cannot be told, two NIfTI folders of one name), to be raised
    or recorded as skipped by the caller.
    """
    images: dict[str, list[dcm.ImageFile]] = field(default_factory=dict)
    rtstructs: dict[str, list[dcm.RTStructFile]] = field(default_factory=dict)
    segs: dict[str, list[dcm.RTStructFile]] = field(default_factory=dict)
    nifti_masks: dict[str, dict[str, list[Path]]] = field(default_factory=dict)   # pid -> sequence -> files
    nifti_folders: dict[str, tuple[Path, list[str]]] = field(default_factory=dict)
    notes: dict[str, list[dict]] = field(default_factory=dict)                    # other DICOM objects
    unreadable: dict[str, list[tuple[Path, str]]] = field(default_factory=dict)
    series_owner: dict[str, str] = field(default_factory=dict)                    # series UID -> patient
    pid_from_folder: set[str] = field(default_factory=set)
    unreadable_files: list[dict] = field(default_factory=list)                    # patient unknown
    unused_nifti_files: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)                        # not DICOM
    archives: list[dict] = field(default_factory=list)
    problems: list[tuple[InputError, str | None]] = field(default_factory=list)

    @property
    def patient_ids(self) -> list[str]:
        return sorted((set(self.images) | set(self.rtstructs) | set(self.segs) | set(self.nifti_folders)
                       | set(self.unreadable)) - {""})


def scan_folder(root: Path, config: CohortConfig, table_path: Path | None = None, *,
                show_progress: bool | None = None) -> FolderScan:
    """Walk ``root`` once and sort its files by patient (see ``FolderScan``); headers only."""
    out = FolderScan()
    files = walk(root)
    table_resolved = table_path.resolve() if table_path is not None else None
    nifti_dirs: dict[Path, list[str]] = {}
    dicom_candidates: list[Path] = []
    dicom_masks: list[tuple[Path, str]] = []      # (NIfTI mask beside DICOM series, sequence)
    for f in files:
        if table_resolved is not None and f.resolve() == table_resolved:
            continue
        mask_seq = next((q for q, pats in config.dicom_mask_patterns.items()
                         if any(fnmatch.fnmatch(f.name.lower(), pat.lower()) for pat in pats)), None)
        if mask_seq is not None:
            dicom_masks.append((f, mask_seq))
        elif nii.is_nifti(f):
            nifti_dirs.setdefault(f.parent, []).append(f.name)
        elif f.suffix.lower() in _ARCHIVE_SUFFIXES:
            # a gzipped DICOM file or a zipped export is not read, but it must not vanish unseen
            out.archives.append({"file": rel(f, root), "reason": "compressed file or archive, not read: "
                                 "unpack it (gunzip / unzip) to include what it holds"})
        elif f.suffix.lower() in dcm.NON_DICOM_SUFFIXES:
            continue
        else:
            dicom_candidates.append(f)
    scan = dcm.scan_dicom_parallel(dicom_candidates, config.workers)
    out.ignored_files = [rel(p, root) for p in scan.other_files]

    # a file without PatientID (the public NPC MRI dataset empties it) belongs to the patient its
    # folder names: MRI-Segments/001/T2WI/IM1 -> "001"; the manifest says so
    for f in (*scan.images, *scan.rtstructs, *scan.segs):
        if not f.patient_id:
            f.patient_id = _patient_folder(f.path, root)
            out.pid_from_folder.add(f.patient_id)
    for im in scan.images:
        out.images.setdefault(im.patient_id, []).append(im)
    for rt in scan.rtstructs:
        out.rtstructs.setdefault(rt.patient_id, []).append(rt)
    for sg in scan.segs:
        out.segs.setdefault(sg.patient_id, []).append(sg)
    owned = [(im.path, im.patient_id) for im in scan.images] + \
        [(r.path, r.patient_id) for r in scan.rtstructs + scan.segs]
    owners = _owner_by_folder(root, owned)
    out.series_owner = {im.series_uid: im.patient_id for im in scan.images}
    for p, q in dicom_masks:
        owner = _attribute(p, root, owners)
        if owner is None:
            out.unused_nifti_files.append(rel(p, root))
        else:
            out.nifti_masks.setdefault(owner, {}).setdefault(q, []).append(p)
    for p, pid, what in scan.other_dicom:
        out.notes.setdefault(pid, []).append({"file": rel(p, root), "reason": what})
    for p, problem in scan.unreadable:
        owner = _attribute(p, root, owners)
        if owner is None:
            out.unreadable_files.append({"file": rel(p, root), "problem": problem})
            out.problems.append((DicomError(problem, file=p, expected="a readable DICOM file (its patient "
                                                                      "could not be told from the folder)"), None))
        else:
            out.unreadable.setdefault(owner, []).append((p, problem))

    # NIfTI patients: a folder with image files named by the patterns
    for folder, names in sorted(nifti_dirs.items()):
        pid = folder.name if folder != root else root.name
        imgs, _ = _safe_nifti_match(folder, names, config, pid)
        if not imgs:
            out.unused_nifti_files.extend(rel(folder / n, root) for n in names)
            continue
        if pid in out.nifti_folders:
            out.problems.append((CohortError(f"duplicate patient ID: two NIfTI folders named {pid!r} "
                                             f"({out.nifti_folders[pid][0]} and {folder})", patient=pid,
                                             file=folder, expected="one folder per patient"), pid))
            continue
        out.nifti_folders[pid] = (folder, names)
    return out
