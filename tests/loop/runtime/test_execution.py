"""The `execution:` section: durations, jobqueue validation, and the inline (serial debugging) path."""

from __future__ import annotations

import dask
import pytest

from loop.config import validate_config
from loop.errors import InputError
from loop.runtime.execution import ExecutionConfig, JobQueueConfig, duration_seconds, make_executor

BASE = {"name": "x", "chemical_systems": ["Cu-Au"]}
JOB = {"cores": 4, "memory": "16GB", "walltime": "01:00:00"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("04:00:00", 14400),
        ("1-02:00:00", 93600),
        ("30:00", 1800),
        ("55m", 3300),
        ("3h45m", 13500),
        ("90s", 90),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


def test_a_lifetime_past_the_walltime_is_refused_with_the_key_path() -> None:
    data = BASE | {
        "execution": {"kind": "slurm", "jobqueue": JOB | {"lifetime": "58m", "lifetime_stagger": "5m"}}
    }
    with pytest.raises(InputError, match=r"execution\.jobqueue.*must end before the walltime"):
        validate_config(data)


def test_slurm_needs_a_jobqueue_section() -> None:
    with pytest.raises(InputError, match="needs a jobqueue section"):
        validate_config(BASE | {"execution": {"kind": "pbs"}})


def test_adapt_bounds_are_ordered() -> None:
    with pytest.raises(InputError, match="must not exceed maximum"):
        validate_config(BASE | {"execution": {"kind": "local", "adapt": {"minimum": 3, "maximum": 2}}})


def test_unknown_jobqueue_key_is_refused() -> None:
    with pytest.raises(InputError, match=r"execution\.jobqueue\.wallclock"):
        validate_config(BASE | {"execution": {"kind": "slurm", "jobqueue": JOB | {"wallclock": "1:00:00"}}})


def test_worker_lifetime_arguments() -> None:
    job = JobQueueConfig(**JOB)  # default lifetime: 60 min - 2 x 5 min stagger - 2 min
    assert job.cluster_kwargs()["worker_extra_args"] == ["--lifetime", "2880s", "--lifetime-stagger", "300s"]


def test_local_workers_run_without_dask_dashboard_monitors() -> None:
    # The 10 ms profiler and the GIL probe feed a dashboard nobody opens and take CPU from the calculations.
    with make_executor(ExecutionConfig(kind="local", n_workers=1)) as ex:
        for key, value in (
            ("distributed.worker.profile.enabled", False),
            ("distributed.admin.system-monitor.gil.enabled", False),
            ("distributed.admin.tick.interval", "500ms"),
        ):
            assert set(ex.client.run(dask.config.get, key).values()) == {value}


def test_inline_runs_in_this_process_without_dask() -> None:
    with make_executor(ExecutionConfig(kind="inline")) as ex:
        assert ex.inline and ex.client is None
        assert ex.map_chunks(lambda chunk, k: [x * k for x in chunk], [[1, 2], [3]], 10) == [10, 20, 30]
