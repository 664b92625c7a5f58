"""Running a list of trials on a backend: the output-folder rule (refuse / `resume` / `overwrite`),
retries, one overall progress bar, and the per-trial callback that rebuilds the tables.
Design notes: docs/design/experiments.md.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..atomic import atomic_write_text
from ..errors import MMINConfigError
from .backends import make_backend
from .fingerprint import changed_parts, fingerprint
from .lock import LOCK_FILE, OutLock, lock_out
from .trial import ROW_FILE, Trial, read_row, read_row_checked, write_outputs

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["SweepOptions", "prepare_out", "run_trials", "OUTPUT_GLOBS"]

#: what this package writes at the top of an output folder (removed by `overwrite`, with `runs/`)
OUTPUT_GLOBS = ("compare-*", "ablation-*", "tune-*", "curves-*")


@dataclasses.dataclass
class SweepOptions:
    """How trials run: `backend` ('serial' | 'ray' | 'slurm'), Ray's `address`, resources per trial,
    `max_concurrent`, `retries` (extra attempts of a failed trial), `resume` / `overwrite`,
    `resume_across_code_versions` (resume keeps rows whose fingerprint differs only in the code
    versions, and older rows without a fingerprint whose overrides match),
    `pool` (Ray: long-lived actors, a forked child per trial; else a Ray task per trial),
    `reuse_workers` (Ray tasks: a worker process runs several trials), `slurm_params` (submitit's
    executor parameters; 'cluster': 'local' runs the jobs locally), and (for
    tests) `num_cpus` of a local Ray instance and `trial_fn` (default trial.run_trial)."""

    backend: str = "serial"
    address: Optional[str] = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: Optional[int] = None
    retries: int = 0
    resume: bool = False
    overwrite: bool = False
    num_cpus: Optional[int] = None
    trial_fn: Optional[Callable] = None
    reuse_workers: bool = False
    resume_across_code_versions: bool = False
    pool: bool = True
    slurm_params: Dict = dataclasses.field(default_factory=dict)


def prepare_out(out: Path, resume: bool, overwrite: bool) -> OutLock:
    """Take `out`'s lock (lock.py: refused, nothing changed, while another live process holds it),
    then: a non-empty `out` is refused unless `resume` (keep it, finished trials are skipped) or
    `overwrite` (its `runs/` and this package's tables are removed first; other files stay).
    Returns the held lock: the caller releases it when its sweep ends (else it is released when
    the process exits)."""
    if resume and overwrite:
        raise MMINConfigError("resume and overwrite: expected at most one of them; found both")
    out = Path(out)
    existed = out.is_dir()
    lock = lock_out(out)
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) if existed else []
    if entries and not (resume or overwrite):
        lock.release()
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise MMINConfigError(f"output folder {out}: expected an empty or new folder; found {len(entries)} "
                              f"entries ({shown}). Pass --resume to continue it (finished trials are skipped) "
                              "or --overwrite to replace its results; nothing was changed")
    if entries and overwrite:
        shutil.rmtree(out / "runs", ignore_errors=True)
        for pattern in OUTPUT_GLOBS:
            for p in out.glob(pattern):
                if p.is_file():
                    p.unlink()
    return lock


class _Progress:
    """One bar for the sweep: trials done / running / failed and an ETA from the finished trials'
    wall times (submission to result) x trials left / trials at once."""

    def __init__(self, total: int, skipped: int, slots: int, desc: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=skipped, desc=desc, unit="trial", dynamic_ncols=True)
        self.total, self.done, self.failed, self.running, self.slots = total, skipped, 0, 0, max(1, slots)
        self.walls: List[float] = []
        self._refresh()

    def _refresh(self) -> None:
        eta = "?"
        if self.walls:
            left = self.total - self.done
            secs = sum(self.walls) / len(self.walls) * left / min(self.slots, max(1, left))
            eta = time.strftime("%H:%M:%S", time.gmtime(secs)) if left else "0"
        self.bar.set_postfix_str(f"done {self.done}, running {self.running}, failed {self.failed}, ETA {eta}")

    def failed_one(self) -> None:
        self.failed += 1

    def started(self) -> None:
        self.running += 1
        self._refresh()

    def finished(self, elapsed: float, final: bool) -> None:
        """`elapsed`: seconds from the trial's submission to its row (process start and queueing included)."""
        self.running -= 1
        self.walls.append(float(elapsed))
        if final:
            self.done += 1
            self.bar.update(1)
        self._refresh()

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()


def _line(row: Dict) -> str:
    if row.get("status") == "pruned":
        return f"pruned after {row.get('epochs')} epoch(s) ({float(row.get('wall_time_s') or 0):.1f} s)"
    if row.get("status") == "ok":
        m = row.get("metrics") or {}
        brief = " ".join(f"{k} {m[k]:.4f}" for k in ("MAE", "Corr") if k in m)
        if row.get("valid_score") is not None and not m:
            brief = f"valid {row.get('key_eval')} {row['valid_score']:.4f}"
        return (f"ok in {row['wall_time_s']:.1f} s, {row['epochs']} epoch(s) (stopped by {row['stopped_by']}), "
                f"{brief}")
    return f"FAILED after {float(row.get('wall_time_s') or 0):.1f} s: {row.get('error')}"


def _same_config(row: Dict, trial: Trial) -> bool:
    """Whether a row without a fingerprint (an older version's) was made with `trial`'s overrides
    and config file path (all an older row records)."""
    return (row.get("overrides") == json.loads(json.dumps(trial.config, default=str))
            and (row.get("config_file") or None) == (trial.config_file or None))


def _why_rerun(row: Dict, trial: Trial, opts: SweepOptions) -> Optional[str]:
    """Why a finished row cannot stand for `trial` (its fingerprint differs: which parts), or None."""
    changed = changed_parts(row.get("fingerprint"), fingerprint(trial))
    if changed is None:
        if opts.resume_across_code_versions and _same_config(row, trial):
            return None
        return ("its row has no fingerprint (written by an older version); --resume-across-code-versions keeps "
                "such a row when its overrides and config file are the same")
    if opts.resume_across_code_versions:
        changed = [c for c in changed if not c.startswith("code")]
    return f"changed since it ran: {', '.join(changed)}" if changed else None


def _keep_row(trial: Trial, row: Dict) -> None:
    """The driver's copy of a row: on a multi-node Ray cluster without a shared file system the
    worker's row.json is on another machine, and the tables are rebuilt from row.json files here."""
    if read_row(trial.directory) != row:
        trial.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(trial.path / ROW_FILE, json.dumps(row, indent=1, default=str))


#: row statuses that end a trial: 'pruned' (stopped by tune's pruner) is final but not a result
FINAL = ("ok", "pruned")


def run_trials(trials: Sequence[Trial], opts: SweepOptions, desc: str = "trials",
               on_row: Optional[Callable[[Trial, Dict], None]] = None,
               source: Optional[Callable[[], Optional[Trial]]] = None, total: Optional[int] = None,
               on_final: Optional[Callable[[Trial, Dict], None]] = None) -> List[Dict]:
    """Run every trial not yet finished (with `opts.resume`, a trial whose row.json says 'ok' is
    skipped), at most `backend.slots` at once, a failed one up to `opts.retries` more times unless
    its error is deterministic (trial.DETERMINISTIC_ERRORS; each attempt in a clean folder, the
    previous one's files in `attempt-<k>/`);
    `on_row(trial, row)` after each finished attempt (once the freed slots are refilled, like the
    trial's TensorBoard events and figures), `on_final(trial, row)` once per trial with its
    last row (a skipped one included). `source()`, when given, is asked for another trial whenever a
    slot is free and `trials` are all out (None: no more), so a search can ask for its next trial
    knowing every result so far (`total`: its expected count, for the progress bar). Returns the
    rows in `trials` order, then the source's."""
    rows: Dict[tuple, Dict] = {}
    todo, order = [], list(trials)
    for t in trials:
        old, problem = read_row_checked(t.directory) if opts.resume else (None, None)
        if problem:
            print(f"[{desc}] resume: {problem}; counted as not finished, runs again", flush=True)
        elif old is not None and (old["run"], old["dataset"], old["seed"]) != t.key:
            print(f"[{desc}] resume: {t.path / ROW_FILE} is the row of {old['run']}/{old['dataset']}/seed"
                  f"{old['seed']}, not of this trial; runs again", flush=True)
            old = None
        why = _why_rerun(old, t, opts) if old is not None and old.get("status") in FINAL else "not finished"
        if why is None:
            rows[t.key] = old
            if on_final is not None:
                on_final(t, old)
        else:
            if old is not None and old.get("status") == "ok":
                print(f"[{desc}] resume: {t.label or t.run} {t.dataset} seed {t.seed} runs again: {why}", flush=True)
            todo.append(t)
    if opts.resume:
        print(f"[{desc}] resume: {len(rows)} of {len(trials)} trial(s) already finished, skipped; "
              f"running {len(todo)}", flush=True)
    if not todo and source is None:
        return [rows[t.key] for t in trials]
    backend = make_backend(opts.backend, opts.address, opts.cpus_per_trial, opts.gpus_per_trial, opts.max_concurrent,
                           opts.num_cpus, opts.trial_fn, opts.reuse_workers, opts.pool, opts.slurm_params)
    progress = _Progress(max(total or 0, len(trials)), len(rows), backend.slots, desc)
    attempts: Dict[tuple, int] = {}
    submitted: Dict[tuple, float] = {}
    queue, in_flight, n = list(todo), 0, 0
    finished: List[tuple] = []  # (trial, row) whose outputs and on_row are still to do

    def next_trial() -> Optional[Trial]:
        if queue:
            return queue.pop(0)
        t = source() if source is not None else None
        if t is not None:
            order.append(t)
        return t

    def finish(ft: Trial, frow: Dict) -> None:
        write_outputs(ft, frow)  # TensorBoard and figures here on the driver, off the trials' time
        if on_row is not None:
            on_row(ft, frow)

    try:
        while True:
            while in_flight < backend.slots:
                t = next_trial()
                if t is None:
                    break
                attempts[t.key] = attempts.get(t.key, 0) + 1
                n += attempts[t.key] == 1
                retry = f" (attempt {attempts[t.key]})" if attempts[t.key] > 1 else ""
                progress.write(f"[{desc}] {n}/{len(todo)} {t.label or t.run} {t.dataset} seed {t.seed}: "
                               f"running{retry}")
                backend.submit(t)
                submitted[t.key] = time.monotonic()
                in_flight += 1
                progress.started()
            # the driver's work on finished trials, while the refilled slots run
            while finished:
                finish(*finished.pop(0))
            if not in_flight:
                break
            t, row = backend.wait()
            in_flight -= 1
            again = (row.get("status") not in FINAL and attempts[t.key] <= opts.retries
                     and row.get("deterministic") is not True)  # bad data/config, NaN loss: same again
            if row.get("status") not in FINAL and not again:
                progress.failed_one()
            progress.finished(time.monotonic() - submitted[t.key], final=not again)
            progress.write(f"[{desc}] {t.label or t.run} {t.dataset} seed {t.seed}: {_line(row)}"
                           + ("; retrying" if again else "")
                           + ("; not retried (the same inputs fail the same way)" if row.get("deterministic") is True
                              and attempts[t.key] <= opts.retries else ""))
            if again:
                logger.warning("trial %s/%s/seed%s failed (attempt %d of %d), retrying: %s", t.run, t.dataset,
                               t.seed, attempts[t.key], opts.retries + 1, row.get("error"))
                queue.insert(0, t)
            rows[t.key] = row
            _keep_row(t, row)
            if again:  # before the retry starts and moves this attempt's files to attempt-<k>/
                finish(t, row)
            else:
                finished.append((t, row))
            if on_final is not None and not again:
                on_final(t, row)
    finally:
        progress.close()
        backend.close()
    return [rows[t.key] for t in order if t.key in rows]
