"""The live view's ETA: an upper bound that stays readable for a week-long search."""

from dsearch.search.live import format_eta


def test_the_eta_counts_whole_days_instead_of_wrapping_at_24_hours():
    assert format_eta(0) == "00:00:00" and format_eta(-5) == "00:00:00"
    assert format_eta(3661) == "01:01:01"
    assert format_eta(86399) == "23:59:59"
    assert format_eta(86400) == "1d 00:00:00"                  # %H of gmtime said 00:00:00 here
    assert format_eta(7 * 86400 + 2 * 3600 + 5) == "7d 02:00:05"


def test_a_started_trial_says_its_predicted_step_peak_and_path(capsys):
    from dsearch.search.live import LiveView

    view = LiveView(4, 10, enabled=True)
    view.live = None           # line mode, as in a log
    view.started("a", 3, {"params": 11_153, "macs": 3_956_420, "memory": 3 * 1024 ** 2,
                          "run": {"model": {"memory_efficient": True}}})
    view.started("b", 4, {"params": 10, "macs": 20})
    out = " ".join(capsys.readouterr().err.split())      # the view writes to stderr, wrapped to the console
    assert "trial 3: started (11,153 params, 3,956,420 MACs, step peak ≈ 3.0 MiB (memory-efficient path))" in out
    assert "trial 4: started (10 params, 20 MACs)" in out
