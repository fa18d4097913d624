"""`make demo` writes the synthetic cohort while torch installs: `npc-msom synth` must not import it."""
import subprocess
import sys
import textwrap


def test_synth_runs_without_torch(tmp_path):
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("torch", "torchvision"):
                    raise ImportError("torch is not installed yet")
        sys.meta_path.insert(0, Block())
        from npc_msom.cli import main
        code = main(["synth", "--out", {str(tmp_path / "cohort")!r}, "--set", "synth.patients=2"])
        assert not any(m.split(".")[0] == "torch" for m in sys.modules)
        sys.exit(code)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list((tmp_path / "cohort" / "dicom").iterdir())) == 2
