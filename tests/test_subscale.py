"""Subscale slicing: order, content, round trips, dynamic slice access."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lvt_jax.models.lvt import subscale

STRIDES_16 = [(1, 1, 1), (16, 1, 1), (4, 2, 2), (2, 4, 8), (16, 16, 16)]


def test_slice_order_is_raster_of_abc():
  order = subscale.slice_order((4, 2, 2))
  assert order == list(itertools.product(range(4), range(2), range(2)))
  for idx, (a, b, c) in enumerate(order):
    assert subscale.slice_index(a, b, c, (4, 2, 2)) == idx
    assert tuple(int(v) for v in subscale.slice_offsets(idx, (4, 2, 2))) == (a, b, c)


@pytest.mark.parametrize('stride', STRIDES_16)
def test_round_trip_and_content(stride):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 1000, size=(2, 16, 16, 16, 3)).astype(np.int32)
  s = np.asarray(subscale.split_slices(x, stride))
  st, sh, sw = stride
  t, h, w = 16 // st, 16 // sh, 16 // sw
  assert s.shape == (2, st * sh * sw, t, h, w, 3)
  # content: slice (a, b, c) holds positions (a + i*st, b + j*sh, c + k*sw)
  for idx, (a, b, c) in enumerate(subscale.slice_order(stride)):
    np.testing.assert_array_equal(s[:, idx], x[:, a::st, b::sh, c::sw])
  np.testing.assert_array_equal(np.asarray(subscale.merge_slices(s, stride)), x)


@pytest.mark.parametrize('shape,stride', [((8, 4, 6), (2, 2, 3)), ((6, 10, 4), (3, 5, 1)),
                                          ((4, 4, 4), (2, 2, 2))])
def test_round_trip_other_axes_and_shapes(shape, stride):
  rng = np.random.default_rng(1)
  # leading axes (5, 2) and trailing (4, 7): volume starts at axis 2
  x = rng.normal(size=(5, 2) + shape + (4, 7)).astype(np.float32)
  s = subscale.split_slices(x, stride, axis=2)
  assert s.shape[:3] == (5, 2, int(np.prod(stride)))
  back = subscale.merge_slices(s, stride, axis=2)
  np.testing.assert_array_equal(np.asarray(back), x)


def test_bad_stride_raises():
  with pytest.raises(ValueError):
    subscale.split_slices(np.zeros((1, 16, 16, 16)), (3, 1, 1))


@pytest.mark.parametrize('stride', [(16, 1, 1), (4, 2, 2)])
def test_get_and_put_slice_dynamic(stride):
  rng = np.random.default_rng(2)
  S = int(np.prod(stride))
  x = jnp.asarray(rng.integers(0, 512, size=(5, 16, 16, 16, 4)), jnp.int32)
  idx = jnp.asarray(rng.integers(0, S, size=(5,)), jnp.int32)
  got = jax.jit(lambda x, i: subscale.get_slice(x, stride, i))(x, idx)
  full = np.asarray(subscale.split_slices(x, stride))
  np.testing.assert_array_equal(np.asarray(got), full[np.arange(5), np.asarray(idx)])
  # put_slice writes exactly that slice back
  new = -jnp.ones_like(got)
  y = np.asarray(jax.jit(lambda x, i, v: subscale.put_slice(x, stride, i, v))(x, idx, new))
  ys = np.asarray(subscale.split_slices(y, stride))
  for b in range(5):
    for s in range(S):
      if s == int(idx[b]):
        assert (ys[b, s] == -1).all()
      else:
        np.testing.assert_array_equal(ys[b, s], full[b, s])


def test_generation_rank():
  shape, stride = (4, 4, 4), (2, 2, 2)
  rank = subscale.generation_rank(shape, stride)
  assert sorted(rank.ravel().tolist()) == list(range(64))
  # the rank order read through the slices is 0, 1, 2, ... (slice-major, raster within)
  s = np.asarray(subscale.split_slices(rank[None], stride))[0]
  np.testing.assert_array_equal(s.ravel(), np.arange(64))
  sid = subscale.slice_id_map(shape, stride)
  assert sid[1, 0, 1] == subscale.slice_index(1, 0, 1, stride)
