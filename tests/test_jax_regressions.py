"""jax/XLA bugs that l2ljax works around, each reduced to a few lines, and the workarounds.

A jitted ``vmap`` over a batch of ONE of ``w * (C @ (U - Σ_j w_j U_j))`` — the masked-anomaly
product of an EKI update (``l2ljax.optimizees.inner.masked_eki_update``), ``w`` a 0/1 member mask —
returns garbage (values up to 1e36, NaN, inf; different ones from run to run) on CPU with jax and
jaxlib 0.10.2 once the rows are ~500 floats or longer. The StableHLO jax emits is right, the same
vmap un-jitted is right, and batches of two are right: the bug is in XLA's CPU compilation. Inside a
whole inner EnKF run it showed as NaN fitness and, in longer runs, segmentation faults. Found on a
2-core AMD EPYC VM (2026-12-02). Workaround: ``l2ljax.core.map_rows`` never vmaps a single row.
"""

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest

from l2ljax.core import map_rows

J, P = 30, 1000
XLA_CPU_BATCH_ONE_BUG = jax.default_backend() == "cpu" and jaxlib.__version__ == "0.10.2"


def _masked_product(U):
    w = (jnp.arange(J) < J).astype(U.dtype)[:, None]  # a mask of all ones, built from an iota
    return w * (jnp.full((J, J), 1e-3) @ (U - jnp.sum(w * U, 0)))


def _rows():
    return jax.random.normal(jax.random.key(0), (J, P))


@pytest.mark.xfail(XLA_CPU_BATCH_ONE_BUG, reason="jaxlib 0.10.2 CPU miscompiles this batch-one vmap "
                   "(garbage values)", strict=False)
def test_a_jitted_vmap_over_a_batch_of_one_is_the_unbatched_result():
    U = _rows()
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(_masked_product))(U[None])[0]),
                               np.asarray(_masked_product(U)), rtol=1e-5, atol=1e-5)


def test_the_same_vmap_over_a_batch_of_two_is_right():
    U = _rows()
    out = jax.jit(jax.vmap(_masked_product))(jnp.stack([U, U]))
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(_masked_product(U)), rtol=1e-5, atol=1e-5)


def test_map_rows_calls_a_single_row_directly_and_vmaps_several():
    U = _rows()
    fn = lambda u, key, scale: (scale * _masked_product(u), jax.random.uniform(key))  # noqa: E731
    keys = jax.random.split(jax.random.key(1), 2)
    one, draw = jax.jit(lambda u, k: map_rows(fn, u, k, 2.0))(U[None], keys[:1])
    assert one.shape == (1, J, P) and draw.shape == (1,)
    np.testing.assert_allclose(np.asarray(one[0]), 2.0 * np.asarray(_masked_product(U)), rtol=1e-5, atol=1e-5)
    assert float(draw[0]) == float(jax.random.uniform(keys[0]))
    two, _ = jax.jit(lambda u, k: map_rows(fn, u, k, 2.0))(jnp.stack([U, U]), keys)
    np.testing.assert_allclose(np.asarray(two), np.asarray(jnp.stack([one[0], one[0]])), rtol=1e-5, atol=1e-5)
