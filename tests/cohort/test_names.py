import pytest

from npc_msom.cohort.dicom import classify_series
from npc_msom.cohort.rtstruct import map_roi_name, map_roi_names, normalise_roi_name
from npc_msom.config import CohortConfig

CFG = CohortConfig()


@pytest.mark.parametrize("name", ["GTV", "gtv", "GTVnx", "GTV-NX", "GTVp", "GTV_P", "GTV_T", "GTV-T",
                                  "GTV t", "GTVnx1", "GTV_primary", "GTVp_boost", "GTV np"])
def test_primary_spellings_map_to_gtv(name):
    assert map_roi_name(name, CFG) == "GTV"


@pytest.mark.parametrize("name", ["GTVln", "GTV_LN", "GTVnd", "GTVn", "GTV_N", "GTV-N", "GTVnd_L", "GTVnd_R",
                                  "GTVnd L", "GTVn1", "GTVn_2", "GTVnd3", "GTVln_L1", "GTV_node", "GTVrpn",
                                  "GTV_RPN_R", "GTVln-left", "LN1", "GTVnl"])
def test_node_spellings_map_to_gtvln(name):
    assert map_roi_name(name, CFG) == "GTVln"


@pytest.mark.parametrize("name", ["CTV", "PTV70", "Brainstem", "Parotid_L", "BODY", "GTV_total", "CTVnx",
                                  "Spinal Cord"])
def test_other_names_are_unmatched(name):
    assert map_roi_name(name, CFG) is None


def test_several_nodes_merge_and_unmatched_are_listed():
    mapped, unmatched = map_roi_names(["GTVnx", "GTVnd_L", "GTVnd_R", "GTVn3", "Brainstem", "PTV"], CFG)
    assert mapped == {"GTV": ["GTVnx"], "GTVln": ["GTVnd_L", "GTVnd_R", "GTVn3"]}
    assert unmatched == ["Brainstem", "PTV"]
    assert normalise_roi_name(" GTV-nd_L 1") == "gtvndl1"


def test_roi_patterns_are_configurable():
    cfg = CohortConfig(roi_patterns={"GTVln": (r"^nodes?\d*$",), "GTV": (r"^tumou?r$",)})
    assert map_roi_name("Tumour", cfg) == "GTV" and map_roi_name("Nodes 2", cfg) == "GTVln"
    assert map_roi_name("GTV", cfg) is None


@pytest.mark.parametrize("desc,protocol,agent,expected", [
    ("T1_TSE_TRA", "", "", "T1WI"),
    ("AX_T1_SE", "", "", "T1WI"),          # '_' separators
    ("T1WI", "", "", "T1WI"),
    ("t2_tse_fs_tra", "", "", "T2WI"),
    ("T2WI FS", "", "", "T2WI"),
    ("AX STIR", "", "", "T2WI"),
    ("CE-T1WI", "", "", "CE-T1WI"),
    ("T1+C", "", "", "CE-T1WI"),
    ("AX T1 FS +C", "", "", "CE-T1WI"),
    ("T1_TSE_FS_TRA_POST", "", "", "CE-T1WI"),
    ("t1_vibe_fs_tra_gd", "", "", "CE-T1WI"),
    ("T1C", "", "", "CE-T1WI"),
    ("T1_TSE_TRA", "", "Gadovist", "CE-T1WI"),   # contrast agent tag marks a T1 as CE-T1WI
    ("series 7", "t2_tse_tra", "", "T2WI"),       # protocol name used when the description says nothing
    ("T1 space tra", "", "", "T1WI"),            # 'space' must not read as 'ce'
])
def test_series_classification(desc, protocol, agent, expected):
    seq, why = classify_series(desc, protocol, CFG, contrast_agent=agent)
    assert seq == expected, why


@pytest.mark.parametrize("desc,image_type,why", [
    ("localizer", (), "ignored"), ("AAHead_Scout", (), "ignored"), ("ep2d_diff DWI", (), "ignored"),
    ("T1 tra", ("ORIGINAL", "PRIMARY", "LOCALIZER"), "localizer"), ("MPR cor", (), "unrecognised"),
])
def test_other_series_are_ignored_with_a_reason(desc, image_type, why):
    seq, reason = classify_series(desc, "", CFG, image_type=image_type)
    assert seq is None and why in reason
