"""The `python -m data_tools` command line: verbs, help texts, exit codes, a full run."""

from __future__ import annotations

import argparse
import json

import pytest

from data_tools.__main__ import build_parser, main

VERBS = ["synth", "events", "validate", "sync", "cluster", "build-shards", "build-conditioner",
         "build-episodes", "cluster-windows",
         "encode-latents", "embed-captions", "inspect"]


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_top_level_help_lists_the_verbs(dt_cli):
    proc = dt_cli("--help")
    assert proc.returncode == 0
    for verb in VERBS:
        assert verb in proc.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_has_help_with_example(dt_cli, verb):
    proc = dt_cli(verb, "--help")
    assert proc.returncode == 0
    assert "example:" in proc.stdout and f"python -m data_tools {verb}" in proc.stdout


def test_every_flag_documents_itself():
    subs = _subparsers(build_parser())
    listed = [v for v in subs if v in VERBS]
    assert listed == VERBS and subs["stats"] is subs["inspect"]  # stats: alias of inspect
    for verb, parser in subs.items():
        for action in parser._actions:
            assert action.help and action.help.strip(), f"{verb} {action.option_strings} has no help"


def test_usage_errors_exit_2_and_input_errors_exit_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", str(tmp_path / "x"), "--episodes", "2", "--seed", "0",
              "--regrasp-prob", "1.5"])
    assert exc.value.code == 2
    code = main(["build-shards", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert code == 1
    assert "info.json not found" in capsys.readouterr().err


def test_synth_then_build_shards_end_to_end(dt_cli, tmp_path):
    src, out = tmp_path / "synth", tmp_path / "shards"
    proc = dt_cli("synth", "--out", src, "--episodes", "3", "--seed", "4", "--regrasp-prob", "1",
                  "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "3 episodes" in proc.stdout and "(3 regrasp)" in proc.stdout
    proc = dt_cli("build-shards", "--src", src, "--out", out, "--level", "L1", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["total_samples"] > 3 * 6 and (out / "shard-000000.tar").is_file()
    # each listed shard holds the samples and bytes the index says (read with tarfile/hashlib)
    import hashlib
    import tarfile

    assert sum(s["samples"] for s in index["shards"]) == index["total_samples"]
    for shard in index["shards"]:
        tar = out / shard["name"]
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == shard["sha256"], shard["name"]
        with tarfile.open(tar) as t:
            metas = [json.load(t.extractfile(m)) for m in t.getmembers() if m.name.endswith(".json")]
        assert len(metas) == shard["samples"] and all(m["level"] == "L1" for m in metas)
    # Re-running into the same folders replaces them (make smoke-data runs twice).
    assert dt_cli("synth", "--out", src, "--episodes", "2", "--seed", "4", "--quiet").returncode == 0
    assert json.loads((src / "meta/info.json").read_text())["total_episodes"] == 2
