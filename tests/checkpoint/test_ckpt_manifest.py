"""The checkpoint manifest on its own: what each layout writes, and every way read_manifest and
verify_hashes refuse a folder that is not a complete checkpoint of a format this code reads.
The version numbers are literal: they are the on-disk contract (gathered = 1, sharded = 2)."""

from __future__ import annotations

import json

import pytest

from wallwm_pretrain.checkpoint import CheckpointError
from wallwm_pretrain.checkpoint.manifest import (
    MANIFEST, read_manifest, sync_and_digest, verify_hashes, write_manifest,
)


def _folder(tmp_path, layout="gathered"):
    folder = tmp_path / "step"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights" * 10)
    (folder / "trainer.json").write_text("{}")
    files = {p.name: sync_and_digest(p) for p in sorted(folder.iterdir())}
    write_manifest(folder, 7, files, layout=layout)
    return folder


def _rewrite(folder, **changes):
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest.update(changes)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_each_layout_writes_its_version(tmp_path):
    gathered = json.loads((_folder(tmp_path / "g") / MANIFEST).read_text())
    assert gathered["format_version"] == 1 and "layout" not in gathered and gathered["step"] == 7
    sharded = json.loads((_folder(tmp_path / "s", "sharded") / MANIFEST).read_text())
    assert sharded["format_version"] == 2 and sharded["layout"] == "sharded"
    assert read_manifest(_folder(tmp_path / "r", "sharded"))["layout"] == "sharded"


@pytest.mark.parametrize("version, ok", [(1, True), (2, True), (3, False), (10, False)])
def test_versions_up_to_the_current_one_are_read(tmp_path, version, ok):
    folder = _folder(tmp_path)
    _rewrite(folder, format_version=version)
    if ok:
        assert read_manifest(folder)["format_version"] == version
    else:
        with pytest.raises(CheckpointError, match=f"format_version {version} is newer"):
            read_manifest(folder)


@pytest.mark.parametrize("changes", [
    {"format": "another-format"}, {"format": "zz-format"}, {"step": "7"}, {"step": 7.0}, {"step": True},
    {"files": ["model.safetensors"]},
], ids=["format-before", "format-after", "step-str", "step-float", "step-bool", "files-list"])
def test_each_malformed_field_alone_is_refused(tmp_path, changes):
    folder = _folder(tmp_path)
    _rewrite(folder, **changes)
    with pytest.raises(CheckpointError, match="malformed manifest"):
        read_manifest(folder)


@pytest.mark.parametrize("text", [b"{not json", b'{"format": "x"}', b"[1, 2]", b"\xff\xfe\x00{"],
                         ids=["json", "missing-keys", "not-an-object", "not-utf8"])
def test_unreadable_manifests_are_refused(tmp_path, text):
    folder = _folder(tmp_path)
    (folder / MANIFEST).write_bytes(text)
    with pytest.raises(CheckpointError, match="malformed manifest"):
        read_manifest(folder)


def test_required_files_and_sizes(tmp_path):
    folder = _folder(tmp_path)
    assert read_manifest(folder, required=("model.safetensors", "trainer.json"))
    with pytest.raises(CheckpointError, match="does not list required file 'optimizer.safetensors'"):
        read_manifest(folder, required=("model.safetensors", "optimizer.safetensors"))
    (folder / "model.safetensors").write_bytes(b"weights" * 11)  # longer
    with pytest.raises(CheckpointError, match="size 77 bytes, manifest says 70"):
        read_manifest(folder)
    (folder / "model.safetensors").write_bytes(b"weights" * 9)  # shorter
    with pytest.raises(CheckpointError, match="size 63 bytes, manifest says 70"):
        read_manifest(folder)


@pytest.mark.parametrize("listed", ["0" * 64, "f" * 64])
def test_a_checksum_on_either_side_of_the_real_one_is_refused(tmp_path, listed):
    folder = _folder(tmp_path)
    manifest = read_manifest(folder)
    verify_hashes(folder, manifest)
    manifest["files"]["trainer.json"]["sha256"] = listed
    with pytest.raises(CheckpointError, match="trainer.json: sha256 mismatch"):
        verify_hashes(folder, manifest)
