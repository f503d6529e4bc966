"""The Ray executor's set-up, in this process with Ray's entry points faked: how it starts a local Ray."""

import os

import ray

from dsearch.search import runner


def test_a_local_ray_is_sized_by_ray_which_reads_the_containers_cpu_quota(monkeypatch):
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(os, "cpu_count", lambda: 64)      # the host's cores, not the container's share
    runner.start_ray(None)
    runner.start_ray(None, num_cpus=3)
    assert calls[0]["address"] == "local" and "num_cpus" not in calls[0]
    assert calls[1]["num_cpus"] == 3
