"""torchvision's ImageNet backbone weights (``detection.weights: imagenet``), never downloaded at run time.

The study's MMDetection config initialises the ResNet-50 from torchvision's ImageNet file
(``torchvision://resnet50``, the IMAGENET1K_V1 weights). We read that same file from the local
torch cache (``torch.hub.get_dir()/checkpoints/``: ``$TORCH_HOME/hub/checkpoints`` when TORCH_HOME
is set, else ``~/.cache/torch/hub/checkpoints``) and check it as torch.hub does (``check_hash``):
the file name ends in the first hex digits of the file's sha256 (``resnet50-0676ba61.pth``).
Only ``npc-msom weights fetch <backbone>`` downloads it, on a machine with network access.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from npc_msom.errors import ConfigError, InputError
from npc_msom.runtime import file_digest

log = logging.getLogger(__name__)

IMAGENET = "imagenet"


def _imagenet_enum(backbone: str):
    """torchvision's ImageNet weights of ``backbone`` (IMAGENET1K_V1, the file MMDetection loads)."""
    from torchvision.models import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights  # noqa: PLC0415
    table = {"resnet18": ResNet18_Weights.IMAGENET1K_V1, "resnet34": ResNet34_Weights.IMAGENET1K_V1,
             "resnet50": ResNet50_Weights.IMAGENET1K_V1}
    if backbone not in table:
        raise ConfigError(f"detection.backbone: no ImageNet weights known for {backbone!r}; "
                          f"expected one of {sorted(table)}")
    return table[backbone]


def imagenet_url(backbone: str) -> str:
    """The URL torchvision publishes for ``backbone``'s ImageNet weights (its name carries the hash)."""
    return _imagenet_enum(backbone).url


def cache_dir() -> Path:
    """Where torch.hub keeps (and torchvision looks for) downloaded weights files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_file(backbone: str) -> Path:
    """The local path of ``backbone``'s ImageNet weights file (whether it exists or not)."""
    return cache_dir() / os.path.basename(urlparse(imagenet_url(backbone)).path)


def hash_prefix(file_name: str) -> str | None:
    """The sha256 prefix in a torch.hub file name (``resnet50-0676ba61.pth`` -> ``0676ba61``)."""
    m = torch.hub.HASH_REGEX.search(file_name)
    return m.group(1) if m and m.group(1) else None


def resolve_imagenet_weights(backbone: str) -> Path:
    """The checked local ImageNet weights file of ``backbone``.

    Raises ConfigError when it is missing, giving the command that fetches it and where to copy it;
    InputError when its sha256 does not start with the published prefix (a partial or other file).
    """
    path = imagenet_file(backbone)
    if not path.is_file():
        raise ConfigError(
            f"detection.weights=imagenet: torchvision's ImageNet {backbone} weights ({path.name}) are not in "
            f"{path.parent}. On a machine with network access run `npc-msom weights fetch {backbone}`, then copy "
            f"{path.name} into {path.parent}/ here (or set TORCH_HOME to a folder holding hub/checkpoints/"
            f"{path.name}). Nothing is downloaded at run time.")
    prefix = hash_prefix(path.name)
    if prefix:
        digest = file_digest(path)
        if not digest.startswith(prefix):
            raise InputError(f"sha256 {digest[:16]}... does not match torchvision's published hash", file=path,
                             expected=f"a sha256 starting with {prefix} ({imagenet_url(backbone)}); delete the file "
                                      f"and fetch it again (npc-msom weights fetch {backbone})")
    return path


def resolve_weights(weights: str, backbone: str) -> Path:
    """``detection.weights`` -> a local file: ``imagenet`` as above, anything else a path as given."""
    return resolve_imagenet_weights(backbone) if weights == IMAGENET else Path(weights)


def fetch_imagenet_weights(backbone: str) -> Path:
    """Downloads ``backbone``'s ImageNet weights into the torch cache, checking the published hash
    (torch.hub's ``check_hash``). Only for ``npc-msom weights fetch``; the pipeline never calls it."""
    url = imagenet_url(backbone)
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.load_state_dict_from_url(url, model_dir=str(folder), map_location="cpu", progress=True,
                                           check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as e:  # no network (URLError is an OSError), or torch.hub's hash check
        raise ConfigError(f"could not fetch {url} into {folder}: {e}; run `npc-msom weights fetch {backbone}` "
                          f"on a machine with network access and copy the file here") from e
    return resolve_imagenet_weights(backbone)
