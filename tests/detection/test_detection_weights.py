"""ImageNet initialisation from the local torch cache (stand-in files in a temporary TORCH_HOME: our
machines cannot fetch the real ones). conv1 on the grey slice: test_detection_model.py."""
import shutil

import pytest
import torch
from torchvision.models import resnet18

import npc_msom.detection.weights as weights
from npc_msom.cli import main
from npc_msom.detection import build_model
from npc_msom.errors import ConfigError, InputError
from npc_msom.runtime import file_digest


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """A ResNet-18 state dict (torchvision's ImageNet file layout, fc included) and its sha256."""
    torch.manual_seed(3)
    sd = resnet18(weights=None).state_dict()
    sd["bn1.running_mean"].uniform_(-1, 1)  # a statistic a fresh network would not have
    path = tmp_path_factory.mktemp("standin") / "resnet18.pth"
    torch.save(sd, path)
    return path, file_digest(path), sd


def _install(standin, torch_home, monkeypatch, prefix=None):
    """Put the stand-in in TORCH_HOME under a torch.hub name, and make it the expected file."""
    path, sha, _ = standin
    name = f"resnet18-{prefix or sha[:8]}.pth"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(weights, "imagenet_url", lambda backbone: f"https://download.pytorch.org/models/{name}")
    target = torch_home / "hub" / "checkpoints" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, target)
    return target


def test_the_real_file_names_and_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    f = weights.imagenet_file("resnet50")
    assert f == tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"  # ResNet50_Weights.IMAGENET1K_V1
    assert weights.hash_prefix(f.name) == "0676ba61" and weights.hash_prefix("mine.pth") is None


def test_missing_file_answered_with_the_fetch_command(tiny_config, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError) as e:
        build_model(tiny_config(backbone="resnet50", weights="imagenet").detection, image_size=64)
    msg = str(e.value)
    assert "npc-msom weights fetch resnet50" in msg and "resnet50-0676ba61.pth" in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg


def test_standin_with_its_hash_loads_backbone_only(standin, tiny_config, monkeypatch, tmp_path):
    _install(standin, tmp_path, monkeypatch)
    model = build_model(tiny_config(weights="imagenet").detection, image_size=64)
    body, sd = model.backbone.body, standin[2]
    for k in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight", "bn1.running_mean"):
        assert torch.equal(body.state_dict()[k], sd[k]), k
    assert not any(k.startswith("fc.") for k in body.state_dict())
    # MMDetection's set-up with loaded weights: frozen statistics, stem and first stage frozen
    assert not body.conv1.weight.requires_grad and body.layer2[0].conv1.weight.requires_grad


def test_wrong_hash_refused(standin, tiny_config, monkeypatch, tmp_path):
    target = _install(standin, tmp_path, monkeypatch, prefix="deadbeef")
    with pytest.raises(InputError) as e:
        build_model(tiny_config(weights="imagenet").detection, image_size=64)
    assert "deadbeef" in str(e.value) and str(target) in str(e.value)


def test_fetch_uses_torch_hub_with_check_hash(standin, monkeypatch, tmp_path, capsys):
    path, sha, _ = standin
    name = f"resnet18-{sha[:8]}.pth"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(weights, "imagenet_url", lambda backbone: f"https://download.pytorch.org/models/{name}")
    calls = []

    def fake_download(url, model_dir=None, check_hash=False, **kw):  # what torch.hub would do, offline
        calls.append((url, model_dir, check_hash))
        shutil.copy(path, f"{model_dir}/{url.rsplit('/', 1)[1]}")
        return {}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    assert main(["weights", "fetch", "resnet18"]) == 0
    assert calls == [(f"https://download.pytorch.org/models/{name}", str(tmp_path / "hub" / "checkpoints"), True)]
    assert str(tmp_path / "hub" / "checkpoints" / name) in capsys.readouterr().out



def test_fetch_without_network_is_a_message_not_a_traceback(monkeypatch, tmp_path, capsys):
    from urllib.error import URLError
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, **kw):
        raise URLError("no route to host")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    assert main(["weights", "fetch", "resnet50"]) == 2
    err = capsys.readouterr().err
    assert "resnet50-0676ba61.pth" in err and "network access" in err and "Traceback" not in err
