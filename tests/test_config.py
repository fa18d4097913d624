from pathlib import Path

import pytest
import yaml

from npc_msom.config import Config, dump_config, load_config, from_dict, to_dict
from npc_msom.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_presets_load_and_differ_from_defaults():
    demo = load_config(ROOT / "configs" / "demo.yaml")
    paper = load_config(ROOT / "configs" / "paper.yaml")
    assert demo.detection.backbone == "resnet18" and paper.detection.backbone == "resnet50"
    assert paper.preprocess.image_size == 512
    assert isinstance(demo.detection.lr_steps, tuple)


def test_override_is_parsed_as_yaml_and_typed():
    c = load_config(None, ["preprocess.image_size=96", "detection.lr=0.5", "name=x"])
    assert c.preprocess.image_size == 96 and c.detection.lr == 0.5 and c.name == "x"


def test_unknown_and_mistyped_settings_are_errors():
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(None, ["preprocess.imagesize=96"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config(None, ["preprocess.image_size=big"])


def test_round_trip_through_yaml():
    c = load_config(ROOT / "configs" / "demo.yaml", ["seed=7"])
    again = from_dict(Config, yaml.safe_load(dump_config(c)))
    assert again == c
    assert to_dict(again)["seed"] == 7


def test_every_ap_versus_cost_row_is_a_valid_demo_variant(bench_detection):
    """benchmarks/bench_detection.py's rows: each loads on the demo preset, and the row named the
    demo is the demo preset unchanged (so the table's demo row is what `make demo` runs)."""
    bench = bench_detection
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert bench.AP_VS_COST[0][0].startswith("demo (now)") and bench.AP_VS_COST[0][1] == []
    seen = set()
    for name, overrides, trained_on in bench.AP_VS_COST:
        settings, switches = bench.split_overrides(overrides)
        assert switches <= bench.BENCH_SWITCHES, name
        c = load_config(ROOT / "configs" / "demo.yaml", settings)
        key = (repr(to_dict(c.detection)), c.seed, repr(trained_on), repr(sorted(switches)))
        assert key not in seen, f"{name}: the same detector as another row"
        seen.add(key)
        assert trained_on == "shared" or (isinstance(trained_on, tuple) and not c.detection.shared), name
    assert all(0 <= i < len(bench.AP_VS_COST) for i in bench.MAKE_BENCH_ROWS)
    # the speed-up `make bench` reports compares the demo's point with the loop before issue 9
    assert {bench.SPEED_BEFORE_ROW, bench.SPEED_AFTER_ROW} <= set(bench.MAKE_BENCH_ROWS)
    assert set(bench.AP_VS_COST[bench.SPEED_BEFORE_ROW][1]) >= bench.BENCH_SWITCHES
    assert bench.AP_VS_COST[bench.SPEED_AFTER_ROW][1] == []
    assert demo.detection.box_head_dim == 256  # the demo point of docs/detection.md


def test_train_speedup_is_after_over_before_and_none_without_both(bench_detection):
    bench = bench_detection
    rows = {bench.SPEED_BEFORE_ROW: {"variant": "before", "train_images_per_s": 7.5},
            bench.SPEED_AFTER_ROW: {"variant": "after", "train_images_per_s": 14.25}}
    got = bench.train_speedup(rows)
    assert got["speedup"] == 1.9 and got["before"]["train_images_per_s"] == 7.5
    assert got["after"]["variant"] == "after"
    assert bench.train_speedup({bench.SPEED_AFTER_ROW: rows[bench.SPEED_AFTER_ROW]}) is None


def test_inner_split_holds_whole_training_patients_out(bench_detection):
    """bench_detection.inner_split: a seeded share of the training patients, all their slices and
    annotations out of the training document, none of the others'."""
    bench = bench_detection
    images = [{"id": 10 * p + k, "patient_id": f"P{p:02d}"} for p in range(20) for k in range(3)]
    doc = {"images": images, "annotations": [{"id": i, "image_id": im["id"]} for i, im in enumerate(images)],
           "categories": []}
    kept, held = bench.inner_split(doc, 0.25)
    again, held2 = bench.inner_split(doc, 0.25)
    assert held == held2 and kept == again and len(held) == 5
    kept_patients = {im["patient_id"] for im in kept["images"]}
    assert kept_patients.isdisjoint(held) and kept_patients | held == {f"P{p:02d}" for p in range(20)}
    assert len(kept["images"]) == 45
    assert {a["image_id"] for a in kept["annotations"]} == {im["id"] for im in kept["images"]}
    with pytest.raises(ValueError, match="inner split"):
        bench.inner_split(doc, 0.01)
