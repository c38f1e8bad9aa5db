"""Bad files never hang and never pass silently: a corrupt or truncated video, a truncated
parquet file or a broken metadata line stops the run with an error naming the file, the
episode and the camera or column, in either layout and with worker processes too."""

from __future__ import annotations

import shutil

import pytest

from data_tools.errors import DataToolsError
from data_tools.shards import build_shards


@pytest.fixture
def copy(dt_av1_pair, tmp_path):
    return lambda layout: shutil.copytree(dt_av1_pair[layout], tmp_path / f"bad{layout}")


def _truncate(path, keep=0.5):
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _refused(root, tmp_path, dt_cli, *patterns, workers=1):
    out = tmp_path / "out"
    with pytest.raises(DataToolsError) as err:
        build_shards(root, out, level="L1", workers=workers, progress=False)
    for p in patterns:
        assert p in str(err.value), f"{p!r} not in {err.value}"
    proc = dt_cli("build-shards", "--src", root, "--out", out, "--workers", str(workers), "--quiet")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert all(p in proc.stderr for p in patterns)
    assert not out.exists() and not (tmp_path / ".out.partial").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_garbage_video_v21(copy, tmp_path, dt_cli, workers):
    root = copy("v2.1")
    video = root / "videos/chunk-000/observation.images.overhead/episode_000002.mp4"
    video.write_bytes(b"\x00\x01garbage" * 500)
    _refused(root, tmp_path, dt_cli, "episode 2", "'observation.images.overhead'", str(video),
             "cannot decode", workers=workers)


def test_truncated_video_v3(copy, tmp_path, dt_cli):
    root = copy("v3.0")
    video = root / "videos/observation.images.wrist/chunk-000/file-000.mp4"
    _truncate(video)
    _refused(root, tmp_path, dt_cli, "episode 0", "'observation.images.wrist'", str(video))


def test_truncated_parquet_v3(copy, tmp_path, dt_cli):
    root = copy("v3.0")
    data = root / "data/chunk-000/file-000.parquet"
    _truncate(data, 0.7)
    _refused(root, tmp_path, dt_cli, "episode 0", str(data), "truncated or not parquet")


@pytest.mark.parametrize("workers", [1, 2])
def test_truncated_parquet_v21(copy, tmp_path, dt_cli, workers):
    root = copy("v2.1")
    data = root / "data/chunk-000/episode_000003.parquet"
    _truncate(data, 0.4)
    _refused(root, tmp_path, dt_cli, "episode 3", str(data), workers=workers)


def test_missing_video_file_v21(copy, tmp_path, dt_cli):
    root = copy("v2.1")
    video = root / "videos/chunk-000/observation.images.wrist/episode_000001.mp4"
    video.unlink()
    _refused(root, tmp_path, dt_cli, "episode 1", "'observation.images.wrist'", "not found")


def test_broken_metadata_lines_name_the_line(copy, tmp_path, dt_cli):
    root = copy("v2.1")
    path = root / "meta/episodes.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = '{"episode_index": 2, "tasks": ["x"]'
    path.write_text("\n".join(lines) + "\n")
    _refused(root, tmp_path, dt_cli, "meta/episodes.jsonl:3", "not valid JSON")
    proc = dt_cli("validate", "--src", root)
    assert proc.returncode == 1 and "episodes.jsonl:3" in proc.stderr
