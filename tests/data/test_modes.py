"""The data-mode registry (``wallwm_pretrain.data.modes``): one entry per ``data.mode``, and
what each mode decides (shard kinds, horizon, history, batch type, batching)."""

from __future__ import annotations

import pytest

from wallwm_pretrain.batch import Batch, ConditionerBatch
from wallwm_pretrain.config import DATA_MODES, ConfigError, DataConfig
from wallwm_pretrain.data.modes import MODES, check_shard_kind, mode_of


def test_the_registry_holds_every_mode_the_config_accepts():
    assert tuple(MODES) == DATA_MODES
    assert all(MODES[name].name == name for name in DATA_MODES)
    assert mode_of("".join(["uni", "fied"])) is MODES["unified"]  # equal strings, as a config file gives them
    with pytest.raises(ConfigError, match="data.mode must be one of event, chunk, conditioner, unified"):
        mode_of("events")


def test_horizon_history_and_batch_type_per_mode():
    cfg = DataConfig(max_frames=48, chunk_horizon=16, history_latents=3)
    assert {n: m.horizon(cfg) for n, m in MODES.items()} == {"event": 48, "chunk": 16, "conditioner": 16, "unified": 16}
    assert {n: m.history(cfg) for n, m in MODES.items()} == {"event": 0, "chunk": 0, "conditioner": 0, "unified": 3}
    assert {n: m.batch_type for n, m in MODES.items()} == {
        "event": Batch, "chunk": Batch, "conditioner": ConditionerBatch, "unified": Batch}
    assert {n for n, m in MODES.items() if m.shares_towers} == {"event", "unified"}
    assert {n for n, m in MODES.items() if m.balances_windows} == {"unified"}


READS = {"event": {"event"}, "chunk": {"event", "episode"}, "conditioner": {"conditioner"}, "unified": {"episode"}}


@pytest.mark.parametrize("mode", DATA_MODES)
@pytest.mark.parametrize("kind", ["event", "episode", "conditioner"])
def test_a_mode_reads_its_shard_kinds_and_names_the_fix_for_the_others(mode, kind):
    index = {} if kind == "event" else {"kind": kind}
    if kind in READS[mode]:
        check_shard_kind("F", index, mode)
        return
    with pytest.raises(ConfigError) as exc:
        check_shard_kind("F", index, mode)
    msg = str(exc.value)
    assert msg.startswith(f"data.mode={mode} but F holds {kind} shards (F/index.json ")
    want = {"event": "set data.mode=event (or chunk)", "episode": "set data.mode=unified (or chunk)",
            "conditioner": "set data.mode=conditioner"}[kind]
    assert want in msg
    assert {"conditioner": "build-conditioner --src F", "unified": "build-episodes --shards F",
            "event": "point data.shards at event shards", "chunk": "event or episode shards"}[mode] in msg


def test_an_unknown_shard_kind_names_only_the_fix():
    with pytest.raises(ConfigError, match=r"holds latent shards \(F/index.json says \"kind\": \"latent\"\): point data"):
        check_shard_kind("F", {"kind": "latent"}, "event")
