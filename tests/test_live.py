"""The live view's ETA: an upper bound that stays readable for a week-long search."""

from dsearch.search.live import format_eta


def test_the_eta_counts_whole_days_instead_of_wrapping_at_24_hours():
    assert format_eta(0) == "00:00:00" and format_eta(-5) == "00:00:00"
    assert format_eta(3661) == "01:01:01"
    assert format_eta(86399) == "23:59:59"
    assert format_eta(86400) == "1d 00:00:00"                  # %H of gmtime said 00:00:00 here
    assert format_eta(7 * 86400 + 2 * 3600 + 5) == "7d 02:00:05"
