"""The stream reuses its activation buffers from batch to batch, with the same rows."""

from __future__ import annotations

import torch

from universal_neurons.models.loading import load_model


def test_capture_rows_into_buffers_equals_fresh_rows_and_reuses_memory(tiny_suite):
    model = load_model(tiny_suite["models"][0])
    gen = torch.Generator().manual_seed(0)
    buffers: dict[str, torch.Tensor] = {}
    ptrs = set()
    for n_keep_frac in (0.9, 0.5, 0.7):  # shrinking and growing batches within the first size
        ids = torch.randint(1, 100, (3, 20), generator=gen)
        keep = torch.rand(ids.shape, generator=gen) < n_keep_frac
        keep[0, 0] = True
        fresh = model.adapter.capture_rows(ids, keep, sites=("pre", "post"))
        reused = model.adapter.capture_rows(ids, keep, sites=("pre", "post"), buffers=buffers)
        for site in ("pre", "post"):
            torch.testing.assert_close(reused[site], fresh[site], atol=0, rtol=0)
            assert reused[site].data_ptr() == buffers[site].data_ptr()
        ptrs.add(buffers["post"].data_ptr())
    big = torch.randint(1, 100, (6, 20), generator=gen)  # more rows than the buffer: it grows
    rows = model.adapter.capture_rows(big, None, sites=("post",), buffers=buffers)
    assert rows["post"].shape[0] == 120 and buffers["post"].shape[0] == 120
    assert len(ptrs) == 1  # the first buffer served every smaller batch
