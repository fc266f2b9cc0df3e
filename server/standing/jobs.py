"""A standing coordinator's jobs on disk: RUN_DIR/jobs/<id>/ holds job.json (its state), job.toml (a submitted job
file), events.jsonl (the job's own log: submitted, offered, refused, ended) and run/ (its run folder: rounds.jsonl,
checkpoints, the final model).

Every change is written atomically before it is acted on, so a coordinator killed at any point restarts with the same
queue: a job that was running resumes from its run folder's checkpoint, queued ones follow in submission order.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from fedtl.common.checkpoint import write_json_atomic
from fedtl.common.errors import ConfigError
from fedtl.common.jobs import FINAL_STATES, JobStatus

ID_PREFIX = "job-"


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    flags: tuple[str, ...]
    has_toml: bool
    state: str = "queued"
    detail: str = ""
    submitted: float = 0.0
    started: float = 0.0
    ended: float = 0.0
    rounds: int = 0

    def status(self, folder: Path) -> JobStatus:
        return JobStatus(self.id, self.kind, self.state, self.detail, self.submitted, self.started, self.ended, self.rounds, str(folder))


class JobStore:
    def __init__(self, root: Path) -> None:
        self.root = root / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._jobs: dict[str, Job] = {}
        for path in sorted(self.root.glob(f"{ID_PREFIX}*/job.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                data["flags"] = tuple(data["flags"])
                job = Job(**data)
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise ConfigError(f"{path}: not a job record this release can read ({exc}); move the folder aside") from None
            self._jobs[job.id] = job

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def run_dir(self, job_id: str) -> Path:
        return self.folder(job_id) / "run"

    def toml_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "job.toml"

    def submit(self, kind: str, flags: list[str], toml: str, rounds: int) -> Job:
        number = max((int(j.id[len(ID_PREFIX):]) for j in self._jobs.values()), default=0) + 1
        job = Job(f"{ID_PREFIX}{number:04d}", kind, tuple(flags), bool(toml), submitted=time.time(), rounds=rounds)
        self.folder(job.id).mkdir(parents=True, exist_ok=False)
        if toml:
            self.toml_path(job.id).write_text(toml, encoding="utf-8")
        self._save(job)
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.id)

    def next_to_run(self) -> Job | None:
        """A job left running by a coordinator that died comes first (it resumes), then the oldest queued one."""
        jobs = self.all()
        return next((j for j in jobs if j.state == "running"), None) or next((j for j in jobs if j.state == "queued"), None)

    def update(self, job: Job, **changes: object) -> Job:
        job = replace(job, **changes)  # type: ignore[arg-type]
        if job.state in FINAL_STATES and not job.ended:
            job = replace(job, ended=time.time())
        self._save(job)
        return job

    def log(self, job_id: str, message: str) -> None:
        """One line of the job's own log, durably (fedtl logs merges it with the round log by time)."""
        path = self.folder(job_id) / "events.jsonl"
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"ts": round(time.time(), 3), "message": message}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _save(self, job: Job) -> None:
        data = asdict(job)
        data["flags"] = list(job.flags)
        write_json_atomic(self.folder(job.id) / "job.json", data)
        self._jobs[job.id] = job
