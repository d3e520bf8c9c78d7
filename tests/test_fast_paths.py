"""Every fast path gives the results of the plain one, to float tolerance."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import train


@pytest.fixture(scope="module")
def mnist_small():
    ds = jaxcnn.data.load("mnist")
    return jaxcnn.data.to_float(ds.x_train[:600]), ds.y_train[:600]


def _max_param_diff(a, b):
    return max(float(np.abs(np.asarray(p) - np.asarray(q)).max()) for p, q in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))


def _assert_same_history(a, b, rtol=1e-5, keys=("loss", "accuracy", "val_loss", "val_accuracy")):
    for k in keys:
        np.testing.assert_allclose(a.history[k], b.history[k], rtol=rtol, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("model_name", ["mnist_cnn"])  # BN and dropout: tests/test_engine.py's matrix
def test_device_resident_scan_equals_host_loop(mnist_small, model_name):
    # Four batches an epoch, one scan chunk. Small: at the suite's XLA level 0 (tests/conftest.py)
    # this model's scan ran about 5x slower than at the default level; the host loop did not.
    x, y = mnist_small[0][:120], mnist_small[1][:120]
    # SGD: RMSprop turns float noise in near-zero gradients into +-lr steps, which would hide a
    # real difference behind rounding.
    kw = dict(epochs=2, batch_size=24, validation_split=0.2, verbose=0, devices=1, seed=1, optimizer="sgd")
    plain = jaxcnn.fit(jaxcnn.get_model(model_name), x, y, data_on_device=False, **kw)
    fast = jaxcnn.fit(jaxcnn.get_model(model_name), x, y, data_on_device=True, **kw)
    assert int(plain.state.step) == int(fast.state.step)
    _assert_same_history(plain.history, fast.history)
    assert _max_param_diff(plain.state, fast.state) < 5e-5  # float summation order only
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), plain.state.batch_stats, fast.state.batch_stats)


def test_scan_chunks_pad_and_skip_steps():
    order = np.arange(10)
    units = train.scan_units(order, batch_size=3, chunk=2)  # 3 full batches + 1 partial
    assert [u[0].shape for u in units] == [(2, 3), (2, 3), (1, 1)]
    assert [list(u[1]) for u in units] == [[True, True], [True, False], [True]]
    np.testing.assert_array_equal(units[0][0].ravel(), np.arange(6))


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs 2 local devices (jaxcnn.use_cpu_devices gives one per core)")
def test_data_parallel_equals_one_device(mnist_small):
    x, y = mnist_small
    # SGD: RMSprop turns float noise in near-zero gradients into +-lr steps (see above).
    kw = dict(epochs=2, batch_size=64, validation_split=0.2, verbose=0, seed=2, optimizer="sgd")
    # MNIST's background pixels are exactly 0, so a first convolution's output there is its bias
    # alone, and a last-bit difference in that bias's gradient (the two paths sum in different
    # orders) can flip the ReLU over a whole background: 4e-4 apart after 16 steps at XLA's LLVM
    # level 0 (the suite's), 1.5e-8 with the pixels lifted off zero. The test is of the paths.
    x = x + np.float32(0.01)
    one = jaxcnn.fit(jaxcnn.get_model("mnist_cnn"), x, y, devices=1, **kw)
    two = jaxcnn.fit(jaxcnn.get_model("mnist_cnn"), x, y, devices=2, **kw)
    _assert_same_history(one.history, two.history)
    assert _max_param_diff(one.state, two.state) < 1e-5


def test_one_place_chooses_the_strategy():
    mnist = train.create_train_state(jaxcnn.get_model("mnist_cnn"), (28, 28, 1))
    bn = train.create_train_state(jaxcnn.get_model("cifar_cnn4"), (32, 32, 3))
    auto = train.choose_strategy("auto", 128, mnist)
    assert isinstance(auto, train.Parts) and auto.devices == tuple(jax.local_devices()[: train.cpu_workers()])
    # Whole-batch statistics: the batch cut over a mesh (one device: the batch in one piece).
    bn_auto = train.choose_strategy("auto", 128, bn)
    assert isinstance(bn_auto, train.StatsMesh if jax.local_device_count() >= 2 else train.SingleDevice)
    assert isinstance(train.choose_strategy(None, 128, mnist), train.SingleDevice)
    assert isinstance(train.choose_strategy(None, 128, mnist, data_on_device=True), train.Resident)
    if jax.local_device_count() >= 2:
        assert isinstance(train.choose_strategy(2, 128, mnist), train.Mesh)
        with pytest.raises(jaxcnn.errors.ConfigError, match="batch_size 63 does not divide over 2 devices"):
            train.choose_strategy(2, 63, mnist)


def test_split_parts_depends_on_the_batch_alone():
    assert train.split_parts(64, part_size=32) == 2
    assert train.split_parts(128, part_size=32) == 4
    assert train.split_parts(256, part_size=32) == 8
    assert train.split_parts(512, part_size=64) == 8
    assert train.split_parts(96, part_size=32) == 3  # an odd count: the devices take turns
    assert train.split_parts(100, part_size=32) == 4  # 25 each
    assert train.split_parts(80, part_size=32) == 4  # 20 each
    assert train.split_parts(74, part_size=32) == 2  # 74 = 2 x 37 has no smaller equal parts
    assert train.split_parts(48, part_size=8) == 6  # never below 8 examples a part
    assert train.split_parts(48, part_size=4) == 6  # the smallest parts there are
    assert train.split_parts(12, part_size=4) == 1
    # A large model: at most max_parts copies of its gradients, so fewer, larger parts.
    assert train.split_parts(256, part_size=32, max_parts=4) == 4  # 64 each
    assert train.split_parts(256, part_size=32, max_parts=3) == 2
    mnist = train.create_train_state(jaxcnn.get_model("mnist_cnn"), (28, 28, 1))  # 1 MB of params
    assert train.max_parts(mnist) == train.PART_GRADS_BYTES // (258_090 * 4)
    assert train.max_parts(None) is None


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs 2 local CPU devices (one per core)")
@pytest.mark.parametrize("model_name, batch_size", [("mnist_cnn", 64), ("search_cnn", 128)])
def test_split_batch_over_cpu_devices_equals_one_device(mnist_small, model_name, batch_size):
    """devices="auto" cuts each batch into parts of at most 32 dealt out to the CPU devices
    without collectives (batch 128: 4 parts; its last batch of 80: 4 parts of 20); same results."""
    x, y = mnist_small
    kw = dict(epochs=2, batch_size=batch_size, validation_split=0.2, verbose=0, seed=2)
    model = jaxcnn.get_model(model_name, **({"kernel_size": 5, "weight_decay": 0.01} if model_name == "search_cnn" else {}))
    one = jaxcnn.fit(model, x[:-20], y[:-20], devices=None, **kw)  # 464 = 5 x 64 + 144: a partial batch too
    split = jaxcnn.fit(model, x[:-20], y[:-20], devices="auto", **kw)
    assert int(one.state.step) == int(split.state.step)
    _assert_same_history(one.history, split.history)
    assert _max_param_diff(one.state, split.state) < 1e-5


def test_parts_on_one_device_equal_the_whole_batch(mnist_small):
    """On one CPU device (JAXCNN_CPU_DEVICES=1, a 1-core machine), the parts strategy still cuts a
    batch of 128 into 4 parts of 32, one program call each, and sums their gradients: same step."""
    x, y = mnist_small
    model = jaxcnn.get_model("mnist_cnn")
    data = train.Data(x, y)
    order = np.arange(512)
    dev = jax.local_devices()[0]
    fresh = lambda: train.create_train_state(model, (28, 28, 1), "sgd", 0.05, seed=3)  # noqa: E731  (steps donate their state)
    whole, m_whole = train.run_epoch(fresh(), train.SingleDevice(dev), data, order, 128)
    parts, m_parts = train.run_epoch(fresh(), train.Parts([dev]), data, order, 128)
    assert train.split_parts(128) == 4
    assert int(whole.step) == int(parts.step) == 4
    np.testing.assert_allclose(m_whole["loss"], m_parts["loss"], rtol=1e-5)
    assert m_whole["accuracy"] == m_parts["accuracy"]
    assert _max_param_diff(whole, parts) < 1e-5


def test_bfloat16_mixed_precision_keeps_accuracy(mnist_small):
    x, y = mnist_small
    kw = dict(epochs=3, batch_size=32, validation_split=0.2, verbose=0, seed=0)
    fp32 = jaxcnn.fit(jaxcnn.get_model("mnist_cnn"), x, y, **kw)
    bf16 = jaxcnn.fit(jaxcnn.get_model("mnist_cnn", dtype=jnp.bfloat16), x, y, **kw)
    assert {p.dtype for p in jax.tree.leaves(bf16.state.params)} == {jnp.dtype("float32")}
    assert abs(fp32.history["val_accuracy"][-1] - bf16.history["val_accuracy"][-1]) < 0.05
    np.testing.assert_allclose(bf16.history["loss"], fp32.history["loss"], rtol=0.1)
    assert bf16.history["loss"][-1] < 0.5 * bf16.history["loss"][0]


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs 2 local devices")
def test_one_all_reduce_per_data_parallel_step():
    """Independent all-reduces in one step could each hold a thread of a 2-core pool while the
    other device waits for a thread (XLA aborts after 40 s); the step must have exactly one."""
    import re

    from jaxcnn.train.strategies import _mesh_train

    place = train.placement(2)
    state = place.put_state(train.create_train_state(jaxcnn.get_model("mnist_cnn"), (28, 28, 1)))
    acc = place.put_state(train.zero_metrics(state))
    batch = place.put_batch({"x": np.zeros((64, 28, 28, 1), np.float32), "y": np.zeros(64, np.int32)})
    hlo = _mesh_train(place, True).lower(state, acc, batch).compile().as_text()
    assert len(re.findall(r"all-reduce\(", hlo)) == 1


@pytest.mark.parametrize("k, size, padding", [(7, 11, "valid"), (8, 10, "valid"), (3, 13, "valid"), (5, 7, "same"), (4, 3, "same")])
def test_col2im_input_gradient_equals_xla(k, size, padding):
    """conv2d's col2im input gradient (used on CPU where the output is no larger than the kernel)
    gives XLA's gradients; the forward values are XLA's own."""
    from jaxcnn.layers import conv2d

    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (3, size, size, 4))
    w = jax.random.normal(kw, (k, k, 4, 5)) * 0.2

    def grads(impl, dtype=jnp.float32):
        loss = lambda x, w: jnp.sum(jnp.sin(conv2d(x.astype(dtype), w.astype(dtype), padding, impl)).astype(jnp.float32))  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)

    (gx, gw), (cx, cw) = grads("xla"), grads("col2im")
    assert cx.shape == x.shape and cw.shape == w.shape
    np.testing.assert_allclose(cx, gx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cw, gw, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(conv2d(x, w, padding, "col2im"), conv2d(x, w, padding, "xla"))
    bx, _ = grads("col2im", jnp.bfloat16)
    np.testing.assert_allclose(bx, gx, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("k, size, cin, padding", [(3, 28, 1, "valid"), (3, 13, 32, "valid"), (3, 4, 8, "valid"), (3, 9, 3, "same"), (5, 7, 4, "same"), (2, 6, 2, "same")])
def test_im2col_convolution_equals_xla(k, size, cin, padding):
    """conv2d's im2col (patch matrix times kernel, used on CPU for small kernels and parts) gives
    XLA's values and gradients (its input gradient is col2im), also in forward mode, and in
    bfloat16 is as close to float32 as XLA's own."""
    from jaxcnn.layers import conv2d

    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (3, size, size, cin))
    w = jax.random.normal(kw, (k, k, cin, 5)) * 0.2

    def run(method, input_grad="auto", dtype=jnp.float32):
        def loss(x, w):
            return jnp.sum(jnp.sin(conv2d(x.astype(dtype), w.astype(dtype), padding, input_grad, method)).astype(jnp.float32))

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)

    (v, (gx, gw)) = run("xla", "xla")
    for input_grad in ("auto", "col2im"):
        (iv, (ix, iw)) = run("im2col", input_grad)
        np.testing.assert_allclose(iv, v, rtol=1e-5)
        np.testing.assert_allclose(ix, gx, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(iw, gw, rtol=1e-4, atol=1e-5)
    # Plain JAX: forward-mode works too (a Hessian-vector product, jax.jacfwd).
    tangent = jax.jvp(lambda w: conv2d(x, w, padding, method="im2col"), (w,), (jnp.ones_like(w),))[1]
    np.testing.assert_allclose(tangent, jax.jvp(lambda w: conv2d(x, w, padding, "xla", "xla"), (w,), (jnp.ones_like(w),))[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(conv2d(x, w, padding, method="im2col"), conv2d(x, w, padding, method="xla"), rtol=1e-5, atol=1e-5)
    (_, (bx, bw)), (_, (xx, xw)) = run("im2col", dtype=jnp.bfloat16), run("xla", dtype=jnp.bfloat16)
    assert bx.dtype == x.dtype and bw.dtype == w.dtype
    for got, xla, ref in ((bw, xw, gw), (bx, xx, gx)):  # within bfloat16's precision of float32, as XLA's own
        scale = float(jnp.abs(ref).max())
        assert float(jnp.abs(xla - ref).max()) <= 0.02 * scale
        np.testing.assert_allclose(got, ref, atol=0.02 * scale)


# 5x5 and 3x3 kernels; "same" and "valid"; sizes that are not multiples of the 4x4 tiles (11, 13,
# 6); an output smaller than one tile (3 -> 1).
@pytest.mark.parametrize("k, size, cin, padding", [(5, 16, 8, "same"), (5, 11, 6, "valid"), (3, 13, 8, "valid"),
                                                   (3, 6, 5, "same"), (3, 3, 5, "valid")])
def test_winograd_convolution_equals_xla(k, size, cin, padding):
    """conv2d's Winograd convolution (CPU, 5x5 kernels of parts, when JAXCNN_WINOGRAD=1 asks for
    it) gives XLA's values and gradients to float rounding, for sizes that are not multiples of
    its 4x4 tiles too, and its second-order reverse-mode derivatives; forward mode is not defined
    (documented)."""
    from jaxcnn import winograd
    from jaxcnn.layers import conv2d

    kx, kw, kc = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(kx, (3, size, size, cin))
    w = jax.random.normal(kw, (k, k, cin, 7)) * 0.2

    def loss(method):
        return lambda x, w: jnp.sum(jnp.sin(conv2d(x, w, padding, method=method)))

    ref, got = conv2d(x, w, padding, method="xla"), jax.jit(lambda x, w: conv2d(x, w, padding, method="winograd"))(x, w)
    scale = float(jnp.abs(ref).max())
    np.testing.assert_allclose(got, ref, atol=3e-5 * scale)
    (gx, gw), (wx, ww) = (jax.jit(jax.grad(loss(m), argnums=(0, 1)))(x, w) for m in ("xla", "winograd"))
    np.testing.assert_allclose(wx, gx, atol=3e-5 * float(jnp.abs(gx).max()))
    np.testing.assert_allclose(ww, gw, atol=3e-5 * float(jnp.abs(gw).max()))
    if padding == "same":  # (both kernel sizes; the costliest programs here, so not for every size)
        # Reverse over reverse: a Hessian-vector product in the kernel.
        v = jax.random.normal(kc, w.shape)
        hvp = lambda m: jax.jit(jax.grad(lambda w: jnp.vdot(jax.grad(loss(m), argnums=1)(x, w), v)))(w)  # noqa: E731
        h_xla, h_win = hvp("xla"), hvp("winograd")
        np.testing.assert_allclose(h_win, h_xla, atol=1e-4 * float(jnp.abs(h_xla).max()))
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda w: conv2d(x, w, padding, method="winograd"), (w,), (w,))
    # The transforms are exact in float64: F(4, r) is the correlation itself.
    at, g, bt = winograd.matrices(winograd.TILE, k)
    d, f = np.random.default_rng(0).normal(size=(2, winograd.TILE + k - 1)), np.random.default_rng(1).normal(size=k)
    np.testing.assert_allclose(at @ ((g @ f) * (bt @ d[0])), np.correlate(d[0], f, "valid"), atol=1e-12)


def test_conv2d_picks_im2col_and_col2im_by_shape_alone(monkeypatch):
    """On CPU: im2col for kernels of at most 3x3 with few input channels and a small patch matrix
    (and, asked for, many output channels), col2im input gradients
    where the output is no larger than the kernel; XLA's convolution elsewhere and off CPU. The
    choice depends on the shapes and the backend, never on a timing, so any machine computes a
    model alike."""
    import re

    from jaxcnn.layers import IM2COL_MAX_BYTES, conv2d, conv_plan

    def plan(k, size, padding="valid", batch=32, c=3, f=32, backend="cpu"):
        return conv_plan((batch, size, size, c), (k, k, c, f), padding, backend=backend)

    assert plan(7, 11, c=32) == ("xla", "col2im")  # search_cnn k=7's second convolution: output 5x5
    assert plan(6, 11, f=64) == ("xla", "col2im")  # output 6x6, kernel 6x6
    assert plan(3, 28, c=1) == ("im2col", "col2im")  # mnist_cnn's first, a part of 32
    assert plan(3, 13, c=32) == ("xla", "xla")  # mnist_cnn's second: 32 -> 32 is XLA's
    assert plan(3, 32) == ("im2col", "col2im")  # the CIFAR models' first
    assert plan(3, 15, c=32, f=64) == ("xla", "xla")  # cifar_cnn1's second: XLA's own kernel is faster
    assert plan(3, 6, c=64, f=64) == ("xla", "xla")  # cifar_cnn1's third: output 4x4
    assert plan(3, 4, c=64, f=64) == ("xla", "col2im")  # cifar_cnn2's fourth: output 2x2
    assert plan(5, 8, "same", c=64, f=64) == ("xla", "xla")  # Winograd is off by default
    monkeypatch.setattr(jaxcnn.layers, "WINOGRAD", True)  # $JAXCNN_WINOGRAD=1
    monkeypatch.setattr(jaxcnn.layers, "IM2COL_MIN_FEATURES", 64)  # $JAXCNN_IM2COL_MIN_FEATURES=64
    assert plan(3, 15, c=32, f=64) == plan(3, 4, c=64, f=64) == ("im2col", "col2im")
    assert plan(3, 13, c=32) == ("xla", "xla") and plan(5, 15, c=32, f=64) == ("winograd", "winograd")
    monkeypatch.setattr(jaxcnn.layers, "IM2COL_MIN_FEATURES", 0)
    assert plan(5, 8, "same", c=64, f=64) == plan(5, 16, "same", c=32, f=64) == ("winograd", "winograd")  # cifar_cnn3's 5x5
    assert plan(5, 8, "same", batch=256, c=64, f=64) == ("xla", "xla")  # a larger batch: XLA's
    with jaxcnn.layers.batch_shards(2):  # 128 examples on each of 2 devices of a mesh
        assert plan(5, 8, "same", batch=256, c=64, f=64) == ("winograd", "winograd")
    assert plan(5, 16, "same", c=3) == ("xla", "xla") and plan(3, 13, c=32) == ("xla", "xla")  # few channels; 3x3
    assert plan(5, 8, "same", c=64, f=64, backend="gpu") == ("xla", "xla")
    assert conv_plan((32, 8, 8, 64), (5, 5, 64, 64), "same", jnp.bfloat16) == ("xla", "xla")
    assert conv_plan((2, 9, 9, 4), (3, 3, 4, 2), method="winograd") == ("winograd", "winograd")
    with pytest.raises(jaxcnn.errors.ConfigError, match="method='winograd' takes square kernels of 3x3 or 5x5, got 7x7; use method='auto' or 'xla'"):
        conv_plan((2, 9, 9, 4), (7, 7, 4, 2), method="winograd")
    monkeypatch.setattr(jaxcnn.layers, "WINOGRAD", False)
    assert plan(3, 32, batch=512) == ("xla", "xla")  # a whole batch of 512 CIFAR images: 50 MB of patches
    assert 32 * 30 * 30 * 27 * 4 <= IM2COL_MAX_BYTES < 512 * 30 * 30 * 27 * 4
    assert plan(3, 13, c=32, backend="gpu") == plan(7, 11, backend="gpu") == ("xla", "xla")
    assert conv_plan((2, 9, 9, 1), (3, 3, 1, 2), method="xla") == ("xla", "xla")
    assert conv_plan((2, 9, 9, 1), (7, 7, 1, 2), method="im2col") == ("im2col", "col2im")
    with pytest.raises(jaxcnn.errors.ConfigError, match="input_grad='xla' needs method='xla' or 'auto'"):
        conv_plan((2, 9, 9, 1), (3, 3, 1, 2), method="im2col", input_grad="xla")

    # jax.export with a symbolic batch: the patch matrix's size is unknown, so XLA's convolution
    b = jax.export.symbolic_shape("b")[0]
    assert conv_plan((b, 28, 28, 1), (3, 3, 1, 8), backend="cpu") == ("xla", "xla")
    exported = jax.export.export(jax.jit(lambda x: conv2d(x, jnp.ones((3, 3, 1, 8)))))(jax.ShapeDtypeStruct((b, 28, 28, 1), jnp.float32))
    assert exported.call(jnp.ones((2, 28, 28, 1))).shape == (2, 26, 26, 8)

    def traced(k, size, padding="valid"):
        x, w = jnp.zeros((2, size, size, 3)), jnp.zeros((k, k, 3, 4))
        jaxpr = str(jax.make_jaxpr(lambda x: conv2d(x, w, padding))(x))
        return re.findall(r"name=(\w+)", jaxpr), "conv_general_dilated" in jaxpr

    cpu = jax.default_backend() == "cpu"
    assert traced(7, 11) == (["_conv_col2im_grad"] if cpu else [], True)
    assert traced(3, 13) == ([], not cpu)  # 3 input channels: im2col on CPU, a matmul in plain JAX
    assert traced(5, 30, "same") == ([], True)
    np.testing.assert_array_equal(conv2d(x := jnp.ones((1, 5, 5, 1)), w := jnp.ones((3, 3, 1, 1)), "VALID"), conv2d(x, w, "valid"))
    assert conv2d(x, w, "same").shape == (1, 5, 5, 1)
    with pytest.raises(jaxcnn.errors.ConfigError, match="padding must be 'valid' or 'same', got 'full'"):
        conv2d(x, w, "full")
    with pytest.raises(jaxcnn.errors.ConfigError, match="input_grad must be"):
        conv2d(jnp.zeros((1, 5, 5, 1)), jnp.zeros((3, 3, 1, 1)), input_grad="fast")
    with pytest.raises(jaxcnn.errors.ConfigError, match="method must be 'auto', 'xla', 'im2col' or 'winograd', got 'fft'"):
        conv2d(jnp.zeros((1, 5, 5, 1)), jnp.zeros((3, 3, 1, 1)), method="fft")


def test_conv2d_chunks_large_batches_on_cpu(monkeypatch):
    """On CPU conv2d convolves a batch of more than CONV_CHUNK examples (per device of a mesh) in
    chunks: the count depends on the shapes, the backend and the mesh alone; values and
    gradients are the whole batch's to float rounding, by either method."""
    import re

    from jaxcnn import layers
    from jaxcnn.layers import CONV_CHUNK, CONV_CHUNK_MIN_BYTES, batch_shards, conv2d, conv_chunks

    def chunks(n, size=32, c=3, f=32, **kw):  # 30 x 30 x 32 floats: 115 kB of output per example
        return conv_chunks((n, size, size, c), (3, 3, c, f), **{"backend": "cpu", **kw})

    assert CONV_CHUNK in (0, 32)  # the library's default, or the suite's (tests/conftest.py)
    monkeypatch.setattr(layers, "CONV_CHUNK", 32)
    assert 36 * 30 * 30 * 32 * 4 < CONV_CHUNK_MIN_BYTES < 37 * 30 * 30 * 32 * 4
    assert [chunks(n) for n in (32, 36, 37, 74, 96, 128, 512)] == [1, 1, 1, 2, 3, 4, 16]  # 37: prime
    assert chunks(128, size=12) == 1 and chunks(128, f=8) == 1  # small outputs stay whole
    assert chunks(512, shards=2) == 8 and chunks(512, shards=4) == 4 and chunks(512, shards=16) == 1
    assert chunks(512, backend="gpu") == 1
    assert conv_chunks((jax.export.symbolic_shape("b")[0], 32, 32, 3), (3, 3, 3, 32), backend="cpu") == 1
    with batch_shards(4):
        assert chunks(512) == 4
    assert chunks(512) == 16
    with pytest.raises(jaxcnn.errors.ConfigError, match="batch_shards takes a device count of at least 1, got 0"):
        with batch_shards(0):
            pass

    kx, kw = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, (96, 20, 20, 4))
    w = jax.random.normal(kw, (3, 3, 4, 64)) * 0.2

    def run(method, padding):
        loss = lambda x, w: jnp.sum(jnp.sin(conv2d(x, w, padding, method=method)))  # noqa: E731 - a new function: traced anew
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)

    jaxpr = str(jax.make_jaxpr(lambda x: conv2d(x, w, method="xla"))(x))
    cpu = jax.default_backend() == "cpu"
    assert len(re.findall("conv_general_dilated", jaxpr)) == (3 if cpu else 1)
    chunked = {(m, p): run(m, p) for m in ("xla", "im2col") for p in ("valid", "same")}
    monkeypatch.setattr(layers, "CONV_CHUNK", 0)
    assert conv_chunks(x.shape, w.shape) == 1
    for (m, p), (v, (gx, gw)) in chunked.items():
        wv, (wx, ww) = run(m, p)
        np.testing.assert_allclose(v, wv, rtol=1e-5)
        np.testing.assert_allclose(gx, wx, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(gw, ww, rtol=1e-5, atol=1e-5 * float(np.abs(ww).max()))  # sums of 96 examples' terms


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs 2 local devices (jaxcnn.use_cpu_devices gives one per core)")
def test_conv2d_chunks_stay_on_their_device_of_a_mesh(monkeypatch):
    """Under batch_shards (as the mesh strategies trace), each device's share of a sharded batch
    is chunked on its own: the program moves no activations between devices, and its values and
    gradients are the one-device program's."""
    import re

    from jaxcnn import layers
    from jaxcnn.layers import batch_shards, conv2d

    monkeypatch.setattr(layers, "CONV_CHUNK", 32)
    kx, kw = jax.random.split(jax.random.key(3))
    x = jax.random.normal(kx, (256, 20, 20, 4))
    w = jax.random.normal(kw, (3, 3, 4, 64)) * 0.2
    place = train.placement(2)

    def per_example(x, w):  # a gradient with respect to the input, one loss per example: no all-reduce
        return jax.grad(lambda x: jnp.sum(jnp.sin(conv2d(x, w, method="xla"))))(x)

    def sharded(x, w):
        with batch_shards(2):
            return per_example(x, w)

    fn = jax.jit(sharded, in_shardings=(place.batch, place.replicated), out_shardings=place.batch)
    hlo = fn.lower(x, w).compile().as_text()
    assert len(re.findall(r"\bconvolution\(", hlo)) == 8  # each device's 128 examples in 4 chunks, forward and back
    assert not re.findall(r"all-gather|all-to-all|collective-permute|all-reduce", hlo)
    np.testing.assert_allclose(fn(x, w), jax.jit(per_example)(x, w), rtol=1e-5, atol=1e-6)


def _flax_user_models():
    import flax.linen as nn
    from flax import nnx

    class UserCNN(nn.Module):  # Flax's own layers, as a user writes them
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(nn.Conv(32, (3, 3), padding="VALID")(x))     # 1 channel in: im2col
            x = nn.max_pool(x, (2, 2), (2, 2))                         # jaxcnn's max_pool
            x = nn.relu(nn.Conv(32, (3, 3), padding=1)(x))            # "same", written as pads: XLA's, via conv2d
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.Dropout(0.25, deterministic=not train)(x)
            x = nn.Conv(8, (3, 3), strides=2, use_bias=False)(x)      # strided: left as it is
            x = nn.Conv(8, (3, 3), kernel_dilation=2)(x)              # dilated: left
            x = nn.Conv(8, (3, 3), padding=((0, 1), (0, 1)))(x)       # neither valid nor same: left
            x = nn.Conv(8, 3)(x)                                       # an int kernel_size is 1-D in Flax: left
            x = nn.max_pool(x, (3, 3), strides=(1, 1))                 # overlapping windows: left
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    class UserNNX(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 16, (3, 3), padding="SAME", rngs=rngs)
            self.bn = nnx.BatchNorm(16, rngs=rngs)
            self.drop = nnx.Dropout(0.25, rngs=rngs)
            self.out = nnx.Linear(14 * 14 * 16, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.max_pool(nnx.relu(self.bn(self.conv(x))), (2, 2), (2, 2))
            return self.out(self.drop(x).reshape(x.shape[0], -1))

    # (module, convolutions and select-and-scatters in the step's program: as written / with the fast paths)
    # linen: Conv_0 forward and kernel gradient, 3 for each other layer; the first by matmuls, a pool left.
    return {"linen": (UserCNN(), (17, 2), (15, 1)), "nnx": (UserNNX(nnx.Rngs(0)), (2, 1), (0, 0))}


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_fast_paths_swap_users_convolutions_and_max_pools(kind, monkeypatch):
    """A user's model of Flax's own layers (linen or NNX) runs, under jaxcnn's model adapter, on
    jaxcnn's CPU formulations (jaxcnn.layers.fast_paths): each plain stride-1 "valid"/"same"
    convolution by conv2d (im2col, chunks), each non-overlapping max-pool by jaxcnn.layers.max_pool
    (no select-and-scatter); everything else as written. Parameters are Flax's own; the loss, the
    gradients and the BatchNorm updates are as written to float rounding."""
    import re

    from jaxcnn import layers
    from jaxcnn.train.model import adapt

    monkeypatch.setattr(layers, "CONV_CHUNK", 32)
    module, written, fast = _flax_user_models()[kind]
    model = adapt(module)
    x = jnp.asarray(np.random.default_rng(0).random((64, 28, 28, 1), np.float32))
    variables = model.init(jax.random.key(0), jax.random.key(1), x[:1])

    def loss(params):
        out, updates = model.apply({**variables, "params": params}, x, train=True, rngs={"dropout": jax.random.key(2)},
                                   mutable=["batch_stats"])
        return jnp.sum(out ** 2), updates

    def run(on):
        monkeypatch.setattr(layers, "FAST_PATHS", on)
        lowered = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(variables["params"])
        hlo = lowered.as_text()
        counts = (len(re.findall(r"stablehlo.convolution", hlo)), len(re.findall(r"select_and_scatter", hlo)))
        return lowered.compile()(variables["params"]), counts

    ((value, updates), grads), counts = run(True)
    ((flax_value, flax_updates), flax_grads), flax_counts = run(False)
    cpu = jax.default_backend() == "cpu"  # elsewhere the adapter runs the model as written
    assert flax_counts == written and counts == (fast if cpu else written), (counts, flax_counts)
    np.testing.assert_allclose(value, flax_value, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), updates, flax_updates)
    largest = max(float(np.abs(f).max()) for f in jax.tree.leaves(flax_grads))
    for (path, g), (_, f) in zip(*(jax.tree_util.tree_flatten_with_path(t)[0] for t in (grads, flax_grads))):
        # XLA's CPU convolution itself is 1e-4 (relative) from a float64 reference here; a bias before
        # BatchNorm has a gradient of 0 in theory, so float noise, hence the term in the largest.
        np.testing.assert_allclose(g, f, atol=1e-3 * float(np.abs(f).max()) + 1e-6 * largest, err_msg=jax.tree_util.keystr(path))


_YNN_PROBE = """
import os, sys
if sys.argv[1] == "started":
    import jax; jax.devices()
import jaxcnn, jax, jax.numpy as jnp
x, k = jnp.ones((32, 13, 13, 32)), jnp.ones((3, 3, 32, 32))
conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = conv.lower(x, k).compile().as_text()
print(jaxcnn._XLA_CPU_TUNED, any("__ynn_fusion" in line for line in hlo.splitlines()))
"""


def _ynn_probe(xla_flags: str, mode: str = "fresh") -> str:
    env = {**os.environ, "XLA_FLAGS": xla_flags}
    out = subprocess.run([sys.executable, "-c", _YNN_PROBE, mode], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()[-2:]


def test_convolutions_are_xlas_own_and_matmuls_stay_with_ynnpack():
    """jaxcnn's import takes XLA:CPU's convolutions back from YNNPACK (jaxcnn.tune_xla_cpu), in
    this process too; matmuls still go to YNNPACK, and a user's own setting of the flag, or a
    backend started before the import, is left alone."""
    if jax.default_backend() != "cpu":
        pytest.skip("an XLA:CPU flag")
    assert jaxcnn.XLA_CPU_FLAG in os.environ["XLA_FLAGS"]  # added here, or by the parent process (pytest-xdist)
    x, k = jnp.ones((32, 13, 13, 32)), jnp.ones((3, 3, 32, 32))
    conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    hlo = conv.lower(x, k).compile().as_text()
    assert " convolution(" in hlo and "__ynn_fusion" not in hlo
    dense = jax.jit(lambda a, w: a @ w).lower(jnp.ones((32, 3872)), jnp.ones((3872, 64))).compile().as_text()
    assert "__ynn_fusion" in dense
    assert _ynn_probe("") == ["True", "False"]
    assert _ynn_probe("--xla_cpu_experimental_ynn_fusion_type=+individual_convolution") == ["False", "True"]
    assert _ynn_probe("", "started") == ["False", "True"]  # too late to change XLA's flags: nothing changed
