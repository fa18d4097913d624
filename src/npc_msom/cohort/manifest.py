"""The manifest of an indexed cohort, and ``inspect``'s text of it.

The manifest is a JSON-ready dict (its fields: the docstring of ``npc_msom.cohort``), written as
``cohort/manifest.json`` in a run; ``format_manifest`` turns it into the text ``inspect`` prints:
per patient the sequences and structures found, then what was ignored or skipped and why.
"""
from __future__ import annotations

from pathlib import Path

from npc_msom.config import CohortConfig, to_dict
from npc_msom.errors import InputError

MANIFEST_VERSION = 1


def skip_record(exc: InputError, pid: str | None) -> dict:
    """The manifest's record of a skipped patient (or file): the error's fields and its class."""
    d = exc.to_dict()
    d["patient"] = exc.patient or pid
    d["error"] = type(exc).__name__
    return d


def build_manifest(root: Path, config: CohortConfig, table_path: Path | None, usable: list[str],
                   patients: dict[str, dict], skipped: list[dict], clinical_only: list[str],
                   image_only: list[str], clinical_problems: list[dict], unreadable_files: list[dict],
                   unused_nifti_files: list[str], ignored_files: list[str], archives: list[dict]) -> dict:
    """The manifest dict of a cohort (see the docstring of ``npc_msom.cohort``)."""
    return {
        "version": MANIFEST_VERSION,
        "root": str(root),
        "clinical_table": str(table_path) if table_path is not None else None,
        "config": to_dict(config),
        "n_patients": len(usable),
        "patient_ids": usable,
        "patients": {pid: patients[pid] for pid in usable},
        "skipped": sorted(skipped, key=lambda r: (r.get("patient") or "", r.get("file") or "")),
        "clinical_only": sorted(clinical_only),
        "image_only": image_only,
        "clinical_problems": clinical_problems,
        "unreadable_files": unreadable_files,
        "unused_nifti_files": unused_nifti_files,
        "ignored_files": ignored_files,
        "archives": archives,
    }


def label(info: dict) -> str:
    """'T2_TSE' or, for a series without a description, 'series 7 (no description) in P1/s7'."""
    if info.get("description"):
        return repr(info["description"])
    num = info.get("series_number")
    return (f"series {num if num is not None else '?'} (no description)"
            + (f" in {info['folder']}" if info.get("folder") else ""))


def _fmt_structs(structs: dict[str, list[str]]) -> str:
    # every structure is named, the absent ones too: a patient without GTVln (N0) must read as
    # "none contoured", not look like an ROI the reader lost
    from npc_msom.config import STRUCTURES
    parts = [f"{k} ({', '.join(structs[k])})" if structs.get(k) else f"{k}: none contoured" for k in STRUCTURES]
    parts += [f"{k} ({', '.join(v)})" for k, v in structs.items() if k not in STRUCTURES]
    return ", ".join(parts)


def format_manifest(m: dict) -> str:
    """The manifest as text: per patient the sequences and structures found, then what was
    ignored or skipped and why."""
    lines = [f"Cohort {m['root']}: {m['n_patients']} usable patient(s), {len(m['skipped'])} skipped",
             f"Clinical table: {m['clinical_table'] or 'none'}"]
    for pid, rec in m["patients"].items():
        lines.append("")
        lines.append(f"{pid}  [{rec['source']}{'' if rec.get('clinical') else ', no clinical row'}]")
        for seq, info in rec["sequences"].items():
            sp = "x".join(f"{v:.2f}" for v in info.get("spacing_mm", []))
            name = info.get("description") or info.get("image")
            lines.append(f"  {seq:<8} {name!r}: {info.get('n_slices')} slices, {sp} mm, "
                         f"{info.get('orientation')}; {_fmt_structs(info.get('structures', {}))}")
            if info.get("unmatched_rois"):
                lines.append(f"           unmatched ROIs (not used): {', '.join(info['unmatched_rois'])}")
            for w in info.get("warnings", []):
                lines.append(f"           warning: {w}")
        for ig in rec.get("ignored_series", []):
            lines.append(f"  ignored series {label(ig)} ({ig['n_files']} files): {ig['reason']}")
        for ig in rec.get("ignored_rtstructs", []):
            lines.append(f"  ignored RTSTRUCT {ig['file']}: {ig['reason']}")
        for ig in rec.get("ignored_files", []):
            lines.append(f"  ignored file {ig['file']}: {ig['reason']}")
        for w in rec.get("warnings", []):
            lines.append(f"  warning: {w}")
    if m["skipped"]:
        lines.append("")
        lines.append("Skipped:")
        for s in m["skipped"]:
            msg = s.get("message", "").replace("\n", "\n      ")
            lines.append(f"  {s.get('patient') or '(unknown patient)'}: {s.get('error')}: {msg}")
            if s.get("found"):
                lines.append("      images found: " + ", ".join(f"{q} {d!r}" for q, d in s["found"].items()))
    if m["clinical_only"]:
        lines.append("")
        lines.append(f"Clinical rows without images: {', '.join(m['clinical_only'])}")
    if m["image_only"]:
        lines.append(f"Images without a clinical row: {', '.join(m['image_only'])}")
    if m["unreadable_files"]:
        lines.append("Unreadable files (patient unknown): " + ", ".join(u["file"] for u in m["unreadable_files"]))
    for a in m.get("archives", []):
        lines.append(f"Not read: {a['file']}: {a['reason']}")
    if m["ignored_files"]:
        shown = m["ignored_files"][:10]
        more = len(m["ignored_files"]) - len(shown)
        lines.append("Other files ignored (not DICOM): " + ", ".join(shown) + (f" and {more} more" if more > 0 else ""))
    return "\n".join(lines) + "\n"
