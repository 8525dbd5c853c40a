"""DARE's random drop from a counter-based generator: parallel, and independent of chunking.

Why: mergekit draws DARE's mask with ``torch.bernoulli`` (``rand_like``) from torch's global
generator, which on CPU is one Mersenne Twister, single-threaded and sequential: the k-th draw
needs the k-1 before it, so the mask cannot be computed in parallel pieces, and DARE-TIES ran
at half the speed of TIES (issue 24). A *counter-based* generator computes draw ``i`` from
``(key, i)`` alone, so any chunk of the mask can be drawn on any thread, in any order.

**The rule** (``DARE_RNG`` below, recorded in the output's safetensors metadata under
``DARE_RNG_KEY`` and described on the model card):

- the generator is Philox4x64-10 (Salmon et al., SC 2011) as numpy implements it
  (``numpy.random.Philox``: a standard, tested implementation, not ours);
- each input tensor of each expert gets its own 128-bit key, drawn with ``torch.randint`` from
  torch's generator, which :class:`~hub_merge.merge.methods.TensorMerge` seeds with
  ``sha256(f"{recipe seed}:{tensor name}")`` before every tensor: the key, hence the mask, is a
  function of the recipe's seed, the tensor's name and the expert's position, and two tensors
  or two experts never share a key;
- element ``i`` (flat index) is kept when the ``i``-th 32-bit word of the key's stream (the
  64-bit outputs split low half first) is below ``ceil(density * 2**32)``, a keep probability
  within ``2**-32`` of ``density`` (mergekit's ``rand_like`` has 24 bits);
- the L1 rescaling is mergekit's ``rescaled_masked_tensor`` arithmetic on the whole tensor.

The mask therefore does not depend on the chunk size, the thread count or the device (CUDA
tensors get the same mask, drawn on the CPU). It is not mergekit's mask: both are independent
Bernoulli(density) draws per element (tests/test_merge_kernels.py checks the keep rate and
independence), so a merge differs from mergekit-yaml's the way two seeds do.
``exact_mergekit`` (``--exact-mergekit``) runs mergekit's own draws for bit identity.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

# The safetensors metadata key and value recording which generator drew DARE's masks.
DARE_RNG_KEY = "hub_merge_dare_rng"
DARE_RNG = "philox4x64-10 (numpy), key per tensor and expert from sha256(seed:name)"

_CHUNK = 1 << 20  # elements per piece of the mask (a multiple of 8: one Philox block = 8 draws)
_BLOCK = 8  # 32-bit draws per Philox4x64 counter value (four 64-bit outputs)
_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (owning pid, pool)


def _pool() -> ThreadPoolExecutor:
    """One pool per process: numpy's generators and torch's ops release the GIL.

    Keyed by pid: a forked child (a worker process) inherits the parent's pool object without
    its threads, and work submitted to it would never run.
    """
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (
            os.getpid(),
            ThreadPoolExecutor(
                max_workers=max(1, min(torch.get_num_threads(), os.cpu_count() or 1)),
                thread_name_prefix="dare-philox",
            ),
        )
    return _POOL[1]


def draw_key() -> int:
    """A 124-bit Philox key from torch's generator (seeded per tensor by the caller)."""
    hi, lo = torch.randint(0, 2**62, (2,), dtype=torch.int64).tolist()
    return (hi << 62) | lo


def keep_threshold(density: float) -> int:
    """The 32-bit threshold: a draw ``u`` keeps its element when ``u < threshold``."""
    return min(2**32 - 1, math.ceil(density * 2**32))


def drop_mask(key: int, start: int, stop: int, density: float) -> np.ndarray:
    """Bool numpy mask of the elements in ``[start, stop)`` to drop (``start`` a multiple of 8)."""
    if start % _BLOCK:
        raise ValueError(f"a mask piece starts at a multiple of {_BLOCK}; got {start}")
    n = stop - start
    words = np.random.Philox(key=key, counter=start // _BLOCK).random_raw((n + 1) // 2)
    draws = words.view("<u4")[:n]
    return np.greater_equal(draws, np.uint32(keep_threshold(density)))


def random_drop_(
    delta: torch.Tensor, density: float, l1_rescale: bool, key: int | None = None
) -> None:
    """DARE's drop of ``delta`` in place with the Philox mask of ``key`` (see the module doc).

    ``key``: default :func:`draw_key` (drawn only when something is dropped, as mergekit draws
    only then). ``l1_rescale``: multiply what is kept by ``|delta|_1 / |kept|_1`` (mergekit's
    ``rescale``), unless either norm is below mergekit's ``1e-7``.
    """
    if density >= 1:
        return
    if key is None:
        key = draw_key()
    flat = delta.reshape(-1)
    before = flat.abs().sum() if l1_rescale else None
    n = flat.numel()

    def piece(start: int) -> None:
        stop = min(n, start + _CHUNK)
        drop = torch.from_numpy(drop_mask(key, start, stop, density))
        flat[start:stop].masked_fill_(drop.to(flat.device, non_blocking=True), 0)

    starts = range(0, n, _CHUNK)
    if len(starts) == 1:
        piece(0)
    else:
        list(_pool().map(piece, starts))  # list(): re-raise the first failure here
    if before is None:
        return
    after = flat.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return
    flat.mul_(before / after)
