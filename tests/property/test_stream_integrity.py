"""Stream integrity through NetStack over impaired links, in virtual time.

Application-side TCP clients (this package's TCP in active mode) and the NetStack's in-memory
upstream exchange seeded random payloads in both directions through ``testing.netsim``; the
bytes each side receives must equal what the other sent, every flow must close, and no run
may hang (virtual time is bounded). 15 impairment scenarios x 20 seeds = 300 runs per CI run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from tun2proxy.stack import StackConfig
from tun2proxy.tcp import TcpConfig
from tun2proxy.testing import Impairment, run_transfer

SEEDS = range(20)


@dataclass(frozen=True)
class Scenario:
    up: Impairment
    down: Impairment
    mtu: int = 1500
    buffers: int = 256 * 1024
    version: int | None = None  # None: alternate by seed
    max_size: int = 120_000


SCENARIOS = {
    "clean": Scenario(Impairment(), Impairment()),
    "loss-1%": Scenario(Impairment(loss=0.01), Impairment(loss=0.01)),
    "loss-5%": Scenario(Impairment(loss=0.05), Impairment(loss=0.05)),
    "loss-10%": Scenario(Impairment(loss=0.10), Impairment(loss=0.10)),
    "reorder-10%": Scenario(Impairment(reorder=0.10), Impairment(reorder=0.10)),
    "reorder-25%-jitter": Scenario(
        Impairment(reorder=0.25, jitter=0.002), Impairment(reorder=0.25, jitter=0.002)
    ),
    "duplicate-5%": Scenario(Impairment(duplicate=0.05), Impairment(duplicate=0.05)),
    "corrupt-2%": Scenario(Impairment(corrupt=0.02), Impairment(corrupt=0.02)),
    "delay-20ms-jitter": Scenario(
        Impairment(delay=0.02, jitter=0.005), Impairment(delay=0.02, jitter=0.005)
    ),
    "asymmetric-loss-20%-up": Scenario(Impairment(loss=0.20), Impairment()),
    "mix": Scenario(
        Impairment(loss=0.03, reorder=0.1, duplicate=0.02, corrupt=0.005, jitter=0.002),
        Impairment(loss=0.03, reorder=0.1, duplicate=0.02, corrupt=0.005, jitter=0.002),
    ),
    "small-mtu-576-loss": Scenario(
        Impairment(loss=0.02), Impairment(loss=0.02), mtu=576, version=4, max_size=40_000
    ),
    "ipv6-mtu-1280-mix": Scenario(
        Impairment(loss=0.02, reorder=0.05), Impairment(loss=0.02, duplicate=0.02),
        mtu=1280, version=6, max_size=60_000,
    ),
    "large-mtu-65535-reorder": Scenario(
        Impairment(reorder=0.1, loss=0.01), Impairment(reorder=0.1, loss=0.01),
        mtu=65535, max_size=600_000,
    ),
    "tiny-buffers-zero-window": Scenario(
        Impairment(loss=0.02), Impairment(loss=0.02), buffers=4096, max_size=60_000
    ),
}

# Generous liveness timeouts: this test is about integrity, and a sender's exponential
# backoff under 10-20 % loss can legitimately idle a half-closed flow for a minute.
_TIMEOUTS = {"half_close_timeout": 900.0, "idle_timeout": 900.0, "max_retries": 15}


def _sizes(rng: random.Random, max_size: int) -> int:
    return rng.choice([0, 1, 1000, rng.randrange(1, max_size + 1), max_size])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_bytes_delivered_equal_bytes_sent(name: str, seed: int) -> None:
    sc = SCENARIOS[name]
    rng = random.Random(f"{name}/{seed}")
    nflows = rng.randint(1, 3)
    up = [rng.randbytes(_sizes(rng, sc.max_size)) for _ in range(nflows)]
    down = [rng.randbytes(_sizes(rng, sc.max_size)) for _ in range(nflows)]
    version = sc.version or (4 if seed % 2 else 6)
    tcp = TcpConfig(recv_buffer=sc.buffers, send_buffer=sc.buffers, **_TIMEOUTS)  # type: ignore[arg-type]
    cfg = StackConfig(isn_secret=b"integrity-secret", mtu=sc.mtu, tcp=tcp)
    res = run_transfer(
        up,
        down,
        impair_up=sc.up,
        impair_down=sc.down,
        seed=seed,
        version=version,
        stack_config=cfg,
        client_config=tcp,
        max_time=1800.0,
        # Start half the runs right at the sequence-number wrap.
        client_iss=(2**32 - 10_001) if seed % 2 == 0 else None,
    )
    detail = f"{name} seed={seed} v{version} sizes={[len(x) for x in up]}/{[len(x) for x in down]}"
    assert res.completed, f"did not finish by t={res.virtual_time:.1f}s: {detail}"
    for i in range(nflows):
        assert res.upstream_received[i] == up[i], f"app->upstream mismatch flow {i}: {detail}"
        assert res.app_received[i] == down[i], f"upstream->app mismatch flow {i}: {detail}"
    assert res.close_reasons == ["closed"] * nflows, detail
    if sc.up.corrupt or sc.down.corrupt:
        # Corrupted packets are caught by checksums, never delivered as data.
        drops = res.stack_stats["drops"]
        assert isinstance(drops, dict)
        assert sum(drops.values()) <= res.pipe_stats["up_corrupted"]
