"""runtime.imap_forked: the shared object reaches forked workers without pickling."""
import os

import pytest

from npc_msom.runtime import imap_forked


class Unpicklable:
    """Stands in for a cohort index that must not be pickled once per job."""

    def __init__(self):
        self.offset = 100

    def __reduce__(self):
        raise AssertionError("the shared object was pickled")


def _work(shared, job):
    return job + shared.offset, os.getpid()


def _set_marker(value):
    os.environ["NPC_MSOM_TEST_MARKER"] = value


def _marker(shared, job):
    return os.environ.get("NPC_MSOM_TEST_MARKER")


@pytest.mark.parametrize("workers", [1, 2])
def test_every_job_once_with_the_shared_object_never_pickled(workers):
    out = list(imap_forked(_work, range(6), Unpicklable(), workers=workers))
    assert sorted(v for v, _ in out) == [100, 101, 102, 103, 104, 105]
    pids = {p for _, p in out}
    if workers == 1:
        assert [v for v, _ in out] == [100, 101, 102, 103, 104, 105] and pids == {os.getpid()}
    else:
        assert os.getpid() not in pids  # the work ran in the forked processes


def test_initializer_runs_in_each_worker_only():
    assert set(imap_forked(_marker, range(4), None, workers=2, initializer=_set_marker, initargs=("w",))) == {"w"}
    assert "NPC_MSOM_TEST_MARKER" not in os.environ
    # in-process: no initializer, no pool; one job never starts a pool either
    assert list(imap_forked(_marker, [0], None, workers=2, initializer=_set_marker, initargs=("w",))) == [None]
    assert list(imap_forked(_work, [], Unpicklable(), workers=2)) == []
