"""Micro-batching: concurrent encodes share encoder calls and each gets its own rows back."""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from service.batcher import MicroBatcher
from service.encoders import Bundle


class Recording:
    """A real encoder wrapped to record the size of every call."""

    def __init__(self, inner: Any, fail: bool = False) -> None:
        self.inner = inner
        self.modality = inner.modality
        self.bits = inner.bits
        self.calls: list[int] = []
        self.fail = fail

    def encode(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        if self.fail:
            raise RuntimeError("encoder exploded")
        return self.inner.encode(batch)


def bags(svc_bundle: Bundle, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((n, len(svc_bundle.vectorizer.tokens))) < 0.2).astype(np.float32)


async def run_batcher(encoder, inputs, *, max_items, window_s, split=1):
    with ThreadPoolExecutor(2) as pool:
        batcher = MicroBatcher(encoder, pool, max_items=max_items, window_s=window_s)
        batcher.start()
        try:
            parts = [inputs[i : i + split] for i in range(0, len(inputs), split)]
            return await asyncio.gather(*(batcher.encode(p) for p in parts))
        finally:
            await batcher.stop()


def test_concurrent_requests_share_encoder_calls(svc_bundle: Bundle) -> None:
    enc = Recording(svc_bundle.encoders["text"])
    x = bags(svc_bundle, 12)
    out = asyncio.run(run_batcher(enc, x, max_items=64, window_s=0.05))
    assert enc.calls == [12]
    np.testing.assert_array_equal(np.concatenate(out), svc_bundle.encoders["text"].encode(x))


def test_batches_are_bounded_and_rows_stay_in_order(svc_bundle: Bundle) -> None:
    enc = Recording(svc_bundle.encoders["text"])
    x = bags(svc_bundle, 23)
    out = asyncio.run(run_batcher(enc, x, max_items=4, window_s=0.05, split=3))
    assert max(enc.calls) <= 4 and sum(enc.calls) == 23
    assert [len(o) for o in out] == [3] * 7 + [2]
    np.testing.assert_array_equal(np.concatenate(out), svc_bundle.encoders["text"].encode(x))


def test_large_request_is_split(svc_bundle: Bundle) -> None:
    enc = Recording(svc_bundle.encoders["text"])
    x = bags(svc_bundle, 10)
    (out,) = asyncio.run(run_batcher(enc, x, max_items=4, window_s=0.0, split=10))
    assert enc.calls == [4, 4, 2]
    np.testing.assert_array_equal(out, svc_bundle.encoders["text"].encode(x))


def test_zero_window_still_encodes_each_request(svc_bundle: Bundle) -> None:
    enc = Recording(svc_bundle.encoders["text"])
    out = asyncio.run(run_batcher(enc, bags(svc_bundle, 5), max_items=8, window_s=0.0))
    assert sum(enc.calls) == 5 and len(out) == 5


def test_encoder_failure_reaches_every_waiting_request(svc_bundle: Bundle) -> None:
    enc = Recording(svc_bundle.encoders["text"], fail=True)

    async def go():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(enc, pool, max_items=8, window_s=0.05)
            batcher.start()
            x = bags(svc_bundle, 3)
            results = await asyncio.gather(
                *(batcher.encode(x[i : i + 1]) for i in range(3)), return_exceptions=True
            )
            await batcher.stop()
            return results

    results = asyncio.run(go())
    assert enc.calls == [3]
    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)


def test_encode_before_start_is_an_error(svc_bundle: Bundle) -> None:
    async def go():
        with ThreadPoolExecutor(1) as pool:
            await MicroBatcher(svc_bundle.encoders["text"], pool, max_items=4, window_s=0).encode(
                bags(svc_bundle, 1)
            )

    with pytest.raises(RuntimeError, match="before start"):
        asyncio.run(go())


async def _with_batcher(encoder, window_s, body):
    with ThreadPoolExecutor(2) as pool:
        batcher = MicroBatcher(encoder, pool, max_items=64, window_s=window_s)
        batcher.start()
        try:
            # Far below the window: a batcher that sat out the window would time out here.
            return await asyncio.wait_for(body(batcher), timeout=60)
        finally:
            await batcher.stop()


def test_a_lone_request_does_not_wait_out_the_window(svc_bundle: Bundle) -> None:
    enc = Recording(svc_bundle.encoders["text"])
    x = bags(svc_bundle, 3)
    out = asyncio.run(_with_batcher(enc, 3600.0, lambda b: b.encode(x)))
    assert enc.calls == [3]
    np.testing.assert_array_equal(out, svc_bundle.encoders["text"].encode(x))


def test_the_window_waits_for_an_announced_request(svc_bundle: Bundle) -> None:
    enc = Recording(svc_bundle.encoders["text"])
    x = bags(svc_bundle, 3)

    async def body(batcher):
        with batcher.expect() as submitted:
            first = asyncio.ensure_future(batcher.encode(x[:1]))
            await asyncio.sleep(0.2)  # "decoding": the first job must wait for this one
            submitted()
            second = await batcher.encode(x[1:])
        return np.concatenate([await first, second])

    out = asyncio.run(_with_batcher(enc, 3600.0, body))
    assert enc.calls == [3]
    np.testing.assert_array_equal(out, svc_bundle.encoders["text"].encode(x))


def test_a_withdrawn_announcement_stops_the_wait(svc_bundle: Bundle) -> None:
    enc = Recording(svc_bundle.encoders["text"])
    x = bags(svc_bundle, 2)

    async def body(batcher):
        first = None
        with pytest.raises(ValueError, match="bad upload"):
            with batcher.expect():
                first = asyncio.ensure_future(batcher.encode(x))
                await asyncio.sleep(0.05)
                raise ValueError("bad upload")
        return await first

    out = asyncio.run(_with_batcher(enc, 3600.0, body))
    assert enc.calls == [2]
    np.testing.assert_array_equal(out, svc_bundle.encoders["text"].encode(x))
