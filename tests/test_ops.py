"""The internal building blocks of the scores (leep_jax.scores.ops), tested directly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

import leep_jax
from leep_jax.scores import ops

# The documented sizes: 2^j and 3 * 2^(j-1); ``fine`` adds the quarter octaves.
COARSE = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]
FINE = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128]


@pytest.mark.parametrize("fine, sizes", [(False, COARSE), (True, FINE)], ids=["coarse", "fine"])
def test_size_bucket_is_the_smallest_listed_size_not_below_the_size(fine, sizes):
    for size in range(0, 129):
        want = min(s for s in sizes if s >= size)
        assert ops.size_bucket(size, fine=fine) == want, size
        assert ops.size_bucket(size, 20, fine=fine) == min(want, 20), size


@pytest.mark.parametrize(
    "num_rows, row_size, want",
    [
        (10**6, 1000, 256),  # 2**18 / 1000 = 262: the power of two below
        (10**6, 3, 1 << 16),
        (10**6, 1, 1 << 18),
        (10**6, 0, 1 << 18),  # an empty row counts as one element
        (10, 1000, 10),  # never more rows than there are
        (100, 1 << 19, 1),  # a row over 2**18 elements: one row per block
        (100, (1 << 17) + 1, 1),
    ],
)
def test_cpu_blocks_are_the_largest_power_of_two_rows_within_2_18_elements(
    num_rows, row_size, want
):
    assert ops._cpu_block_rows(num_rows, row_size) == want


def _row_stats(table_row, row):
    """A pytree of a float and an int per row, as the value checks' row functions return."""
    return {"dot": jnp.dot(table_row, row), "argmax": jnp.argmax(row).astype(jnp.int32)}


def test_per_row_and_map_rows_return_every_leaf_in_its_dtype():
    # 700 rows of 1000: blocks of 256 rows on CPU, two blocks and a tail of 188.
    rng = np.random.default_rng(0)
    values = rng.normal(size=(700, 1000)).astype(np.float32)
    table = rng.normal(size=(3, 1000)).astype(np.float32)
    labels = rng.integers(0, 3, 700).astype(np.int32)
    got = jax.jit(ops.per_row, static_argnums=0)(_row_stats, table, values, labels)
    assert got["argmax"].dtype == jnp.int32 and got["dot"].dtype == jnp.float32
    np.testing.assert_array_equal(got["argmax"], values.argmax(axis=1))
    want = np.einsum("nk,nk->n", table[labels].astype(np.float64), values)
    np.testing.assert_allclose(got["dot"], want, rtol=1e-4, atol=1e-3)

    def row_fn(row):
        return _row_stats(jnp.ones_like(row), row)

    mapped = jax.jit(ops.map_rows, static_argnums=(0, 2))(row_fn, values, jnp.float32)
    assert mapped["argmax"].dtype == jnp.int32
    np.testing.assert_array_equal(mapped["argmax"], values.argmax(axis=1))
    np.testing.assert_allclose(mapped["dot"], values.astype(np.float64).sum(1), atol=1e-3)


@pytest.mark.parametrize("from_logits", [False, True])
def test_dropped_rows_never_reach_the_table_with_fewer_source_than_target_classes(from_logits):
    # Z = 2 < Y = 5: a dropped row sent to row Z of the [Y, Z] table would land on class 2.
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(60, 2)).astype(np.float32)
    values = logits if from_logits else np.asarray(jax.nn.softmax(logits))
    labels = rng.integers(0, 5, 60).astype(np.int32)
    mask = rng.random(60) < 0.6
    got = leep_jax.leep(values, labels, 5, from_logits=from_logits, mask=mask)
    kept = logits[mask].astype(np.float64)
    np.testing.assert_allclose(got, ref.leep_from_logits(kept, labels[mask], 5), rtol=1e-5)
    joint = leep_jax.joint_distribution(values, labels, 5, from_logits=from_logits, mask=mask)
    want = ref.joint(ref.softmax(kept), labels[mask], 5)
    np.testing.assert_allclose(joint, want, rtol=1e-5, atol=1e-7)


def _on_the_accelerator_branch(fn, *args):
    """``fn(*args)`` lowered for CUDA (``platform_dependent``'s default branch), run here.

    The lowered program holds only portable HLO (gathers, scatters, loops), so the CPU
    runs the GPU/TPU branch once the export's platform check is off.
    """
    exported = jax.export.export(
        jax.jit(fn),
        platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.platform()],
    )(*args)
    return exported.call(*args)


def _ops_of_every_branch(table, values, labels, valid):
    shape = table.shape
    return {
        "per_row": ops.per_row(_row_stats, table, values, labels),
        "map_rows": ops.map_rows(lambda row: {"max": jnp.max(row)}, values, jnp.float32),
        "row_sum_into": ops.row_sum_into(
            shape, values, labels, valid, dtype=jnp.float32, transform=jax.nn.softmax
        ),
        "softmax_sum_into": ops.softmax_sum_into(shape, values, labels, valid, dtype=jnp.float32),
        "per_matrix": ops.per_matrix(
            lambda m: m @ m.T + jnp.trace(m), values[:6].reshape(2, 3, -1)
        ),
    }


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_the_accelerator_branches_compute_what_the_cpu_branches_do(dtype):
    rng = np.random.default_rng(2)
    table = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    values = jnp.asarray(rng.normal(size=(30, 6)) * 3, dtype)
    labels = jnp.asarray(rng.integers(0, 4, 30), jnp.int32)
    valid = jnp.asarray(rng.random(30) < 0.7)
    cpu = jax.jit(_ops_of_every_branch)(table, values, labels, valid)
    accelerator = _on_the_accelerator_branch(_ops_of_every_branch, table, values, labels, valid)
    assert jax.tree.structure(cpu) == jax.tree.structure(accelerator)

    def same(got, want):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    jax.tree.map(same, accelerator, cpu)


@pytest.mark.parametrize("table_dtype", [jnp.bfloat16, jnp.float32, jnp.float64])
def test_per_row_reads_bfloat16_rows_in_the_tables_dtype(table_dtype):
    """Rows are widened to the table's dtype, whichever it is (float32 by bit shifts)."""
    rng = np.random.default_rng(3)
    with jax.enable_x64(table_dtype == jnp.float64):
        table = jnp.asarray(rng.normal(size=(3, 40)), table_dtype)
        values = jnp.asarray(rng.normal(size=(50, 40)), jnp.bfloat16)
        labels = jnp.asarray(rng.integers(0, 3, 50), jnp.int32)
        got = jax.jit(ops.per_row, static_argnums=0)(_row_stats, table, values, labels)
        assert got["dot"].dtype == table_dtype
        want = np.einsum(
            "nk,nk->n", np.asarray(table, np.float64)[labels], np.asarray(values, np.float64)
        )
        rtol = 1e-2 if table_dtype == jnp.bfloat16 else 1e-6
        np.testing.assert_allclose(np.asarray(got["dot"], np.float64), want, rtol=rtol, atol=rtol)


def test_rows_split_over_an_explicit_mesh_are_never_gathered_onto_one_device():
    # Enough rows for several CPU blocks: the block loop would all-gather split rows.
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    split = jax.sharding.NamedSharding(mesh, jax.P("data"))
    n, k = 1 << 17, 5
    rows = jax.ShapeDtypeStruct((n, k), jnp.float32, sharding=split)
    index = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=split)
    weights = jax.ShapeDtypeStruct((n,), jnp.bool_, sharding=split)
    table = jax.ShapeDtypeStruct((3, k), jnp.float32)
    calls = {
        "row_sum_into": lambda r, i, w, t: ops.row_sum_into(
            (3, k), r, i, w, dtype=jnp.float32, transform=jax.nn.softmax
        ),
        "softmax_sum_into": lambda r, i, w, t: ops.softmax_sum_into(
            (3, k), r, i, w, dtype=jnp.float32
        ),
        "per_row": lambda r, i, w, t: ops.per_row(_row_stats, t, r, i),
        "map_rows": lambda r, i, w, t: ops.map_rows(jnp.max, r, jnp.float32),
    }
    with jax.set_mesh(mesh):
        for name, call in calls.items():
            hlo = jax.jit(call).lower(rows, index, weights, table).compile().as_text()
            assert "all-gather" not in hlo, name
