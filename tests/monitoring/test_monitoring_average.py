"""The moving average over averageWindow / pollPeriod samples."""

from __future__ import annotations

from aos_sm.agent.monitoring.average import MovingAverage, Usage, window_samples


def test_window_is_average_window_over_poll_period_and_at_least_one() -> None:
    assert window_samples(35.0, 35.0) == 1
    assert window_samples(60.0, 1.0) == 60
    assert window_samples(1.0, 10.0) == 1


def test_average_is_the_mean_of_the_last_samples_stamped_with_the_newest() -> None:
    average = MovingAverage(3)
    assert average.average() is None
    for t, cpu in enumerate([100, 200, 300, 600]):
        average.add(Usage(float(t), cpu=cpu, ram=cpu * 10, partitions=(("p", cpu),), download=cpu, upload=1))
    mean = average.average()
    assert mean == Usage(3.0, cpu=367, ram=3667, partitions=(("p", 367),), download=367, upload=1)
    data = mean.to_monitoring_data()
    assert (data.timestamp.seconds, data.cpu, data.partitions[0].name, data.partitions[0].used_size) == (3, 367, "p", 367)
