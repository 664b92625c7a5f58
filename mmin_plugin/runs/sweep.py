"""Running a list of trials on a backend: the output-folder rule (refuse / `resume` / `overwrite`),
retries, one overall progress bar, and the per-trial callback that rebuilds the tables.
Design notes: docs/design/experiments.md.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..bounded import UnreadableFile
from ..errors import MMINConfigError
from .backends import make_backend
from .environment import expects_gpu
from .fingerprint import changed_parts, fingerprint
from .lock import LOCK_FILE, OutLock, lock_out
from .options import SweepOptions
from .outputs import write_outputs
from .record import FINAL, TrialRecord, check_trial_folder, read_record, write_record
from .trial import Trial

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["SweepOptions", "prepare_out", "run_trials", "check_folders", "OUTPUT_GLOBS", "FINAL"]

#: what this package writes at the top of an output folder (removed by `overwrite`, with `runs/`)
OUTPUT_GLOBS = ("compare-*", "ablation-*", "tune-*", "curves-*")


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
        runs = out / "runs"
        if runs.is_symlink():  # rmtree would refuse it; say so rather than leave it
            lock.release()
            raise UnreadableFile(f"{runs}: expected the folder of this output's trials; found a symlink (to "
                                 f"{runs.readlink()}); refused, nothing was changed")
        shutil.rmtree(runs, ignore_errors=True)  # never follows a link inside it
        for pattern in OUTPUT_GLOBS:
            for p in out.glob(pattern):
                if p.is_file() or p.is_symlink():  # a link is removed, never what it points to
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


def _line(rec: TrialRecord) -> str:
    if rec.status == "pruned":
        return f"pruned after {rec.epochs} epoch(s) ({rec.wall_time_s:.1f} s)"
    if rec.status == "ok":
        m = rec.metrics
        brief = " ".join(f"{k} {m[k]:.4f}" for k in ("MAE", "Corr") if m.get(k) is not None)
        if rec.valid_score is not None and not m:
            brief = f"valid {rec.key_eval} {rec.valid_score:.4f}"
        return f"ok in {rec.wall_time_s:.1f} s, {rec.epochs} epoch(s) (stopped by {rec.stopped_by}), {brief}"
    return f"FAILED after {rec.wall_time_s:.1f} s: {rec.error}"


def _same_config(rec: TrialRecord, trial: Trial) -> bool:
    """Whether a record without a fingerprint (an older version's) was made with `trial`'s overrides
    and config file path (all an older row records)."""
    return (rec.overrides == json.loads(json.dumps(trial.config, default=str))
            and (rec.config_file or None) == (trial.config_file or None))


def _why_rerun(rec: TrialRecord, trial: Trial, opts: SweepOptions) -> Optional[str]:
    """Why a finished record cannot stand for `trial` (its fingerprint differs: which parts), or None."""
    use_gpu = expects_gpu(trial.gpu_ids, opts.gpus_per_trial, opts.backend)
    changed = changed_parts(rec.fingerprint, fingerprint(trial, use_gpu=use_gpu))
    if changed is None:
        if opts.resume_across_code_versions and _same_config(rec, trial):
            return None
        return ("its row has no fingerprint of this version (written by an older one); "
                "--resume-across-code-versions keeps such a row when its overrides and config file are the same")
    if opts.resume_across_code_versions:
        changed = [c for c in changed if not c.startswith("code")]
    return f"changed since it ran: {', '.join(changed)}" if changed else None


def _keep_row(trial: Trial, rec: TrialRecord) -> None:
    """The driver's copy of a record: on a multi-node Ray cluster without a shared file system the
    worker's row.json is on another machine, and the tables are rebuilt from row.json files here."""
    if read_record(trial.out, *trial.key)[0] != rec:
        check_trial_folder(trial.out, *trial.key)
        trial.path.mkdir(parents=True, exist_ok=True)
        write_record(trial.path, rec)


def check_folders(trials: Sequence[Trial]) -> None:
    """Refuse (UnreadableFile, by name) a trial folder that is not the project's (a symlink on the way
    from `--out`, or outside it), before anything runs or is written."""
    for t in trials:
        check_trial_folder(t.out, *t.key)


def run_trials(trials: Sequence[Trial], opts: SweepOptions, desc: str = "trials",
               on_row: Optional[Callable[[Trial, TrialRecord], None]] = None,
               source: Optional[Callable[[], Optional[Trial]]] = None, total: Optional[int] = None,
               on_final: Optional[Callable[[Trial, TrialRecord], None]] = None) -> List[TrialRecord]:
    """Run every trial not yet finished (with `opts.resume`, a trial whose record says 'ok' or
    'pruned' and whose fingerprint is unchanged is skipped), at most `backend.slots` at once, a
    failed one up to `opts.retries` more times unless its error is deterministic
    (trial.DETERMINISTIC_ERRORS; each attempt in a clean folder, the previous one's files in
    `attempt-<k>/`); `on_row(trial, record)` after each finished attempt (once the freed slots are
    refilled, like the trial's TensorBoard events and figures), `on_final(trial, record)` once per
    trial with its last record (a skipped one included). `source()`, when given, is asked for
    another trial whenever a slot is free and `trials` are all out (None: no more), so a search can
    ask for its next trial knowing every result so far (`total`: its expected count, for the
    progress bar). A trial folder that is not the project's (record.check_trial_folder) is refused
    before anything runs. Returns the records in `trials` order, then the source's."""
    check_folders(trials)
    rows: Dict[tuple, TrialRecord] = {}
    todo, order = [], list(trials)
    for t in trials:
        old, problem = read_record(t.out, *t.key) if opts.resume else (None, None)
        if problem:
            print(f"[{desc}] resume: {problem}; unreadable, rerunning", flush=True)
        why = _why_rerun(old, t, opts) if old is not None and old.finished else "not finished"
        if why is None:
            rows[t.key] = old
            if on_final is not None:
                on_final(t, old)
        else:
            if old is not None and old.status == "ok":
                print(f"[{desc}] resume: {t.label or t.run} {t.dataset} seed {t.seed} runs again: {why}", flush=True)
            todo.append(t)
    if opts.resume:
        print(f"[{desc}] resume: {len(rows)} of {len(trials)} trial(s) already finished, skipped; "
              f"running {len(todo)}", flush=True)
    if not todo and source is None:
        return [rows[t.key] for t in trials]
    backend = make_backend(opts)
    progress = _Progress(max(total or 0, len(trials)), len(rows), backend.slots, desc)
    attempts: Dict[tuple, int] = {}
    submitted: Dict[tuple, float] = {}
    queue, in_flight, n = list(todo), 0, 0
    finished: List[tuple] = []  # (trial, record) whose outputs and on_row are still to do

    def next_trial() -> Optional[Trial]:
        if queue:
            return queue.pop(0)
        t = source() if source is not None else None
        if t is not None:
            check_folders([t])
            order.append(t)
        return t

    def finish(ft: Trial, frec: TrialRecord) -> None:
        write_outputs(ft, frec)  # TensorBoard and figures here on the driver, off the trials' time
        if on_row is not None:
            on_row(ft, frec)

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
            t, rec = backend.wait()
            in_flight -= 1
            again = (not rec.finished and attempts[t.key] <= opts.retries
                     and rec.deterministic is not True)  # bad data/config, NaN loss: same again
            if not rec.finished and not again:
                progress.failed_one()
            progress.finished(time.monotonic() - submitted[t.key], final=not again)
            progress.write(f"[{desc}] {t.label or t.run} {t.dataset} seed {t.seed}: {_line(rec)}"
                           + ("; retrying" if again else "")
                           + ("; not retried (the same inputs fail the same way)" if rec.deterministic is True
                              and attempts[t.key] <= opts.retries else ""))
            if again:
                logger.warning("trial %s/%s/seed%s failed (attempt %d of %d), retrying: %s", t.run, t.dataset,
                               t.seed, attempts[t.key], opts.retries + 1, rec.error)
                queue.insert(0, t)
            rows[t.key] = rec
            _keep_row(t, rec)
            if again:  # before the retry starts and moves this attempt's files to attempt-<k>/
                finish(t, rec)
            else:
                finished.append((t, rec))
            if on_final is not None and not again:
                on_final(t, rec)
    finally:
        progress.close()
        backend.close()
    return [rows[t.key] for t in order if t.key in rows]
