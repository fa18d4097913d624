"""benchmarks/bench_detection.bench_switches: what each switch puts back of the training loop before
issue 9 (for the bench's "before" row) changes the cost only, and is undone after the block."""
from __future__ import annotations

import pytest
import torch

from npc_msom.detection import model as model_mod
from npc_msom.detection import roi_align
from npc_msom.detection.data import SliceDataset, read_coco


def test_switches_change_the_cost_not_the_result_and_are_undone(toy_run, bench_detection):
    bench = bench_detection
    coco = read_coco(toy_run / "preprocessed" / "CE-T1WI" / "coco_train.json")
    conv = model_mod._grey_conv1(torch.nn.Conv2d(3, 4, 3, padding=1))
    grey = torch.rand(2, 1, 16, 16)
    calls = []
    true_forward = torch.nn.Conv2d.forward

    def spy(self, x):
        calls.append(x.shape[1])
        return true_forward(self, x)

    before_path, before_decoded = roi_align._fast_path, SliceDataset.decoded
    want = conv(grey)
    with bench.bench_switches(bench.BENCH_SWITCHES):
        assert roi_align._fast_path([torch.zeros(1, 1, 4, 4)], 1) is False
        ds = SliceDataset(coco)
        first, again = ds[0], ds[0]
        assert not ds._cache  # nothing kept: every draw decodes again
        assert torch.equal(first[0], again[0])
        torch.nn.Conv2d.forward = spy
        try:
            got = conv(grey)
        finally:
            torch.nn.Conv2d.forward = true_forward
        assert calls == [3]  # conv1 ran on three channels
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert roi_align._fast_path is before_path and SliceDataset.decoded is before_decoded
    ds = SliceDataset(coco)
    ds[0]
    assert ds._cache  # the cache is back
    calls.clear()
    torch.nn.Conv2d.forward = spy
    try:
        conv(grey)
    finally:
        torch.nn.Conv2d.forward = true_forward
    assert calls == []  # the summed kernel again: Conv2d.forward is not called


def test_unknown_switch_is_refused(bench_detection):
    bench = bench_detection
    with pytest.raises(ValueError, match="unknown bench switches"):
        with bench.bench_switches({"bench:nothing"}):
            pass
