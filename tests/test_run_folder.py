"""The run folder's config history, and the CLI's --force for stage 1."""
import yaml

from npc_msom import pipeline
from npc_msom.cli import build_parser, main
from npc_msom.config import dump_config, load_config


def test_every_start_keeps_its_config_and_never_overwrites(tmp_path):
    first, second = load_config(None, ["seed=1"]), load_config(None, ["seed=2"])
    pipeline.start_run(first, tmp_path)
    pipeline.start_run(second, tmp_path)
    pipeline.start_run(second, tmp_path)  # same second, same text: still a file of its own
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seed"] == 2  # the latest
    history = sorted((tmp_path / "config_history").iterdir())
    assert [p.suffix for p in history] == [".yaml"] * 3
    assert [yaml.safe_load(p.read_text())["seed"] for p in history] == [1, 2, 2]
    assert history[0].read_text() == dump_config(first)
    assert not list((tmp_path / "config_history").glob(".*"))  # no temporary file left behind


def test_force_reaches_stage_one(capsys):
    args = build_parser().parse_args(["train-detector", "--run", "r", "--sequence", "T2WI", "--resume", "--force"])
    assert args.force and args.resume
    assert build_parser().parse_args(["preprocess", "--cohort", "c", "--out", "o", "--force"]).force
    assert main(["run", "--cohort", "c", "--out", "o", "--force", "detectoin"]) == 2
    assert "unknown stage(s) ['detectoin']" in capsys.readouterr().err
