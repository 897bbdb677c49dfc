"""MLflow tracking of a campaign: one parent run per campaign, one nested run per round, both resumable.

Only `loop` talks to MLflow. Without a configured tracking URI the store lives in the campaign workdir:
`<workdir>/mlflow/mlflow.db` (sqlite backend) and `<workdir>/mlflow/artifacts/` (artifacts), so nothing needs a
server. With `tracking_uri` set (e.g. `http://127.0.0.1:5000` for `mlflow server`, or a Postgres URI at scale) runs
go there instead.

Resuming: `start_campaign` and `start_round` return run ids for the campaign store. Passing an id back continues
that run. Without an id they first look for an existing run with the same campaign tags (and `round_index`), so a
process killed between creating a run and storing its id does not leave a duplicate behind.

Metric steps are round indices, and logging is idempotent: a (key, step) point already in the run is not logged
again, so a track stage re-run after a kill leaves one point per key and step. Params are write-once in MLflow:
logging a key again with the same value is a no-op; a different value (a config changed on resume) keeps the
original and records the new one as tag `param_changed.<key>`.

Every backend failure (unreachable server, unwritable or corrupt store, full disk) surfaces as
`TrackingUnavailable`, one typed error the loop catches so that tracking never stops discovery.
"""

from __future__ import annotations

import os

# Set before mlflow is imported anywhere in this process; telemetry would try to reach the network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow's HTTP client retries a stopped server for about two minutes per request by default. A campaign records
# what it could not log and syncs it later, so a short retry budget keeps an outage from stalling discovery.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# With a tracking server MLflow writes "View run ... at: URL" to stdout whenever a run ends, which would corrupt the
# CLI's --json output; the campaign reports its own links.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# Checkpoints are read back before they are pruned; a progress bar per read would fill the campaign's stderr.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import functools
import logging
import math
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict

from loop.errors import InputError

if TYPE_CHECKING:
    from mlflow import MlflowClient

# The loggers MLflow configures on import, each with its own stderr handler (`mlflow.utils.logging_utils`).
_MLFLOW_LOGGERS = ("mlflow", "sqlalchemy.engine", "alembic", "huey")


class _IntoCampaignLog(logging.Handler):
    """Passes MLflow's log records to the campaign log file only.

    A backend failure already reaches the user as one line (`TrackingUnavailable`, reported by the loop); MLflow
    also logs it itself, with a traceback (a full disk: "SQLAlchemy database error", 40 lines), which belongs in
    `logs/campaign.log` for whoever debugs it, not on the console.
    """

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text = f"{text}\n{logging.Formatter().formatException(record.exc_info)}"
        target = logging.getLogger("matloop")
        # Outside a campaign (no log file) the record is dropped rather than left to logging's last-resort stderr.
        if any(isinstance(h, logging.FileHandler) for h in target.handlers):
            target.log(record.levelno, "MLflow (%s): %s", record.name, text, extra={"log_file_only": True})


def _route_mlflow_logs() -> None:
    """Send MLflow's own log records (WARNING and above) to the campaign log instead of stderr.

    Its INFO lines (sqlite schema creation and migration) are dropped: a campaign's stderr carries its own
    progress and one-line errors only.
    """
    handler = _IntoCampaignLog(level=logging.WARNING)
    for name in _MLFLOW_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.WARNING)
        logger.propagate = False


ROLE_TAG = "matloop.role"
CAMPAIGN_TAG = "matloop.campaign"
CAMPAIGN_ID_TAG = "matloop.campaign_id"
ROUND_TAG = "round_index"
PARENT_TAG = "mlflow.parentRunId"
END_REASON_TAG = "matloop.end_reason"
# MLflow's run description ("note"), rendered as markdown on the run page.
NOTE_TAG = "mlflow.note.content"
# MLflow 3 opens an experiment without a kind on its GenAI overview; this kind opens the runs (model training) view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
CHAMPION = "champion"
UI_HOST = "127.0.0.1"

_MAX_PARAM_LEN = 6000
_MAX_BATCH_METRICS = 1000
_MAX_BATCH_PARAMS = 100
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-./ :]")
_STATUSES = ("FINISHED", "FAILED", "KILLED")


class TrackingError(InputError, ValueError):
    """Tracking misuse or an unusable tracking store (unknown run id, bad status, remote store for `ui`)."""


class TrackingUnavailable(Exception):
    """The tracking backend could not be reached or written (server down, store corrupt or read-only, disk full).

    Attributes:
        tracking_uri: The backend that failed.
        reason: One line saying what failed.
    """

    def __init__(self, *, tracking_uri: str, reason: str) -> None:
        super().__init__(f"MLflow backend {tracking_uri} unavailable: {reason}")
        self.tracking_uri = tracking_uri
        self.reason = reason


_F = TypeVar("_F", bound=Callable[..., Any])


def _backend_call(method: _F) -> _F:
    """Turn any failure of the MLflow backend inside a `Tracker` method into `TrackingUnavailable`.

    MLflow raises MlflowException, sqlalchemy, requests and OS errors depending on the backend and the fault, so
    everything except our own typed errors counts as the backend failing.
    """

    @functools.wraps(method)
    def wrapper(self: Tracker, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (TrackingError, TrackingUnavailable):
            raise
        except Exception as exc:
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise TrackingUnavailable(
                tracking_uri=self.tracking_uri, reason=f"{type(exc).__name__}: {text[:300]}"
            ) from exc

    return wrapper  # type: ignore[return-value]


class TrackingConfig(BaseModel):
    """Where and whether a campaign is tracked.

    Attributes:
        enabled: False turns every `Tracker` call into a no-op (run ids are then None).
        tracking_uri: MLflow tracking URI; None means a local sqlite store under `<workdir>/mlflow/`.
        experiment: Experiment name; None means the campaign name.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str | None = None


def local_store(workdir: Path | str) -> tuple[str, str]:
    """The campaign-local store: (sqlite tracking URI, artifact root URI) under `<workdir>/mlflow/`."""
    root = Path(workdir).resolve() / "mlflow"
    return f"sqlite:///{(root / 'mlflow.db').as_posix()}", (root / "artifacts").as_uri()


# Every column of MLflow's sqlite schema that holds an artifact location (MLflow 3.x).
_ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)
_LOCAL_ROOT_TAIL = "/mlflow/artifacts"


def follow_moved_store(workdir: Path | str) -> str | None:
    """Point a campaign-local MLflow store's artifact locations at `<workdir>/mlflow/artifacts` again.

    MLflow stores absolute artifact URIs. A campaign folder that was moved or copied would otherwise keep reading
    and writing artifacts (checkpoints, plots, the report) under its old path; this rewrites every location under
    the old root to the same place under the new one. A store that cannot be read is left as it is (opening it
    then fails as `TrackingUnavailable`).

    Returns:
        The old artifact root when locations were rewritten, else None.
    """
    db_path, root = local_store(workdir)
    db = Path(db_path[len("sqlite:///") :])
    if not db.is_file() or db.stat().st_size == 0:
        return None
    import sqlite3  # only here: most commands never open a moved store

    try:
        conn = sqlite3.connect(db, timeout=30.0)
    except sqlite3.Error:
        return None
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return None
        old = next(
            (
                loc
                for (loc,) in conn.execute("SELECT artifact_location FROM experiments")
                if isinstance(loc, str)
                and loc.startswith("file://")
                and loc.endswith(_LOCAL_ROOT_TAIL)
                and loc != root
            ),
            None,
        )
        if old is None:
            return None
        with conn:
            for table, column in _ARTIFACT_COLUMNS:
                if table not in tables:
                    continue
                conn.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                    (root, len(old) + 1, old, len(old) + 1, f"{old}/"),
                )
        return old
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def ui_command(workdir: Path | str, port: int = 5000, *, tracking_uri: str | None = None) -> list[str]:
    """Command line for `matloop ui`: the MLflow UI on 127.0.0.1 over the campaign's store, one worker.

    The command starts with `env` and the `ui_environment()` settings, so it can be exec'd as it is
    (`os.execvp(cmd[0], cmd)`).

    Args:
        workdir: Campaign workdir (its local store is used when `tracking_uri` is None).
        port: Port on 127.0.0.1.
        tracking_uri: The campaign's configured tracking URI, if any (sqlite, Postgres, ... database URIs).

    Raises:
        TrackingError: The campaign tracks to a tracking server (open that server instead) or the port is invalid.
    """
    if not 0 < int(port) < 65536:
        raise TrackingError(f"port {port} is out of range; pass 1-65535")
    if tracking_uri is not None and tracking_uri.startswith(("http://", "https://", "databricks")):
        raise TrackingError(
            f"this campaign tracks to {tracking_uri}; open that server instead of starting a UI"
        )
    backend, artifacts = (tracking_uri, None) if tracking_uri is not None else local_store(workdir)
    env = ["env", *(f"{k}={v}" for k, v in ui_environment().items())]
    cmd = [*env, sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", backend]
    if artifacts is not None:
        cmd += ["--default-artifact-root", artifacts]
    return [*cmd, "--host", UI_HOST, "--port", str(int(port)), "--workers", "1"]


def ui_url(*, port: int, experiment_id: str | None = None) -> str:
    """Address of a campaign's runs in the MLflow UI on 127.0.0.1.

    MLflow 3.17 picks its GenAI or model-training navigation from the `workflowType` URL parameter (else the
    browser's last choice, GenAI by default), so the address names the model-training view.
    """
    page = f"experiments/{experiment_id}" if experiment_id else "experiments"
    return f"http://{UI_HOST}:{int(port)}/#/{page}?workflowType=machine_learning"


def ui_environment() -> dict[str, str]:
    """Environment overrides for the `ui_command` process (merge into `os.environ`).

    Telemetry off, and MLflow's background job runners off: they are not needed to browse runs, cost several
    processes on a shared machine and outlive the UI if it is killed.
    """
    return {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def flatten(params: Mapping[str, Any], *, prefix: str = "", sep: str = ".") -> dict[str, str]:
    """Flatten nested mappings (e.g. a pydantic `model_dump()`) into `a.b.c -> str(value)` for MLflow params."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=name, sep=sep))
        else:
            out[name] = str(value)
    return out


def _key(name: str) -> str:
    return _BAD_KEY_CHARS.sub("_", str(name))


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


class Tracker:
    """Campaign tracking in MLflow through an explicit `MlflowClient` and run ids.

    No global active run is used, so a daemon never leaks a run from one campaign or round into another. Logging
    calls take `run_id`; None means the campaign's parent run (per-round time series go there with step = round).
    Every method that talks to the backend raises `TrackingUnavailable` when the backend fails.

    Args:
        config: Tracking settings.
        workdir: Campaign workdir (holds the local store when no tracking URI is configured).
        campaign_name: Name of the campaign (parent run name, default experiment name, tag `matloop.campaign`).
        campaign_id: Optional unique id of the campaign (tag `matloop.campaign_id`), used to find the parent run
            on resume when no run id is passed; defaults to the campaign name.
    """

    def __init__(
        self,
        *,
        config: TrackingConfig,
        workdir: Path | str,
        campaign_name: str,
        campaign_id: str | None = None,
    ) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.campaign_name = campaign_name
        self.campaign_id = campaign_id or campaign_name
        self.parent_run_id: str | None = None
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        if config.tracking_uri is None:
            self.tracking_uri, self._artifact_root = local_store(self.workdir)
        else:
            self.tracking_uri, self._artifact_root = config.tracking_uri, None

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    @property
    def experiment_name(self) -> str:
        return self.config.experiment or self.campaign_name

    @property
    def client(self) -> MlflowClient:
        """The MLflow client (creates the local store on first use; sqlite creation takes several seconds)."""
        if self._client is None:
            # mlflow (~2 s to import) only on first use: a campaign with tracking disabled never imports it, nor
            # does any command that only loads a config.
            from mlflow import MlflowClient

            _route_mlflow_logs()
            if self.config.tracking_uri is None:
                (self.workdir / "mlflow" / "artifacts").mkdir(parents=True, exist_ok=True)
                if (old := follow_moved_store(self.workdir)) is not None:
                    # MLflow caches each run's artifact location per process; drop what this process cached.
                    from mlflow.tracking._tracking_service import utils as tracking_utils

                    getattr(tracking_utils, "_artifact_repos_cache", {}).clear()
                    logging.getLogger("matloop").info(
                        "the campaign folder moved: its MLflow artifacts are read and written under %s now "
                        "(were %s)",
                        self._artifact_root,
                        old,
                    )
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    @_backend_call
    def experiment_id(self) -> str:
        # mlflow only on first use (see `client`).
        from mlflow.exceptions import MlflowException

        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                try:
                    experiment_id = self.client.create_experiment(
                        self.experiment_name,
                        artifact_location=self._artifact_root,
                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                    )
                except MlflowException:
                    # Another process created it between our lookup and create.
                    exp = self.client.get_experiment_by_name(self.experiment_name)
                    if exp is None:
                        raise
                    experiment_id = exp.experiment_id
            else:
                if exp.lifecycle_stage == "deleted":
                    raise TrackingError(
                        f"MLflow experiment {self.experiment_name!r} is deleted; restore it or choose another name"
                    )
                experiment_id = exp.experiment_id
            if exp is not None and EXPERIMENT_KIND_TAG not in exp.tags:
                # Experiments made before the kind was set would still open on the GenAI overview.
                self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            self._experiment_id = experiment_id
        return self._experiment_id

    @_backend_call
    def check_available(self, *, timeout: float = 5.0) -> None:
        """Fail fast when the backend is down, before a stage starts logging.

        A tracking server is asked for `/health` with a short timeout (MLflow's own client would retry for many
        seconds); a database store is opened and read.

        Raises:
            TrackingUnavailable: The backend does not answer or cannot be read.
        """
        if not self.enabled:
            return
        if self.tracking_uri.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(f"{self.tracking_uri.rstrip('/')}/health", timeout=timeout) as r:
                    if r.status != 200:
                        raise TrackingUnavailable(
                            tracking_uri=self.tracking_uri, reason=f"/health answered HTTP {r.status}"
                        )
            except (urllib.error.URLError, OSError) as exc:
                raise TrackingUnavailable(
                    tracking_uri=self.tracking_uri, reason=f"server not reachable ({exc})"
                ) from None
        _ = self.experiment_id

    # --- runs -----------------------------------------------------------------------------------------------------

    def _find(self, filter_string: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=filter_string,
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        return runs[0].info.run_id if runs else None

    def _resume(self, run_id: str) -> str:
        # mlflow only on first use (see `client`).
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise TrackingError(
                f"no MLflow run {run_id!r} in {self.tracking_uri}; check the campaign store"
            ) from None
        if run.info.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow run {run_id!r} is deleted; restore it or start a new campaign")
        if run.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        return run_id

    @_backend_call
    def start_campaign(
        self,
        *,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        start_time: float | None = None,
    ) -> str | None:
        """Start or resume the campaign's parent run; returns its id (None when tracking is disabled).

        Args:
            run_id: Id stored by an earlier process; that run is continued (set back to RUNNING).
            tags: Extra tags for a newly created run.
            start_time: When the campaign started (Unix time, s) for a newly created run; default now.

        Raises:
            TrackingError: `run_id` does not exist in this store or is deleted.
        """
        if not self.enabled:
            return None
        if run_id is None:
            run_id = self._find(
                f"tags.`{ROLE_TAG}` = 'campaign' and tags.`{CAMPAIGN_ID_TAG}` = '{_quote(self.campaign_id)}'"
            )
        if run_id is not None:
            self.parent_run_id = self._resume(run_id)
            return self.parent_run_id
        all_tags = {
            ROLE_TAG: "campaign",
            CAMPAIGN_TAG: self.campaign_name,
            CAMPAIGN_ID_TAG: self.campaign_id,
            **(tags or {}),
        }
        run = self.client.create_run(
            self.experiment_id, tags=all_tags, run_name=self.campaign_name, start_time=_ms(start_time)
        )
        self.parent_run_id = run.info.run_id
        return self.parent_run_id

    @_backend_call
    def start_round(
        self, *, round_index: int, run_id: str | None = None, start_time: float | None = None
    ) -> str | None:
        """Start or resume the nested run of round `round_index`; returns its id (None when disabled).

        Args:
            start_time: When the round started (Unix time, s) for a newly created run; default now. A round is
                logged when it ends, so its run would otherwise last as long as the logging.

        Raises:
            TrackingError: No campaign run was started, or `run_id` is unknown.
        """
        if not self.enabled:
            return None
        parent = self._require_parent()
        if run_id is None:
            run_id = self._find(
                f"tags.`{PARENT_TAG}` = '{parent}' and tags.`{ROUND_TAG}` = '{int(round_index)}'"
            )
        if run_id is not None:
            return self._resume(run_id)
        tags = {
            PARENT_TAG: parent,
            ROLE_TAG: "round",
            ROUND_TAG: str(int(round_index)),
            CAMPAIGN_TAG: self.campaign_name,
            CAMPAIGN_ID_TAG: self.campaign_id,
        }
        run = self.client.create_run(
            self.experiment_id,
            tags=tags,
            run_name=f"round-{int(round_index):03d}",
            start_time=_ms(start_time),
        )
        return run.info.run_id

    @_backend_call
    def round_run_ids(self) -> dict[int, str]:
        """Nested round runs of the campaign: round index -> run id."""
        if not self.enabled:
            return {}
        parent = self._require_parent()
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'"
        )
        return {int(r.data.tags[ROUND_TAG]): r.info.run_id for r in runs if ROUND_TAG in r.data.tags}

    @_backend_call
    def end_run(
        self,
        *,
        run_id: str | None = None,
        status: str = "FINISHED",
        reason: str | None = None,
        end_time: float | None = None,
    ) -> None:
        """Mark a run (default: the campaign run) FINISHED, FAILED or KILLED.

        Args:
            reason: Why the run ended (tag `matloop.end_reason`), e.g. the stop rule or the error.
            end_time: When the work the run records ended (Unix time, s); default now.
        """
        if not self.enabled:
            return
        if status not in _STATUSES:
            raise TrackingError(f"unknown run status {status!r}; use one of {', '.join(_STATUSES)}")
        rid = self._run(run_id)
        if reason is not None:
            self.client.set_tag(rid, END_REASON_TAG, reason[:_MAX_PARAM_LEN])
        self.client.set_terminated(rid, status=status, end_time=_ms(end_time))

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            raise TrackingError("no campaign run; call start_campaign() before starting rounds or logging")
        return self.parent_run_id

    def _run(self, run_id: str | None) -> str:
        return run_id if run_id is not None else self._require_parent()

    # --- logging --------------------------------------------------------------------------------------------------

    @_backend_call
    def log_params(self, params: Mapping[str, Any], *, run_id: str | None = None) -> None:
        """Log params (nested mappings are flattened with dots; values become strings, cut at 6000 chars)."""
        if not self.enabled:
            return
        # mlflow only on first use (see `client`).
        from mlflow.entities import Param, RunTag

        rid = self._run(run_id)
        existing = self.client.get_run(rid).data.params
        new: list[Param] = []
        changed: list[RunTag] = []
        for key, value in flatten(params).items():
            k, v = _key(key), value[:_MAX_PARAM_LEN]
            if k not in existing:
                new.append(Param(k, v))
            elif existing[k] != v:
                changed.append(RunTag(f"param_changed.{k}", v))
        for i in range(0, len(new), _MAX_BATCH_PARAMS):
            self.client.log_batch(rid, params=new[i : i + _MAX_BATCH_PARAMS])
        if changed:
            self.client.log_batch(rid, tags=changed)

    @_backend_call
    def log_metrics(
        self, metrics: Mapping[str, float], *, step: int | None = None, run_id: str | None = None
    ) -> int:
        """Log numeric metrics at `step` (the round index); nested mappings are flattened with dots.

        A key that already has a point at this step is skipped, so logging the same round twice (a track stage
        re-run after a kill, or a sync) leaves one point per key and step. Non-numeric values are skipped; NaN is
        stored as NaN.

        Returns:
            The number of points written.
        """
        if not self.enabled:
            return 0
        # mlflow only on first use (see `client`).
        from mlflow.entities import Metric

        rid = self._run(run_id)
        step = int(step or 0)
        values = {_key(k): v for k, v in flatten_numeric(metrics).items()}
        present = self.client.get_run(rid).data.metrics
        logged = {
            key
            for key in values
            if key in present and any(m.step == step for m in self.client.get_metric_history(rid, key))
        }
        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in values.items() if key not in logged]
        for i in range(0, len(batch), _MAX_BATCH_METRICS):
            self.client.log_batch(rid, metrics=batch[i : i + _MAX_BATCH_METRICS])
        return len(batch)

    def log_metric(
        self, key: str, value: float, *, step: int | None = None, run_id: str | None = None
    ) -> None:
        """Log one metric at `step` (the round index), unless that point is already logged."""
        self.log_metrics({key: value}, step=step, run_id=run_id)

    @_backend_call
    def set_tags(self, tags: Mapping[str, Any], *, run_id: str | None = None) -> None:
        """Set tags (values become strings)."""
        # mlflow only on first use (see `client`).
        from mlflow.entities import RunTag

        if not self.enabled:
            return
        self.client.log_batch(self._run(run_id), tags=[RunTag(_key(k), str(v)) for k, v in tags.items()])

    def set_description(self, text: str, *, run_id: str | None = None) -> None:
        """Set a run's description (MLflow's note, markdown, shown at the top of the run page)."""
        self.set_tags({NOTE_TAG: text}, run_id=run_id)

    @_backend_call
    def log_artifact(
        self, path: Path | str, *, artifact_path: str | None = None, run_id: str | None = None
    ) -> None:
        """Copy one file into the run's artifacts (under `artifact_path` if given).

        Raises:
            TrackingError: The file does not exist.
        """
        if not self.enabled:
            return
        path = Path(path)
        if not path.is_file():
            raise TrackingError(
                f"artifact {path} is not a file; pass an existing file (use log_artifacts for dirs)"
            )
        self.client.log_artifact(self._run(run_id), str(path), artifact_path=artifact_path)

    @_backend_call
    def log_artifacts(
        self, directory: Path | str, *, artifact_path: str | None = None, run_id: str | None = None
    ) -> None:
        """Copy a directory's contents (e.g. a checkpoint) into the run's artifacts."""
        if not self.enabled:
            return
        directory = Path(directory)
        if not directory.is_dir():
            raise TrackingError(f"artifact directory {directory} does not exist; pass an existing directory")
        self.client.log_artifacts(self._run(run_id), str(directory), artifact_path=artifact_path)

    @_backend_call
    def log_structures(
        self,
        structures: Mapping[str, Any] | Sequence[Any],
        *,
        artifact_path: str,
        run_id: str | None = None,
    ) -> list[str]:
        """Write pymatgen structures as CIF files into the run's artifacts under `artifact_path`.

        Args:
            structures: id -> `Structure`, or a sequence (files are then numbered).
            artifact_path: Artifact folder, e.g. "queried", "discovered" or "references".

        Returns:
            The file names written (`<id>.cif`).
        """
        if not self.enabled:
            return []
        items: Iterable[tuple[str, Any]] = (
            structures.items()
            if isinstance(structures, Mapping)
            else ((f"{i:05d}", s) for i, s in enumerate(structures))
        )
        names: list[str] = []
        with tempfile.TemporaryDirectory(prefix="matloop-cif-") as tmp:
            for ident, structure in items:
                name = f"{_key(ident).replace('/', '_').replace(' ', '_')}.cif"
                structure.to(filename=str(Path(tmp) / name), fmt="cif")
                names.append(name)
            if names:
                self.client.log_artifacts(self._run(run_id), tmp, artifact_path=artifact_path)
        return names

    @_backend_call
    def log_figure(self, figure: Any, *, artifact_file: str, run_id: str | None = None) -> None:
        """Save a matplotlib figure as an artifact (e.g. "plots/hull_round_003.png")."""
        if not self.enabled:
            return
        self.client.log_figure(self._run(run_id), figure, artifact_file)

    @_backend_call
    def artifact_uri(self, *, run_id: str | None = None) -> str | None:
        """Where a run's artifacts are stored (None when disabled)."""
        if not self.enabled:
            return None
        return self.client.get_run(self._run(run_id)).info.artifact_uri

    @_backend_call
    def run_status(self, *, run_id: str | None = None) -> str | None:
        """RUNNING, FINISHED, FAILED or KILLED (None when disabled)."""
        # mlflow only on first use (see `client`).
        from mlflow.entities import RunStatus

        if not self.enabled:
            return None
        return RunStatus.to_string(RunStatus.from_string(self.client.get_run(self._run(run_id)).info.status))

    # --- model registry -------------------------------------------------------------------------------------------

    @_backend_call
    def register_version(
        self,
        *,
        model_name: str,
        run_id: str,
        artifact_path: str,
        tags: Mapping[str, Any] | None = None,
        description: str | None = None,
    ) -> str | None:
        """Register the artifacts at `artifact_path` of run `run_id` as a version of `model_name`.

        Idempotent: a run holds at most one version of a model, so registering again returns that version.

        Args:
            model_name: Registered model name (created on first use).
            run_id: The round run that logged the artifacts.
            artifact_path: Folder inside the run's artifacts (e.g. "checkpoints/emulator").
            tags: Version tags (validation metrics, data hash); values become strings.
            description: Version description.

        Returns:
            The version number as a string (None when disabled).
        """
        # mlflow only on first use (see `client`).
        from mlflow.exceptions import MlflowException

        if not self.enabled:
            return None
        try:
            self.client.get_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(
                model_name, tags={CAMPAIGN_TAG: self.campaign_name, CAMPAIGN_ID_TAG: self.campaign_id}
            )
        found = self.client.search_model_versions(f"name = '{_quote(model_name)}' and run_id = '{run_id}'")
        if found:
            return str(found[0].version)
        source = f"{self.client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
        version = self.client.create_model_version(
            model_name,
            source,
            run_id=run_id,
            tags={_key(k): str(v) for k, v in (tags or {}).items()},
            description=description,
        )
        return str(version.version)

    @_backend_call
    def set_alias(self, *, model_name: str, version: str, alias: str = CHAMPION) -> None:
        """Point `alias` (default `champion`) of a registered model at `version`."""
        if not self.enabled:
            return
        self.client.set_registered_model_alias(model_name, alias, str(version))

    @_backend_call
    def fetch_version(self, *, model_name: str, tag: str, value: str, dst: Path) -> Path | None:
        """Download the files of the version of `model_name` whose tag `tag` is `value`, from where the registry
        says they are (the version's source).

        Returns:
            The downloaded folder (under `dst`), or None when the registry holds no such version.
        """
        if not self.enabled:
            return None
        import mlflow.artifacts  # mlflow only on first use (see `client`)

        for v in self.client.search_model_versions(f"name = '{_quote(model_name)}'"):
            if v.tags.get(tag) == value:
                return Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=v.source,
                        dst_path=str(dst),
                        tracking_uri=self.tracking_uri,
                    )
                )
        return None

    @_backend_call
    def alias_version(self, model_name: str, alias: str = CHAMPION) -> str | None:
        """The version `alias` (default `champion`) of a registered model points at; None when the model or the
        alias does not exist."""
        # mlflow only on first use (see `client`).
        from mlflow.exceptions import MlflowException

        if not self.enabled:
            return None
        try:
            return str(self.client.get_model_version_by_alias(model_name, alias).version)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                raise
            return None

    @_backend_call
    def model_versions(self, model_name: str) -> dict[str, dict[str, str]]:
        """Versions of a registered model: version -> its tags (empty when the model does not exist)."""
        if not self.enabled:
            return {}
        versions = self.client.search_model_versions(f"name = '{_quote(model_name)}'")
        return {str(v.version): dict(v.tags) for v in versions}


def _ms(seconds: float | None) -> int | None:
    """Unix seconds as MLflow's milliseconds (None stays None: MLflow then takes now)."""
    return None if seconds is None else round(1000 * seconds)


def flatten_numeric(metrics: Mapping[str, Any], *, prefix: str = "") -> dict[str, float]:
    """Flatten nested mappings to `a.b -> float`, dropping values that are not numbers (bools count as 0/1).

    Infinities are clamped to the largest float, because MLflow stores them unreliably across backends.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_numeric(value, prefix=name))
            continue
        if isinstance(value, str):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        out[name] = number if not math.isinf(number) else math.copysign(sys.float_info.max, number)
    return out
