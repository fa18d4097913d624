"""npc-msom predict: one patient through a trained run, checked against what stage 2 computes.

The tiny random detectors of the fixtures cost about a second per slice on a loaded 2-core machine
and a patient has ~130 slices of 1 mm per sequence, so most tests replace the detector's inference
(``npc_msom.detection.detect``) by a stub that finds a GTV disc and a GTVln disc on every slice of
the head; one test runs the real detector on a few slices.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from PIL import Image

from npc_msom.cli import main
from npc_msom.predict import predict, read_patient, rtstruct_masks, write_prediction
from npc_msom.prediction.scores import read_scores


def stub_detect(model, slices, device="cpu", score_threshold=0.05, **kw):
    """A GTV disc (score 0.9) and a GTVln disc (0.7) on every slice whose mean grey level shows the head."""
    out = []
    for s in slices:
        a = np.asarray(s, dtype=np.float32)
        if np.asarray(s).dtype != np.uint8:    # stage 2 passes 0..1 floats, predict uint8 (as detect takes both)
            a = a * 255.0
        h, w = a.shape[-2:]
        yy, xx = np.mgrid[:h, :w]
        if a.mean() < 40:
            out.append({"boxes_xyxy": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
                        "scores": np.zeros(0, np.float32), "masks": np.zeros((0, h, w), bool)})
            continue
        gtv = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (h / 8) ** 2
        ln = (yy - h / 2) ** 2 + (xx - w / 4) ** 2 <= (h / 16) ** 2
        boxes = [[w / 2 - h / 8, h / 2 - h / 8, w / 2 + h / 8, h / 2 + h / 8],
                 [w / 4 - h / 16, h / 2 - h / 16, w / 4 + h / 16, h / 2 + h / 16]]
        out.append({"boxes_xyxy": np.array(boxes, np.float32), "labels": np.array([1, 2]),
                    "scores": np.array([0.9, 0.7], np.float32), "masks": np.stack([gtv, ln])})
    return out


@pytest.fixture()
def stub_detector(monkeypatch):
    import npc_msom.detection
    monkeypatch.setattr(npc_msom.detection, "detect", stub_detect)


@pytest.fixture(scope="module")
def auto_pred(trained_run, new_patient_without_contours):
    """The new patient without contours, predicted once (stub detector) for the tests that read it."""
    import npc_msom.detection
    with pytest.MonkeyPatch.context() as mp:   # undone before the next test (one runs the real detector)
        mp.setattr(npc_msom.detection, "detect", stub_detect)
        return predict(trained_run, new_patient_without_contours, device="cpu")


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def test_run_patient_with_contours_equals_stage2(trained_run, synth_cohort_dir, stub_detector, tmp_path):
    """A validation patient of the run, with contours: the same slices, pixels, probabilities, scores,
    cut-offs and risk groups as stage 2 wrote for it; the combined mean as prediction/combined/mean;
    and summary.json (through the CLI) holds those numbers."""
    pid = sorted(json.loads((trained_run / "preprocessed" / "split.json").read_text())["val"])[0]
    folder = synth_cohort_dir / "dicom" / pid
    pred = predict(trained_run, folder, synth_cohort_dir / "clinical.csv", device="cpu")
    assert pred.patient_id == pid
    assert set(pred.sequences) == {"T1WI", "T2WI"} and pred.missing == []
    assert pred.untrained == {"CE-T1WI": "no stage-2 model"}
    for seq, sp in pred.sequences.items():
        assert sp.slice_rule == "contours"
        slices = pd.read_csv(trained_run / "preprocessed" / seq / "slices.csv", dtype={"patient_id": str})
        mine = slices[(slices["patient_id"] == pid) & ~slices["negative"].astype(bool)]
        assert sp.scored == mine["slice_index"].tolist()
        assert np.allclose(sp.volume.z_mm[sp.scored], mine["z_mm"], atol=1e-3)
        for z, f in zip(sp.scored, mine["file_name"]):   # the very pixels the stage wrote
            assert np.array_equal(sp.volume.images[z], np.asarray(Image.open(trained_run / "preprocessed" / seq / f)))
        for model in ("mri", "fusion"):
            out = trained_run / "prediction" / seq / model
            ss = pd.read_csv(out / "slice_scores.csv", dtype={"patient_id": str})
            assert np.allclose(sp.probabilities[model], ss[ss["patient_id"] == pid]["probability"], atol=1e-5)
            row = read_scores(out / "patient_scores.csv").set_index("patient_id").loc[pid]
            got = sp.scores[model]
            assert got["score"] == pytest.approx(row["score"], abs=1e-5)
            assert got["cutoff"] == pytest.approx(row["cutoff"], rel=1e-5)
            assert got["risk_group"] == row["risk_group"]
    comb = read_scores(trained_run / "prediction" / "combined" / "mean" / "patient_scores.csv").set_index(
        "patient_id").loc[pid]
    assert pred.combined["from"] == "fusion" and pred.combined["sequences"] == ["T1WI", "T2WI"]
    assert pred.combined["score"] == pytest.approx(comb["score"], abs=1e-5)
    assert pred.combined["cutoff"] == pytest.approx(comb["cutoff"], rel=1e-5)
    assert pred.combined["risk_group"] == comb["risk_group"]
    # the patient-level models: the same masks (contours), descriptors and scores as stage 2
    for seq, sp in pred.sequences.items():
        assert sp.mask_source == "contours"
        stored = pd.read_csv(trained_run / "prediction" / seq / "patient" / "descriptors.csv",
                             dtype={"patient_id": str}).set_index("patient_id").loc[pid]
        mine = sp.patient_inputs.burden.loc[pid]
        assert np.allclose(mine.to_numpy(float), stored[mine.index].to_numpy(float), rtol=1e-4, atol=1e-6,
                           equal_nan=True), (seq, mine, stored)
        for model in ("patient", "patient_fusion"):
            row = read_scores(trained_run / "prediction" / seq / model / "patient_scores.csv").set_index(
                "patient_id").loc[pid]
            assert sp.scores[model]["score"] == pytest.approx(row["score"], abs=1e-5), (seq, model)
            assert sp.scores[model]["risk_group"] == row["risk_group"]
    for model in ("patient", "patient_fusion"):
        row = read_scores(trained_run / "prediction" / "combined" / model / "patient_scores.csv").set_index(
            "patient_id").loc[pid]
        assert pred.combined_patient[model]["score"] == pytest.approx(row["score"], abs=1e-5), model
        assert pred.combined_patient[model]["sequences"] == ["T1WI", "T2WI"]

    out = tmp_path / "out"
    write_prediction(pred, out)
    summary = json.loads((out / "summary.json").read_text())
    for seq, sp in pred.sequences.items():
        for model in ("mri", "fusion"):
            assert summary["sequences"][seq]["models"][model]["score"] == pytest.approx(sp.scores[model]["score"], abs=1e-6)
            assert summary["sequences"][seq]["models"][model]["risk_group"] == sp.scores[model]["risk_group"]
        got = pd.read_csv(out / seq / "slices.csv")
        assert np.allclose(got["probability_mri"], sp.probabilities["mri"], atol=1e-5)
        assert Image.open(out / seq / "overlay.png").size[0] > 100
        assert (out / seq / "RTSTRUCT_pred.dcm").is_file()
    assert summary["combined"]["score"] == pytest.approx(pred.combined["score"])
    assert summary["combined_patient_models"]["patient"]["score"] == pytest.approx(
        pred.combined_patient["patient"]["score"])
    assert summary["sequences"]["T1WI"]["descriptor_masks"] == "contours"
    assert summary["sequences"]["T1WI"]["descriptors"]["gtv_volume_ml"] > 0
    assert summary["untrained_sequences"] == {"CE-T1WI": "no stage-2 model"}
    assert not list(tmp_path.glob(".out*"))     # no temporary folder left behind
    _check_saliency(pred, summary, out)


def _check_saliency(pred, summary, out):
    """Grad-CAM of each slice model: a map per scored slice, the shares of the score, the NIfTI on
    the series' own geometry with its mass on the scored planes, an overlay."""
    import SimpleITK as sitk
    for seq, sp in pred.sequences.items():
        info = summary["sequences"][seq]["saliency"]
        assert set(info) == set(sp.saliency) == {"mri", "fusion"}
        for model, e in sp.saliency.items():
            assert e["maps"].shape == (len(sp.scored),) + sp.volume.images.shape[1:]
            assert (e["maps"] >= 0).all() and e["maps"].max() > 0
            rows = info[model]["slices"]
            assert [r["slice_index"] for r in rows] == sp.scored
            assert sum(r["share_of_score"] for r in rows) == pytest.approx(1.0, abs=1e-3)
            # the mean aggregation: a slice's share is its probability over the sum
            p = sp.probabilities[model]
            assert rows[0]["share_of_score"] == pytest.approx(p[0] / p.sum(), abs=1e-4)
            assert all(0 <= r["tumour_area_share"] <= 1 for r in rows)
            img = sitk.ReadImage(str(out / seq / f"saliency_{model}.nii.gz"))
            g = sp.series.geometry
            assert img.GetSize() == tuple(g.size)
            assert np.allclose(img.GetOrigin(), g.origin_mm, atol=1e-4)
            assert np.allclose(img.GetSpacing(), g.spacing_mm, atol=1e-5)
            assert np.allclose(img.GetDirection(), g.direction, atol=1e-6)
            arr = sitk.GetArrayFromImage(img)
            # scaled to the patient's maximum on the slices; linear resampling onto the series only lowers it
            assert 0.3 < arr.max() <= 1.0 + 1e-6 and arr.min() >= 0
            assert Image.open(out / seq / f"saliency_{model}.png").size[0] > 100
        for model in ("patient", "patient_fusion"):     # the patient-level score split by its inputs
            c = summary["sequences"][seq]["models"][model]["contributions"]
            logit = c["fusion"]["logit"] if model == "patient_fusion" else c["logit"]
            assert 1 / (1 + np.exp(-logit)) == pytest.approx(sp.scores[model]["score"], abs=1e-5)
            assert set(c["regions"]) <= {"GTV", "GTVln", "ring"} and "gtv_volume_ml" in c["burden"]


def test_new_patient_without_contours_is_scored_automatically(trained_run, auto_pred, tmp_path):
    """No RTSTRUCT: the detector chooses the slices (select_tumour_slices over the whole volume), and
    their scores equal stage 2's own path (cached pooled features -> head) on those slices as files."""
    from npc_msom.detection import select_tumour_slices
    from npc_msom.predict import load_stage_model, read_run
    from npc_msom.prediction.features import pooled_features
    from npc_msom.prediction.train import head_probabilities
    pred = auto_pred
    run = read_run(trained_run)
    for seq, sp in pred.sequences.items():
        assert sp.slice_rule == "automatic"
        assert set(sp.scores) == {"mri", "patient"}   # no clinical file: no fusion score
        # the patient-level model on the detector's masks of the slices it chose
        assert sp.mask_source == "detector" and sp.scores["patient"]["masks"] == "detector"
        assert 0 <= sp.scores["patient"]["score"] <= 1
        n_gtv = int(sum(sp.masks_px["GTV"][z].any() for z in sp.scored))
        assert (sp.patient_inputs.burden["gtv_volume_ml"].iloc[0] > 0) == (n_gtv > 0)
        dets = stub_detect(None, [sp.volume.images[z] for z in sp.searched])
        expect = [sp.searched[i] for i in select_tumour_slices(dets, sp.volume.z_mm[sp.searched],
                                                                score_threshold=0.5, labels=[1])]
        assert sp.scored == sorted(expect) and len(expect) > 3
        paths = []
        for z in sp.scored:
            paths.append(tmp_path / f"{seq}_{z}.png")
            Image.fromarray(sp.volume.images[z]).save(paths[-1])
        sm = load_stage_model(run, seq, "mri", "cpu")
        probs = head_probabilities(sm.net.head, pooled_features(sm.net, paths, "cpu", mirror=False))
        assert np.allclose(sp.probabilities["mri"], probs, atol=1e-5)
        assert sp.scores["mri"]["score"] == pytest.approx(float(np.mean(probs)), abs=1e-6)
        assert sp.scores["mri"]["risk_group"] == ("high" if np.mean(probs) >= sm.cutoff else "low")
    assert pred.combined["from"] == "mri"
    assert pred.combined["score"] == pytest.approx(np.mean([pred.sequences[s].scores["mri"]["score"]
                                                            for s in ("T1WI", "T2WI")]))


def test_detector_slice_rule_equals_stage2(trained_run, run_config, synth_cohort_dir, stub_detector, tmp_path):
    """A run whose stage 2 scored the slices its detector picked (prediction.slices: detector): a patient
    of the run with contours gets the same slices (the stage's negatives included) and scores."""
    import dataclasses

    from npc_msom.config import dump_config
    from npc_msom.prediction import train_predictor_for_run
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("prediction"))
    cfg = dataclasses.replace(run_config, prediction=dataclasses.replace(run_config.prediction, slices="detector"))
    (run / "config.yaml").write_text(dump_config(cfg))
    train_predictor_for_run(cfg, run, "T1WI", "mri", device="cpu")
    pid = sorted(json.loads((run / "preprocessed" / "split.json").read_text())["val"])[-1]
    pred = predict(run, synth_cohort_dir / "dicom" / pid, device="cpu")
    sp = pred.sequences["T1WI"]
    assert sp.slice_rule == "detector" and set(pred.untrained) == {"T2WI", "CE-T1WI"}
    ss = pd.read_csv(run / "prediction" / "T1WI" / "mri" / "slice_scores.csv", dtype={"patient_id": str})
    ss = ss[ss["patient_id"] == pid]
    slices = pd.read_csv(run / "preprocessed" / "T1WI" / "slices.csv", dtype={"patient_id": str})
    assert slices[slices["patient_id"] == pid]["negative"].astype(bool).any()   # negatives to choose from
    assert np.allclose(sp.volume.z_mm[sp.scored], ss["z_mm"], atol=1e-3)
    assert np.allclose(sp.probabilities["mri"], ss["probability"], atol=1e-5)
    row = read_scores(run / "prediction" / "T1WI" / "mri" / "patient_scores.csv").set_index("patient_id").loc[pid]
    assert sp.scores["mri"]["score"] == pytest.approx(row["score"], abs=1e-5)
    assert sp.scores["mri"]["risk_group"] == row["risk_group"]
    assert pred.combined is None      # one sequence: nothing to combine


def _dciodvfy_errors(path) -> list[str]:
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "Error" in line]


def test_rtstruct_is_valid_and_reads_back(trained_run, new_cohort, stub_detector, tmp_path):
    """The predicted contours as an RTSTRUCT on the patient's own series: dciodvfy finds no error, it
    references the series' frame of reference, study, series and SOP instances, and the project's
    RTSTRUCT reader gives the predicted masks back (Dice >= 0.95)."""
    from npc_msom.cohort.index import parse_rtstruct
    from npc_msom.cohort.rtstruct import masks_on_grid
    from npc_msom.config import CohortConfig
    cohort_dir, folder = new_cohort
    pred = predict(trained_run, folder, cohort_dir / "clinical.csv", device="cpu")
    out = tmp_path / "out"
    summary = write_prediction(pred, out)
    assert set(summary["sequences"]["T1WI"]["models"]) == {"mri", "fusion", "patient", "patient_fusion"}
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail("dciodvfy is not installed; under CI it must be", pytrace=False)
        check_dciodvfy = False
    else:
        check_dciodvfy = True
    for seq, sp in pred.sequences.items():
        path = out / seq / "RTSTRUCT_pred.dcm"
        if check_dciodvfy:
            assert _dciodvfy_errors(path) == []
        import pydicom
        ds = pydicom.dcmread(path)
        s = pred.input.entry.dicom[seq].series
        assert ds.FrameOfReferenceUID == s.frame_of_reference_uid
        assert ds.StudyInstanceUID == s.study_uid
        ref = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        assert ref.SeriesInstanceUID == s.series_uid
        refs = {c.ContourImageSequence[0].ReferencedSOPInstanceUID for rc in ds.ROIContourSequence
                for c in rc.ContourSequence}
        assert refs and refs <= s.sop_uids()
        assert [r.ROIName for r in ds.StructureSetROISequence] == ["GTV_pred", "GTVln_pred"]
        assert ds.PatientID == pydicom.dcmread(s.files[0].path, stop_before_pixels=True).PatientID
        ss = parse_rtstruct(path, CohortConfig(), pred.patient_id)
        back, _, _ = masks_on_grid([ss], s.stack, s.plan, patient=pred.patient_id)
        want = rtstruct_masks(pred, sp)
        for structure in ("GTV", "GTVln"):
            assert want[structure].sum() > 100
            assert _dice(back[structure], want[structure]) >= 0.95
    assert pred.sequences["T1WI"].slice_rule == "contours"


def test_nifti_patient_real_detector_and_missing_sequence(trained_run, new_cohort, tmp_path):
    """A NIfTI patient with T1WI only (a few slices, no label file), the run's real (random) detector
    at score threshold 0: masks written as a label NIfTI on the image's grid; T2WI reported missing."""
    cohort_dir, folder = new_cohort
    from npc_msom.config import CohortConfig
    series = read_patient(folder, CohortConfig()).patient.series["T1WI"]
    zs = np.flatnonzero(series.masks["GTV"].any(axis=(1, 2)))
    z0 = int(zs[len(zs) // 2])
    img = series.to_sitk(series.image)[:, :, z0 - 1:z0 + 2]
    nifti = tmp_path / "P_NEW"
    nifti.mkdir()
    sitk.WriteImage(img, str(nifti / "T1_img.nii.gz"))
    out = tmp_path / "out"
    rc = main(["predict", "--run", str(trained_run), "--patient", str(nifti), "--out", str(out), "--device", "cpu",
               "--score-threshold", "0"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == "nifti" and summary["patient_id"] == "P_NEW"
    assert summary["missing_sequences"] == ["T2WI"]
    assert summary["sequences"]["T1WI"]["slice_rule"] == "automatic"
    labels = sitk.ReadImage(str(out / "T1WI" / "pred_mask.nii.gz"))
    assert labels.GetSize() == img.GetSize()
    assert np.allclose(labels.GetOrigin(), img.GetOrigin()) and np.allclose(labels.GetSpacing(), img.GetSpacing())
    arr = sitk.GetArrayFromImage(labels)
    assert set(np.unique(arr)) <= {0, 1, 2}
    det = pd.read_csv(out / "T1WI" / "detections.csv")
    assert len(det) > 0 and det["score"].min() >= 0
    assert not set(np.round(det["score"], 3)) <= {0.9, 0.7}    # the real detector ran, not the tests' stub
    assert summary["sequences"]["T1WI"]["detections"]["GTV"]["n_detections"] == int((det["structure"] == "GTV").sum())


# ---- bad input: exit code 2, a message naming what was expected, no --out folder ----------------

def _fails(capsys, args, *needles):
    rc = main(["predict", *map(str, args)])
    err = capsys.readouterr().err
    assert rc == 2, err
    for n in needles:
        assert str(n) in err, err
    return err


def test_folder_without_mr_series(trained_run, tmp_path, capsys):
    empty = tmp_path / "nobody"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    out = tmp_path / "out"
    _fails(capsys, ["--run", trained_run, "--patient", empty, "--out", out], "no MR series", empty.resolve())
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_clinical_file_without_the_patient(trained_run, new_cohort, synth_cohort_dir, stub_detector, tmp_path, capsys):
    _, folder = new_cohort
    out = tmp_path / "out"
    table = tmp_path / "others.csv"     # the run's patients except this one's ID
    rows = (synth_cohort_dir / "clinical.csv").read_text().splitlines()
    table.write_text("\n".join(r for r in rows if not r.startswith(folder.name + ",")) + "\n")
    _fails(capsys, ["--run", trained_run, "--patient", folder, "--clinical", table, "--out", out],
           f"no row for patient {folder.name}", table)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_run_without_trained_models(trained_run, new_cohort, tmp_path, capsys):
    _, folder = new_cohort
    run = tmp_path / "untrained"
    run.mkdir()
    shutil.copy(trained_run / "config.yaml", run / "config.yaml")
    out = tmp_path / "out"
    _fails(capsys, ["--run", run, "--patient", folder, "--out", out], "no trained models", run,
           "detection/<sequence>/checkpoint_last.pt")
    assert not out.exists()
    _fails(capsys, ["--run", tmp_path / "nothing", "--patient", folder, "--out", out], "config.yaml")
    assert not out.exists()


def test_failure_while_writing_leaves_the_previous_output(auto_pred, tmp_path, monkeypatch):
    """An error while writing removes the temporary folder and keeps an existing --out as it was;
    a second, complete write replaces it."""
    import npc_msom.predict as P
    pred = auto_pred
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(P, "write_overlay", boom)
    with pytest.raises(OSError):
        write_prediction(pred, out)
    assert (out / "old.txt").read_text() == "previous"
    assert not list(tmp_path.glob(".out*"))
    monkeypatch.undo()
    summary = write_prediction(pred, out)
    assert not (out / "old.txt").exists() and json.loads((out / "summary.json").read_text()) == summary
    assert (out / "T1WI" / "RTSTRUCT_pred.dcm").is_file() and not list(tmp_path.glob(".out*"))
