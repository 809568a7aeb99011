"""jsae.host_memory: with glibc keeping freed memory, a repeated XLA computation stops
page-faulting its buffers in afresh; with glibc's defaults it faults them in on every call."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from jsae import host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

PROBE = r"""
import json, resource
import jsae  # applies the allocator settings, or not
import jax, jax.numpy as jnp
from jsae import host_memory
w = jnp.ones((512, 8192), jnp.float32)
x = jnp.ones((2048, 512), jnp.float32)
f = jax.jit(lambda x, w: x @ w)  # a fresh [2048, 8192] output buffer per call: 64 MiB
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# the fewest of any call after the first: the heap may still grow now and then while it settles
print(json.dumps({"applied": host_memory.applied, "faults": min(faults[1:])}))
"""


def _probe(setting: str) -> dict:
    env = {**os.environ, "JSAE_HOST_MALLOC": setting, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="configures glibc's malloc")
def test_freed_host_memory_is_reused_without_page_faults() -> None:
    on, off = _probe("1"), _probe("0")
    assert on["applied"] and not off["applied"]
    pages = 2048 * 8192 * 4 // 4096  # the output's 4 KiB pages
    assert off["faults"] > pages / 2, off  # glibc's defaults map it afresh on every call
    assert on["faults"] < pages / 20, on  # kept in the heap and reused (once it has settled)


def test_applies_only_where_jax_runs_on_cpu(monkeypatch) -> None:
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert not host_memory.accelerator_expected()
    for platforms in ("cuda", "tpu", "cpu,cuda", "rocm"):
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
        assert host_memory.accelerator_expected(), platforms
    monkeypatch.delenv("JSAE_HOST_MALLOC", raising=False)
    assert not host_memory.keep_freed_memory()  # an accelerator is expected: left alone
    monkeypatch.setenv("JSAE_HOST_MALLOC", "0")
    assert not host_memory.keep_freed_memory(force=True)  # the user's "0" wins
