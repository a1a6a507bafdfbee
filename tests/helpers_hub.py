"""A local Hugging Face hub cache, built the way huggingface_hub lays one out, for offline tests.

``HF_HOME/hub/models--OWNER--NAME/`` holds ``blobs/<sha256>`` (the files), ``snapshots/<commit>/<file>``
(relative links to the blobs) and ``refs/main`` (the commit): what ``hf_hub_download`` finds with
``HF_HUB_OFFLINE=1``. ``timm_repo_files`` writes a repository's files as timm itself pushes them
(``timm.models._hub.save_for_hf``: model.safetensors and config.json).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch


def add_to_hub_cache(hf_home: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Put ``files`` (name in the repository -> file on disk) into ``hf_home``'s hub cache as ``repo_id``;
    returns the snapshot folder."""
    repo = Path(hf_home) / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        data = Path(path).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def timm_repo_files(model: torch.nn.Module, folder: Path, bin_only: bool = False) -> dict[str, Path]:
    """``model`` (a timm model) saved as timm pushes it to the hub: model.safetensors (or, with
    ``bin_only``, pytorch_model.bin) and config.json."""
    from timm.models._hub import save_for_hf

    save_for_hf(model, str(folder), safe_serialization=not bin_only)
    names = ["config.json", "pytorch_model.bin" if bin_only else "model.safetensors"]
    return {name: Path(folder) / name for name in names}


def offline_hub(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> dict[str, str]:
    """Point huggingface_hub at ``hf_home`` with HF_HUB_OFFLINE=1, in this process (its constants are
    read at import) and for child processes (the returned environment)."""
    from huggingface_hub import constants

    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(Path(hf_home) / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return {**os.environ, **env}
