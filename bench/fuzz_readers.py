"""Fuzz the readers of user input with a seeded mutation loop; print cases tried and failures.

    python bench/fuzz_readers.py --cases 20000 --seed 1      (make fuzz)

Targets: the shard reader (``tarread.read_tar``), the ``.npy`` parser (``npy.load_npy``), a
sample's members through decode and cook (``decode.decode_sample`` + ``cookers.cook_event``),
``index.json`` (``index.read_index``), ``events.jsonl`` (``data_tools.events.read_events``) and
LeRobot metadata (``read_info``, v2.1 ``read_jsonl``). Each case starts from a valid input and
applies random mutations: truncation, bit flips, overwritten, inserted, deleted or repeated
spans, bad UTF-8, and structured ones (huge declared sizes in a tar or .npy header, wrong dtypes
and shapes, NaN/inf, missing and extra keys, wrong JSON types).

A case passes when the reader either returns exactly what an independent reference reading
gives (numpy's own parser, the tar's member offsets, ``json.loads``), or raises the project's
input error whose message names the file (and the sample). Anything else is a failure: another
exception type (a bare traceback), an error that does not name the file, wrong data, a
``MemoryError`` (the address space is capped a little above the interpreter's own, so a
lying header that makes a reader allocate shows up here), or a hang (``--hang-seconds`` per
case, a guard against endless loops, not a speed goal). The loop is deterministic for a seed:
a failure is reproduced with ``--only TARGET --seed S --start N --cases 1``. Trade-off: random
mutations find shallow faults quickly and deep grammar faults rarely; the structured mutations
aim at the headers where a wrong number does the most harm.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import resource
import signal
import sys
import tarfile
import tempfile
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from data_tools.errors import DataToolsError  # noqa: E402
from data_tools.events import read_events  # noqa: E402
from data_tools.lerobot.base import read_info  # noqa: E402
from data_tools.lerobot.v21 import read_jsonl  # noqa: E402
from wallwm_pretrain.config import CaptionDropConfig, DataConfig  # noqa: E402
from wallwm_pretrain.data.cookers import Normalizer, cook_event  # noqa: E402
from wallwm_pretrain.data.decode import decode_sample  # noqa: E402
from wallwm_pretrain.data.errors import InputError  # noqa: E402
from wallwm_pretrain.data.index import read_index  # noqa: E402
from wallwm_pretrain.data.npy import load_npy  # noqa: E402
from wallwm_pretrain.data.tarread import read_tar  # noqa: E402


class Wrong(Exception):
    """The reader gave an answer the reference does not (silently wrong data)."""


# -- byte mutations ---------------------------------------------------------------------------
def _span(rng: random.Random, n: int) -> tuple[int, int]:
    a = rng.randrange(n + 1)
    return a, min(n, a + rng.choice([1, 2, 4, 8, 64, 512]))


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One to three random edits of ``data``."""
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 3])):
        op = rng.randrange(8)
        n = len(out)
        if op == 0 and n:
            del out[rng.randrange(n):]  # truncate
        elif op == 1 and n:
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(n)
                out[i] ^= 1 << rng.randrange(8)
        elif op == 2 and n:
            a, b = _span(rng, n)
            out[a:b] = bytes(rng.randrange(256) for _ in range(b - a))
        elif op == 3:
            i = rng.randrange(n + 1)
            out[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 17, 512])))
        elif op == 4 and n:
            a, b = _span(rng, n)
            del out[a:b]
        elif op == 5 and n:
            a, b = _span(rng, n)
            out[b:b] = out[a:b]
        elif op == 6:
            i = rng.randrange(n + 1)
            out[i:i] = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\x00", b"\r\n", b"\x80\x80"])
        elif op == 7 and n:
            i = rng.randrange(n)
            out[i] = rng.choice(b"0123456789\"{}[],:-eE.")
    return bytes(out)


# -- targets ----------------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    case: Callable[[random.Random, Path], str]  # accepted/refused/skipped; raises on a failure


@dataclass
class Report:
    tried: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)  # target -> outcome -> cases
    failures: list[str] = field(default_factory=list)


def expect_input_error(exc: BaseException, names: list[str]) -> None:
    """``exc`` must be the project's input error naming every string of ``names``."""
    if not isinstance(exc, (InputError, DataToolsError)):
        raise exc
    text = str(exc)
    missing = [n for n in names if n not in text]
    if missing:
        raise Wrong(f"{type(exc).__name__} does not name {missing}: {text[:200]}")


def npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.zeros((2, 2, 4, 4, 3), np.uint8),
    np.float32(1.5).reshape(()),
    np.arange(5, dtype=">i8"),
    np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    np.zeros((0, 4), np.float32),
]


def lying_npy(rng: random.Random) -> bytes:
    """A valid array whose header declares another shape or dtype (same header length)."""
    data = bytearray(npy_bytes(rng.choice(ARRAYS[:2])))
    header_end = data.index(b"\n")
    header = data[10:header_end].decode("latin-1")
    if rng.random() < 0.5:
        start = header.index("(") + 1
        digits = rng.choice(["9999999999", "4611686018427387904", "0", "1, 1, 1", "3, 0"])
        header = header[:start] + digits + header[header.index(")"):]
    else:
        header = header.replace(header.split("'descr': '")[1].split("'")[0], rng.choice(["<f8", "|O", "<V0", "<U9", "|b1"]))
    header = header.ljust(header_end - 10)[: max(header_end - 10, len(header))]
    new = bytes(data[:8]) + len(header.encode("latin-1") + b"\n").to_bytes(2, "little") + header.encode("latin-1") + b"\n"
    return new + bytes(data[header_end + 1:])


def case_npy(rng: random.Random, tmp: Path) -> None:
    if rng.random() < 0.25:
        data = lying_npy(rng)
    else:
        data = mutate_bytes(npy_bytes(rng.choice(ARRAYS)), rng)
    try:
        got = load_npy(data)
    except InputError:
        return "refused"  # a clean refusal: the caller names the file, sample and key
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's note on Python-2 headers
            want = np.load(io.BytesIO(data), allow_pickle=False)  # the reference; bounded: ours accepted
    except Exception as exc:
        raise Wrong(f"load_npy accepted bytes numpy refuses ({type(exc).__name__}: {exc})") from None
    if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
        raise Wrong(f"load_npy gave {got.dtype}{got.shape}, numpy {want.dtype}{want.shape}")
    return "accepted"


def make_tar(rng: random.Random) -> tuple[bytes, list[tuple[str, str, int, int]]]:
    """A tar of 3 samples and its members as (key, ext, offset_data, size)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for k in range(3):
            for ext, payload in (("json", json.dumps({"caption": f"reach {k}"}).encode()),
                                 ("actions.npy", npy_bytes(np.full((k + 2, 3), k, np.float32)))):
                info = tarfile.TarInfo(f"ep{k:03d}_L1_000.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = [(m.name.split(".", 1)[0], m.name.split(".", 1)[1], m.offset_data, m.size) for m in tar]
    return data, members


def lying_tar(data: bytes, rng: random.Random) -> bytes:
    """A member header declaring a huge or wrong size, with a correct checksum."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        victim = rng.choice(tar.getmembers())
    out = bytearray(data)
    head = victim.offset
    size = rng.choice([8**11 - 1, 2**33, victim.size + 512, victim.size + 1, max(0, victim.size - 1)])
    out[head + 124: head + 136] = f"{size:011o}".encode()[-11:].rjust(11, b"0") + b"\0"
    out[head + 148: head + 156] = b" " * 8
    out[head + 148: head + 156] = f"{sum(out[head: head + 512]):06o}".encode() + b"\0 "
    return bytes(out)


_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")


def _octal(field: bytes) -> int | None:
    try:
        return int(field.split(b"\0")[0].strip() or b"0", 8)
    except ValueError:
        return None


def reference_members(data: bytes) -> list[tuple[str, str, bytes]] | str | None:
    """An independent walk over ustar headers: (key, ext, payload) of each member; None for a
    damaged archive; "skip" for member types this walk does not model."""
    out, pos = [], 0
    while True:
        block = data[pos: pos + 512]
        if len(block) < 512:
            return None
        if block == bytes(512):
            return out
        chk, size = _octal(block[148:156]), _octal(block[124:136])
        unsigned = sum(block[:148]) + 256 + sum(block[156:])
        signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
        if chk not in (unsigned, signed) or size is None or block[124] & 0x80:
            return None if block[124] & 0x80 == 0 else "skip"
        name = block[:100].split(b"\0")[0]
        if block[257:263] == b"ustar\0" and block[345:500].strip(b"\0"):
            name = block[345:500].split(b"\0")[0] + b"/" + name
        kind = block[156:157]
        if kind not in (b"0", b"\0", b"7") or name.endswith(b"/"):
            return "skip"
        start = pos + 512
        if start + size > len(data):
            return None
        match = _KEY_EXT.match(name.decode("utf-8", "surrogateescape"))
        if match:
            out.append((match[1], match[2].lower(), data[start: start + size]))
        pos = start + -(-size // 512) * 512


def case_tar(rng: random.Random, tmp: Path) -> None:
    data, members = make_tar(rng)
    mutated = lying_tar(data, rng) if rng.random() < 0.2 else mutate_bytes(data, rng)
    path = tmp / "shard-000000.tar"
    path.write_bytes(mutated)
    reference = reference_members(mutated)
    try:
        samples = list(read_tar(str(path)))
    except InputError as exc:
        expect_input_error(exc, [str(path)])
        return "refused"
    if reference is None:
        raise Wrong("read_tar accepted a tar whose headers are damaged or run past its end")
    if reference == "skip":
        return "skipped"
    want: dict[str, dict[str, bytes]] = {}
    for key, ext, payload in reference:
        want.setdefault(key, {})[ext] = payload
    got = {s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")} for s in samples}
    if list(got) != list(want) or got != want:
        raise Wrong(f"read_tar returned {[(k, sorted(v)) for k, v in got.items()]}, the headers say "
                    f"{[(k, sorted(v)) for k, v in want.items()]}")
    return "accepted"


CLEAN_T = 6


def clean_sample() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    meta = {"episode_id": 0, "event_index": 0, "level": "L1", "caption": "reach for the cube",
            "next_caption": "grasp it", "task": "stack", "start": 0, "end": CLEAN_T, "fps": 10,
            "vl_cluster": 0, "action_cluster": 0}
    states = rng.normal(size=(CLEAN_T, 3)).astype(np.float32)
    return {"__key__": "ep000000_L1_000", "__url__": "/data/shard-000007.tar",
            "json": json.dumps(meta).encode(),
            "actions.npy": npy_bytes(rng.normal(size=(CLEAN_T, 2)).astype(np.float32)),
            "state.npy": npy_bytes(states[0]), "states.npy": npy_bytes(states),
            "frames.npy": npy_bytes(rng.integers(0, 256, (CLEAN_T, 1, 4, 4, 3), dtype=np.uint8))}


SAMPLE_CFG = DataConfig(max_frames=8, caption_drop=CaptionDropConfig(rho_min=0.0, rho_max=0.0, l_min=1, l_max=2))


def reference_cook(crude: dict) -> Any:
    """The sample decoded by numpy and json themselves, then cooked."""
    decoded = dict(crude)
    for k, v in crude.items():
        if k.endswith(".npy"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy's note on Python-2 headers
                decoded[k] = np.load(io.BytesIO(v), allow_pickle=False)
    decoded["json"] = json.loads(crude["json"].decode("utf-8-sig")) if "json" in crude else None
    if decoded["json"] is None:
        del decoded["json"]
    return cook_event(decoded, SAMPLE_CFG, 32, Normalizer(), epoch=0)


def structured_sample(crude: dict, rng: random.Random) -> dict:
    op = rng.randrange(7)
    meta = json.loads(crude["json"])
    if op == 0:
        crude.pop(rng.choice([k for k in crude if not k.startswith("__")]))
    elif op == 1:
        crude["extra.npy" if rng.random() < 0.5 else "notes.txt"] = b"\x00\xff anything"
    elif op == 2:
        k = rng.choice(["actions.npy", "states.npy", "state.npy"])
        arr = np.load(io.BytesIO(crude[k])).copy()
        arr.flat[rng.randrange(arr.size)] = rng.choice([np.nan, np.inf, -np.inf])
        crude[k] = npy_bytes(arr)
    elif op == 3:
        k = rng.choice(["actions.npy", "frames.npy", "states.npy"])
        arr = np.load(io.BytesIO(crude[k]))
        crude[k] = npy_bytes(rng.choice([arr.astype(np.float64), arr[:-1], arr.reshape(-1), arr[None]]))
    elif op == 4:
        meta[rng.choice(list(meta))] = rng.choice([None, 3, "x", [], {}, 1e308, True])
        crude["json"] = json.dumps(meta).encode()
    elif op == 5:
        meta.pop(rng.choice(list(meta)))
        crude["json"] = json.dumps(meta).encode()
    else:
        crude["json"] = rng.choice([b"[]", b"\"caption\"", b"{\"caption\": NaN}", b"\xef\xbb\xbf" + crude["json"],
                                    b"[" * 100_000, crude["json"][:-1], crude["json"].replace(b"reach", b"r\xe9ach")])
    return crude


def case_sample(rng: random.Random, tmp: Path) -> None:
    crude = clean_sample()
    if rng.random() < 0.5:
        crude = structured_sample(crude, rng)
    else:
        k = rng.choice([k for k in crude if not k.startswith("__")])
        crude[k] = mutate_bytes(crude[k], rng)
    try:
        got = cook_event(decode_sample(crude), SAMPLE_CFG, 32, Normalizer(), epoch=0)
    except InputError as exc:
        expect_input_error(exc, [crude["__url__"], crude["__key__"]])
        return "refused"
    try:
        want = reference_cook(crude)
    except Exception as exc:
        raise Wrong(f"cooked a sample the reference cannot read ({type(exc).__name__}: {exc})"[:300]) from None
    for a, b in zip(got, want):
        same = (a.key == b.key and a.remaining == b.remaining and np.array_equal(a.caption, b.caption)
                and all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("frames", "actions", "state")))
        if not same or len(got) != len(want):
            raise Wrong("cooked sample differs from the reference")
    return "accepted"


def valid_index() -> dict:
    return {"format_version": 1, "level": "L1", "action_dim": 2, "state_dim": 3, "image_size": 4, "fps": 10,
            "views": ["cam"], "total_samples": 3,
            "shards": [{"name": "shard-000000.tar", "samples": 3, "bytes": 10240, "sha256": "a" * 64}],
            "stats": {"action": {"mean": [0.0, 1.0], "std": [1.0, 2.0]}, "state": {"mean": [0, 0, 0], "std": [1, 1, 1]}},
            "vl_cluster_counts": {"0": 3}, "action_cluster_counts": {"0": 2, "1": 1}}


def mutate_json(obj: Any, rng: random.Random) -> Any:
    """Drop, retype or blow up one value somewhere in ``obj``."""
    if isinstance(obj, dict) and obj and rng.random() < 0.7:
        k = rng.choice(list(obj))
        if rng.random() < 0.3:
            return {kk: v for kk, v in obj.items() if kk != k}
        return {**obj, k: mutate_json(obj[k], rng)}
    if isinstance(obj, list) and obj and rng.random() < 0.7:
        i = rng.randrange(len(obj))
        return obj[:i] + [mutate_json(obj[i], rng)] + obj[i + 1:]
    return rng.choice([None, -1, 0, 2**70, 1.5, "x", "../etc", [], {}, True, "a" * 10_000, float("nan")])


def case_index(rng: random.Random, tmp: Path) -> None:
    folder = tmp / "shards"
    folder.mkdir(exist_ok=True)
    (folder / "shard-000000.tar").write_bytes(b"\0" * 10240)
    index = valid_index()
    if rng.random() < 0.5:
        text = json.dumps(mutate_json(index, rng)).encode()
    else:
        text = mutate_bytes(json.dumps(index, indent=1).encode(), rng)
    (folder / "index.json").write_bytes(text)
    try:
        got = read_index(folder)
    except InputError as exc:
        expect_input_error(exc, [str(folder)])
        return "refused"
    want = json.loads(text.decode("utf-8-sig"))
    if got != want:
        raise Wrong("read_index returned something other than the file's JSON")
    Normalizer.from_index(got)  # what the loader does next must not fail either
    return "accepted"


EVENTS = [
    {"episode_index": 0, "level": "L3", "index": 0, "start": 0, "end": 40, "caption": "stack the cups"},
    {"episode_index": 0, "level": "L1", "index": 0, "start": 0, "end": 12, "caption": "greif die Tasse (ä)"},
    {"episode_index": 0, "level": "L1", "index": 1, "start": 12, "end": 30, "caption": "lift", "parent": None},
]


def case_events(rng: random.Random, tmp: Path) -> None:
    rows = [dict(r) for r in EVENTS]
    if rng.random() < 0.5:
        rows[rng.randrange(len(rows))] = mutate_json(rows[rng.randrange(len(rows))], rng)
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode()
    else:
        newline = rng.choice(["\n", "\r\n"])
        text = mutate_bytes(newline.join(json.dumps(r, ensure_ascii=False) for r in rows).encode(), rng)
    path = tmp / "events.jsonl"
    path.write_bytes(text)
    try:
        got = read_events(path)
    except DataToolsError as exc:
        expect_input_error(exc, [str(path)])
        return "refused"
    lines = [ln for ln in text.decode("utf-8-sig").replace("\r\n", "\n").split("\n") if ln.strip()]
    want = [json.loads(ln) for ln in lines]
    fields = ("episode_index", "level", "index", "start", "end", "caption")
    if len(got) != len(want) or any(getattr(e, f) != w[f] for e, w in zip(got, want) for f in fields):
        raise Wrong("read_events returned events other than the file's lines")
    return "accepted"


def case_lerobot(rng: random.Random, tmp: Path) -> None:
    meta = tmp / "meta"
    meta.mkdir(exist_ok=True)
    if rng.random() < 0.5:
        info = {"fps": 30, "features": {"action": {"dtype": "float32", "shape": [7]}},
                "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"}
        text = (json.dumps(mutate_json(info, rng)) if rng.random() < 0.5 else json.dumps(info, indent=2)).encode()
        text = mutate_bytes(text, rng) if rng.random() < 0.6 else text
        (meta / "info.json").write_bytes(text)
        try:
            got = read_info(tmp)
        except DataToolsError as exc:
            expect_input_error(exc, [str(meta / "info.json")])
            return "refused"
        if got != json.loads(text.decode("utf-8-sig")):
            raise Wrong("read_info returned something other than the file's JSON")
        return "accepted"
    rows = [{"episode_index": i, "length": 10 + i, "tasks": ["stack"]} for i in range(3)]
    text = mutate_bytes("\n".join(json.dumps(r) for r in rows).encode(), rng)
    path = meta / "episodes.jsonl"
    path.write_bytes(text)
    try:
        got = read_jsonl(path, ("episode_index", "length"))
    except DataToolsError as exc:
        expect_input_error(exc, [str(path)])
        return "refused"
    want = [json.loads(ln) for ln in text.decode("utf-8-sig").replace("\r\n", "\n").split("\n") if ln.strip()]
    if got != want:
        raise Wrong("read_jsonl returned rows other than the file's lines")
    return "accepted"


TARGETS = [Target("npy", case_npy), Target("tar", case_tar), Target("sample", case_sample),
           Target("index", case_index), Target("events", case_events), Target("lerobot", case_lerobot)]


# -- the loop ---------------------------------------------------------------------------------
class Hang(Exception):
    pass


def _cap_address_space(headroom: int) -> None:
    """Let the process grow at most ``headroom`` bytes beyond what it maps now."""
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, hard))


def run(cases: int, seed: int, only: list[str] | None = None, start: int = 0,
        hang_seconds: int = 0, headroom: int = 1 << 30) -> Report:
    """``cases`` cases per target from ``seed``; failures are described, not raised."""
    report = Report()
    if headroom:
        _cap_address_space(headroom)
    if hang_seconds:
        signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(Hang()))
    for target in TARGETS:
        if only and target.name not in only:
            continue
        report.tried[target.name] = 0
        outcomes = report.outcomes.setdefault(target.name, {"accepted": 0, "refused": 0, "skipped": 0})
        with tempfile.TemporaryDirectory() as tmp:
            for n in range(start, start + cases):
                rng = random.Random(f"{seed}:{target.name}:{n}")
                report.tried[target.name] += 1
                if hang_seconds:
                    signal.alarm(hang_seconds)
                try:
                    outcomes[target.case(rng, Path(tmp))] += 1
                except Hang:
                    report.failures.append(f"{target.name} seed {seed} case {n}: no answer in {hang_seconds} s")
                except Exception as exc:  # noqa: BLE001 - every escape is a finding
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    report.failures.append(
                        f"{target.name} seed {seed} case {n}: {type(exc).__name__}: {str(exc)[:200]} "
                        f"(at {Path(where.filename).name}:{where.lineno})"
                    )
                finally:
                    if hang_seconds:
                        signal.alarm(0)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20_000, help="cases per target")
    parser.add_argument("--seed", type=int, default=1, help="seed of the mutation loop")
    parser.add_argument("--start", type=int, default=0, help="first case number (to replay one case)")
    parser.add_argument("--only", nargs="*", choices=[t.name for t in TARGETS], help="targets to run (default all)")
    parser.add_argument("--hang-seconds", type=int, default=30, help="a case without an answer by then is a hang")
    args = parser.parse_args(argv)
    report = run(args.cases, args.seed, args.only, args.start, args.hang_seconds)
    print(f"{'target':<10} {'cases':>8} {'accepted':>9} {'refused':>8} {'unmodelled':>10}")
    for name, n in report.tried.items():
        o = report.outcomes[name]
        print(f"{name:<10} {n:>8} {o['accepted']:>9} {o['refused']:>8} {o['skipped']:>10}")
    print(f"{'total':<10} {sum(report.tried.values()):>8}   failures {len(report.failures)}")
    for line in report.failures[:50]:
        print("  " + line)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
