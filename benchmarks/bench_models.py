"""Model benchmarks: MMIN vs MMSA's own MISA and MulT on a MOSI-shaped batch (CPU, float32).

Measured (see benchmarks/README.md; the one command is `python benchmarks/run_all.py`):

1. one training step per contender: zero_grad, forward, every loss term of the model's own
   trainer, backward, the trainer's gradient clipping, the trainer's optimizer step (Adam, with
   the trainer's parameter groups and learning rates), `loss.item()`; and eval-mode inference
   (`model.eval()`, `torch.no_grad()`) of the same batch;
2. memory of those training steps, each contender in a fresh subprocess (`--memory-child`);
3. MMIN's (tiny BERT) step time against the audio/video sequence length.

Contenders (batch 16, text 50 tokens, audio 500 x 5, video 375 x 20, all lengths full):
    mmin-tiny   MMIN, registry.json's MOSI config, the project's tiny demo BERT
    mmin-base   MMIN, registry.json's MOSI config, a BERT-base-sized random encoder
    misa-base   MMSA's MISA (MMSA's MOSI config), the same BERT-base-sized random encoder
    mult        MMSA's MulT (MMSA's MOSI config: use_bert false -> text is (B, 50, 768) features)
and, for `--contenders`, variants of mmin-base that undo parts of issue 27 (CONTENDERS below):
mmin-base-ref (all of it), mmin-base-keep (`recompute` off), mmin-base-torchdrop (`dropout_kernel`
off), mmin-base-plainadam (torch's default Adam instead of the trainer's fused one).

Every model is built through `MMSA.models.AMIO` from `MMSA.get_config_regression(name, 'mosi')`
(after `import mmin_plugin`, which registers MMIN and makes MMSA run on CPU), like MMSA_run does.
Inputs come from a seeded torch.Generator; weights from torch.manual_seed.

Timing: warm-up steps first, then the contenders' repetitions are interleaved round-robin
(A B C D A B C D ...) so that a change of machine load hits every contender alike; medians are
reported, and ratios are taken between medians of the same run.

Memory method (CPU; tracemalloc does not see torch's allocations): a fresh Python process per
contender, glibc malloc with a fixed mmap threshold (MALLOC_MMAP_THRESHOLD_=131072, so freed
tensor memory goes back to the OS at once and the resident set tracks live tensors instead of
malloc's cache), and the kernel's own high-water mark of the resident set: `/proc/self/clear_refs`
<- "5" resets VmHWM just before a training step, VmHWM read after it is the exact peak RSS during
that step (no sampling, so short peaks are not missed). Reported: RSS with the libraries loaded,
RSS after building the model, RSS before the measured step (model + Adam state, gradients freed by
zero_grad), the step's peak, and peak minus pre-step (gradients + activations + temporaries).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

BATCH, TEXT_LEN, AUDIO_LEN, VIDEO_LEN = 16, 50, 500, 375
D_TEXT, D_AUDIO, D_VIDEO = 768, 5, 20
SEED = 1111
SCALING_LENGTHS = (125, 250, 500, 1000)
SCALING_LENGTHS_QUICK = (125, 250)

CONTENDERS = {
    "mmin-tiny": dict(model="mmin", bert="tiny", label="MMIN, tiny demo BERT"),
    "mmin-base": dict(model="mmin", bert="base", label="MMIN, BERT-base-sized"),
    # issue 27's "before": no trimming, the unfused attention (MMIN_ATTENTION=reference), nothing recomputed,
    # torch's dropout and torch's default (per-tensor) Adam; same weights
    "mmin-base-ref": dict(model="mmin", bert="base", label="MMIN, BERT-base-sized, before issue 27", reference=True,
                          overrides={"recompute": False, "dropout_kernel": False}, plain_adam=True),
    # recompute off: autograd keeps the LSTM workspace, each CA layer's LN(x), q, k, v and BERT's
    # feed-forward activations (same values)
    "mmin-base-keep": dict(model="mmin", bert="base", label="MMIN, BERT-base-sized, recompute off",
                           overrides={"recompute": False}),
    # one change of issue 27's third pass undone each: torch's nn.Dropout; torch's default Adam
    "mmin-base-torchdrop": dict(model="mmin", bert="base", label="MMIN, BERT-base-sized, torch's dropout",
                                overrides={"dropout_kernel": False}),
    "mmin-base-plainadam": dict(model="mmin", bert="base", label="MMIN, BERT-base-sized, torch's default Adam",
                                plain_adam=True),
    "misa-base": dict(model="misa", bert="base", label="MISA (MMSA), BERT-base-sized"),
    "mult": dict(model="mult", bert=None, label="MulT (MMSA), text features"),
}
MEM_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


# ----------------------------------------------------------------------------------------------
# building contenders
# ----------------------------------------------------------------------------------------------
def bert_dirs(cache_dir) -> dict:
    from _bert import ensure_bert_base, ensure_tiny_bert

    cache_dir = Path(cache_dir)
    return {"tiny": ensure_tiny_bert(cache_dir / "bert-tiny-demo"),
            "base": ensure_bert_base(cache_dir / "bert-base-random")}


def make_inputs(model: str, audio_len=AUDIO_LEN, video_len=VIDEO_LEN, vocab=100, seed=SEED):
    """A MOSI-shaped batch with every length full (text: MMSA's text_bert layout or features)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if model == "mult":  # use_bert false: pre-extracted BERT features
        text = torch.randn(BATCH, TEXT_LEN, D_TEXT, generator=g)
    else:
        ids = torch.randint(5, vocab, (BATCH, TEXT_LEN), generator=g)
        ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
        text = torch.stack([ids.float(), torch.ones(BATCH, TEXT_LEN), torch.zeros(BATCH, TEXT_LEN)], 1)
    audio = torch.randn(BATCH, audio_len, D_AUDIO, generator=g)
    video = torch.randn(BATCH, video_len, D_VIDEO, generator=g)
    lengths = {"audio_lengths": torch.full((BATCH,), audio_len, dtype=torch.long),
               "vision_lengths": torch.full((BATCH,), video_len, dtype=torch.long)}
    labels = torch.rand(BATCH, 1, generator=g) * 6 - 3
    return text, audio, video, lengths, labels


class Contender:
    """A built model with `step()` (one training step, returns phase times) and `infer()`."""

    def __init__(self, name, dirs, audio_len=AUDIO_LEN, video_len=VIDEO_LEN, seed=SEED):
        import MMSA
        import torch
        from MMSA.models import AMIO

        import mmin_plugin  # noqa: F401  (registers 'mmin', MMSA on CPU)

        spec = CONTENDERS[name]
        self.name, self.kind = name, spec["model"]
        args = MMSA.get_config_regression(self.kind, "mosi")
        args.update(device=torch.device("cpu"), train_mode="regression", cur_seed=1,
                    feature_dims=[D_TEXT, D_AUDIO, D_VIDEO], seq_lens=[TEXT_LEN, audio_len, video_len])
        vocab = 100
        if spec["bert"]:
            args["pretrained"] = str(dirs[spec["bert"]])
            from _bert import vocab_size

            vocab = vocab_size(dirs[spec["bert"]])
        args.update(spec.get("overrides", {}))
        self.args = args
        torch.manual_seed(seed)
        self.model = AMIO(args)
        self.model.train()
        self.params = sum(p.numel() for p in self.model.parameters())
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.vocab = vocab
        self.set_inputs(audio_len, video_len, seed)
        getattr(self, f"_setup_{self.kind}")()

    def set_inputs(self, audio_len, video_len, seed=SEED):
        self.text, self.audio, self.video, self.lengths, self.labels = make_inputs(
            self.kind, audio_len, video_len, self.vocab, seed)

    def set_real_fraction(self, fraction):
        """Same padded tensors, every clip's real audio / video length (and text tokens) = fraction
        of the padded size; the steps past it are zeroed, as in a feature file."""
        import torch

        la, lv = max(1, int(self.audio.shape[1] * fraction)), max(1, int(self.video.shape[1] * fraction))
        self.lengths = {"audio_lengths": torch.full((BATCH,), la, dtype=torch.long),
                        "vision_lengths": torch.full((BATCH,), lv, dtype=torch.long)}
        self.audio[:, la:], self.video[:, lv:] = 0, 0
        lt = max(2, int(TEXT_LEN * fraction))
        if self.text.dim() == 3 and self.text.shape[1] == 3:  # text_bert layout: ids, mask, segments
            self.text[:, :, lt:] = 0
        else:
            self.text[:, lt:] = 0

    # -- per model: optimizer, loss and clipping exactly as its trainer sets them up -------------
    def _setup_mmin(self):
        import torch

        from mmin_plugin.integration.trainer import MMINTrainer

        self.trainer = MMINTrainer(self.args)
        self.optimizer = self.trainer._optimizer(self.model)  # fused Adam where torch has it (make_adam)
        if CONTENDERS[self.name].get("plain_adam"):  # the same groups with torch's default implementation
            self.optimizer = torch.optim.Adam([{k: g[k] for k in ("params", "lr", "weight_decay", "name")}
                                               for g in self.optimizer.param_groups])
        self.clip = float(self.args.get("grad_clip", -1.0) or -1.0)
        net = self.trainer._mmin(self.model)

        reference = CONTENDERS[self.name].get("reference", False)

        def forward():
            if not reference:
                return self.model(self.text, self.audio, self.video, **self.lengths)
            saved = os.environ.get("MMIN_ATTENTION")
            os.environ["MMIN_ATTENTION"] = "reference"
            try:
                return self.model(self.text, self.audio, self.video, **self.lengths, trim_padding=False)
            finally:
                if saved is None:
                    os.environ.pop("MMIN_ATTENTION")
                else:
                    os.environ["MMIN_ATTENTION"] = saved

        def loss_fn(outputs):
            loss, _ = net.total_loss(outputs, self.labels)
            if not torch.isfinite(loss):  # the trainer's check
                raise FloatingPointError("non-finite loss")
            return loss

        self._forward, self._loss = forward, loss_fn
        self._clip_on = self.clip > 0

    def _setup_misa(self):
        import torch
        from MMSA.trains import ATIO

        a = self.args
        self.trainer = ATIO().getTrain(a)  # MMSA's MISA trainer: its own loss helpers are used
        self.trainer.model = self.model
        self.optimizer = torch.optim.Adam(filter(lambda p: p.requires_grad, self.model.parameters()),
                                          lr=a.learning_rate)
        self.clip = float(a.grad_clip)
        tr = self.trainer

        def forward():
            return self.model(self.text, self.audio, self.video)

        def loss_fn(outputs):
            cls_loss = tr.criterion(outputs["M"], self.labels)
            diff_loss, domain_loss = tr.get_diff_loss(), tr.get_domain_loss()
            recon_loss, cmd_loss = tr.get_recon_loss(), tr.get_cmd_loss()
            sim = cmd_loss if a.use_cmd_sim else domain_loss
            return cls_loss + a.diff_weight * diff_loss + a.sim_weight * sim + a.recon_weight * recon_loss

        self._forward, self._loss = forward, loss_fn
        self._clip_on = self.clip != -1.0

    def _setup_mult(self):
        import torch

        a = self.args
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=a.learning_rate)
        self.clip = float(a.grad_clip)
        crit = torch.nn.L1Loss()

        def forward():
            return self.model(self.text, self.audio, self.video)

        self._forward, self._loss = forward, lambda outputs: crit(outputs["M"], self.labels)
        self._clip_on = self.clip != -1.0

    # -- the measured operations ----------------------------------------------------------------
    def step(self, scoped=False):
        """One training step; returns its wall seconds per phase and its process CPU seconds.
        scoped=True labels the phases for torch.profiler."""
        import contextlib

        import torch
        from torch.autograd.profiler import record_function

        scope = record_function if scoped else (lambda _name: contextlib.nullcontext())
        c0, t0 = time.process_time(), time.perf_counter()
        with scope("[phase] zero_grad + forward + loss"):
            self.optimizer.zero_grad()
            loss = self._loss(self._forward())
        t1 = time.perf_counter()
        with scope("[phase] backward"):
            loss.backward()
        t2 = time.perf_counter()
        with scope("[phase] clip + optimizer step"):
            if self._clip_on:
                torch.nn.utils.clip_grad_value_([p for p in self.model.parameters() if p.requires_grad],
                                                self.clip)
            self.optimizer.step()
            loss.item()
        t3 = time.perf_counter()
        return StepTime(t1 - t0, t2 - t1, t3 - t2, time.process_time() - c0)

    def infer(self):
        import torch

        self.model.eval()
        try:
            with torch.no_grad():
                t0 = time.perf_counter()
                self._forward()["M"].sum().item()
                return time.perf_counter() - t0
        finally:
            self.model.train()


# ----------------------------------------------------------------------------------------------
# timing helpers
# ----------------------------------------------------------------------------------------------
class StepTime(tuple):
    """(forward+loss, backward, clip+optimizer) wall seconds, and the process CPU seconds."""

    def __new__(cls, fwd, bwd, opt, cpu):
        return super().__new__(cls, (fwd, bwd, opt, cpu))

    wall = property(lambda self: self[0] + self[1] + self[2])
    cpu = property(lambda self: self[3])


PHASES = ("forward_loss", "backward", "clip_optimizer")


def _step_summary(steps) -> dict:
    return {"step_s": _summary([s.wall for s in steps]), "cpu_s": _summary([s.cpu for s in steps]),
            "phases_s": {k: statistics.median(s[i] for s in steps) for i, k in enumerate(PHASES)}}


def _sparsemax_backend():
    try:
        import importlib

        import torch

        sm = importlib.import_module("mmin_plugin.modeling.sparsemax")  # the package re-exports the function
        return sm.backend_for(torch.zeros(2)) if hasattr(sm, "backend_for") else "sort (single path)"
    except Exception as e:  # noqa: BLE001
        return f"unknown ({type(e).__name__})"


def _summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "all": [round(v, 5) for v in values]}


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def round_robin(fns: dict, repeats: int, warmup: int, log=print):
    """fns: name -> callable returning seconds (float) or a tuple of phase seconds.
    Returns name -> list of results, or {'error': ...} for a contender that raised."""
    results, errors = {n: [] for n in fns}, {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
        except Exception as e:  # noqa: BLE001 - a failing contender is reported, not fatal
            errors[name] = _err(e)
            log(f"  {name}: FAILED in warm-up: {errors[name]}")
            traceback.print_exc(file=sys.stderr)
    for r in range(repeats):
        for name, fn in fns.items():
            if name in errors:
                continue
            try:
                results[name].append(fn())
            except Exception as e:  # noqa: BLE001
                errors[name] = _err(e)
                log(f"  {name}: FAILED: {errors[name]}")
        log(f"  round {r + 1}/{repeats}: " + ", ".join(
            f"{n} {_total(results[n][-1]):.3f}s" for n in fns if n not in errors and results[n]))
    return {n: ({"error": errors[n]} if n in errors else results[n]) for n in fns}


def _total(x):
    return x.wall if isinstance(x, StepTime) else x


def loglog_slope(xs, ys):
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


# ----------------------------------------------------------------------------------------------
# memory (fresh subprocess per contender)
# ----------------------------------------------------------------------------------------------
def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(name, cache_dir, audio_len=AUDIO_LEN, video_len=VIDEO_LEN, steps=1):
    import resource

    import MMSA  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from MMSA.models import AMIO  # noqa: F401
    from MMSA.trains import ATIO  # noqa: F401

    import mmin_plugin  # noqa: F401

    mb = 1 / 1024
    out = {"name": name, "rss_libs_mb": _status_kb("VmRSS") * mb}
    dirs = bert_dirs(cache_dir)
    c = Contender(name, dirs, audio_len, video_len)
    gc.collect()
    out["rss_model_mb"] = _status_kb("VmRSS") * mb
    c.step()  # warm-up: allocates the Adam state and one-time caches
    peaks = []
    for _ in range(steps):
        c.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        pre = _status_kb("VmRSS")
        exact = _reset_hwm()
        c.step()
        peak = _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peaks.append((peak, pre))
    peak, pre = max(peaks)
    out.update(rss_pre_step_mb=pre * mb, step_peak_rss_mb=peak * mb, step_transient_mb=(peak - pre) * mb,
               method="VmHWM after clear_refs" if exact else "ru_maxrss (clear_refs unavailable: upper bound)",
               process_maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * mb,
               params_mb=c.params * 4 / 2 ** 20)
    print("MEMJSON " + json.dumps(out), flush=True)


def _spin():  # the competing process: one core's worth of pure-Python work
    while True:
        pass


def busy_child(cache_dir, repeats, threads):
    """In a fresh process (torch's thread pool starts with `threads`): median serial MMIN (tiny BERT)
    step, as `compare` runs one, idle and then with one competing CPU-bound process."""
    import multiprocessing

    import torch

    from mmin_plugin.runs.threads import trial_threads

    n = trial_threads(None) if threads == "trial_threads" else torch.get_num_threads()
    torch.set_num_threads(n)
    c = Contender("mmin-tiny", bert_dirs(cache_dir))
    c.step()
    idle = statistics.median(c.step().wall for _ in range(repeats))
    hog = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
    hog.start()
    try:
        time.sleep(1.0)
        n_busy = trial_threads(None) if threads == "trial_threads" else n
        torch.set_num_threads(n_busy)
        c.step()
        loaded = statistics.median(c.step().wall for _ in range(repeats))
    finally:
        hog.kill()
        hog.join()
    print("BUSYJSON " + json.dumps({"threads_idle": n, "threads_busy": n_busy, "idle_s": idle, "busy_s": loaded,
                                    "ratio": loaded / idle}), flush=True)


def measure_busy(cache_dir, repeats, log=print, timeout=900):
    """Serial MMIN step idle vs with one competing process: torch's default threads (fixed at start)
    and `runs.threads.trial_threads()` (the free cores, sampled before each phase), fresh processes."""
    res = {}
    for mode in ("torch-default", "trial_threads"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--busy-child", mode, "--cache", str(cache_dir),
               "--repeats", str(repeats)]
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("BUSYJSON ")), None)
            res[mode] = (json.loads(line[len("BUSYJSON "):]) if line else
                         {"error": f"exit {p.returncode}: {(p.stderr.strip().splitlines() or ['?'])[-1][:200]}"})
        except subprocess.TimeoutExpired:
            res[mode] = {"error": f"timed out after {timeout}s"}
        r = res[mode]
        log(f"  busy {mode}: " + (f"idle {r['idle_s']:.3f}s ({r['threads_idle']} threads), busy {r['busy_s']:.3f}s "
                                  f"({r['threads_busy']} threads): {r['ratio']:.2f}x" if "ratio" in r else r["error"]))
    return res


def measure_memory(names, cache_dir, log=print, timeout=900):
    res = {}
    for name in names:
        env = dict(os.environ, **MEM_ENV)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", name, "--cache", str(cache_dir)]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("MEMJSON ")), None)
            if line is None:
                tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
                res[name] = {"error": f"exit {p.returncode}: {tail[:200]}"}
            else:
                res[name] = json.loads(line[len("MEMJSON "):])
        except subprocess.TimeoutExpired:
            res[name] = {"error": f"timed out after {timeout}s"}
        peak = res[name].get("step_peak_rss_mb")
        log(f"  memory {name}: " + (f"step peak RSS {peak:.0f} MB" if peak else res[name]["error"])
            + f" ({time.perf_counter() - t0:.0f}s)")
    return res


# ----------------------------------------------------------------------------------------------
# profile of one MMIN training step
# ----------------------------------------------------------------------------------------------
def profile_step(name, cache_dir, rows=15, log=print):
    """torch.profiler over one training step (after one warm-up step); returns markdown."""
    import torch
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    import mmin_plugin.modeling.model as mm

    c = Contender(name, bert_dirs(cache_dir))
    c.step()
    plain = c.step()
    net = c.model.Model
    labels = {}
    scopes = {"features.bert": "text: BERT", "features.text_proj": "text: projection",
              "features.audio_rnn": "audio LSTM", "features.video_rnn": "video LSTM",
              "cin": "CIN (encoders, D, losses)", "fusion": "fusion + head"}
    handles, stack = [], []
    for mod_name, module in net.named_modules():
        label = scopes.get(mod_name)
        parts = mod_name.split(".")
        if label is None and len(parts) == 3 and parts[:2] == ["fin", "cross"]:
            label = f"FIN CA stack {parts[2].replace('_from_', ' <- ')} ({len(module.layers)} layers)"
        if label is None and len(parts) == 3 and parts[:2] == ["fin", "guided"]:
            label = "FIN coarse-guided CA (all modalities)"
        if label is None:
            continue
        labels[label] = mod_name

        def pre(_m, _i, label=label):
            rf = record_function(f"[fwd] {label}")
            rf.__enter__()
            stack.append(rf)

        def post(_m, _i, _o):
            stack.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    originals = {fn: getattr(mm, fn) for fn in ("projected_sparsemax_attention", "sparsemax_reference_attention")}

    def scoped(fn):
        def call(*a, **kw):
            with record_function("[fwd] sparsemax attention (inside CA)"):
                return originals[fn](*a, **kw)
        return call

    for fn in originals:
        setattr(mm, fn, scoped(fn))
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            with record_function("[step] total"):
                c.step(scoped=True)
    finally:
        for fn, orig in originals.items():
            setattr(mm, fn, orig)
        for h in handles:
            h.remove()
    ev = prof.key_averages()
    total_us = next(e.cpu_time_total for e in ev if e.key == "[step] total")
    out = [f"Profile of one {CONTENDERS[name]['label']} training step (batch {BATCH}, text {TEXT_LEN}, "
           f"audio {AUDIO_LEN}, video {VIDEO_LEN}, {torch.get_num_threads()} threads, sparsemax backend "
           f"{_sparsemax_backend()}): {total_us / 1e6:.3f}s under the profiler; the step before it, "
           f"unprofiled: {plain.wall:.3f}s = fwd+loss {plain[0]:.3f} + backward {plain[1]:.3f} "
           f"+ clip+Adam {plain[2]:.3f}", ""]
    out += ["| phase / forward scope | calls | CPU ms (incl. children) | % of step |", "|---|---:|---:|---:|"]
    for e in [e for e in ev if e.key.startswith("[phase]")] + sorted(
            (e for e in ev if e.key.startswith("[fwd]")), key=lambda e: -e.cpu_time_total):
        name = e.key[8:] if e.key.startswith("[phase]") else "forward: " + e.key[6:]
        out.append(f"| {name} | {e.count} | {e.cpu_time_total / 1e3:.1f} | {100 * e.cpu_time_total / total_us:.1f} |")
    out += ["", "| backward node (autograd) | calls | CPU ms (incl. children) | % of step |", "|---|---:|---:|---:|"]
    bw = sorted((e for e in ev if e.key.startswith("autograd::engine::evaluate_function:")),
                key=lambda e: -e.cpu_time_total)[:rows]
    for e in bw:
        out.append(f"| {e.key.split(': ', 1)[1]} | {e.count} | {e.cpu_time_total / 1e3:.1f} | "
                   f"{100 * e.cpu_time_total / total_us:.1f} |")
    out += ["", "| op (self time) | calls | self CPU ms | % of step |", "|---|---:|---:|---:|"]
    ops = sorted((e for e in ev if not e.key.startswith(("[", "autograd::engine"))),
                 key=lambda e: -e.self_cpu_time_total)[:rows]
    for e in ops:
        out.append(f"| {e.key} | {e.count} | {e.self_cpu_time_total / 1e3:.1f} | "
                   f"{100 * e.self_cpu_time_total / total_us:.1f} |")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------
def run(cache_dir, quick=False, repeats=None, warmup=None, memory=True, scaling=True,
        contenders=None, busy=True, log=print) -> dict:
    import torch

    repeats = repeats or (1 if quick else 5)
    warmup = 1 if warmup is None else warmup
    names = list(contenders or CONTENDERS)
    t_start = time.perf_counter()
    log(f"[models] BERT encoders in {cache_dir} (built once, random weights)")
    dirs = bert_dirs(cache_dir)
    built, result = {}, {"config": {"batch": BATCH, "text_len": TEXT_LEN, "audio": [AUDIO_LEN, D_AUDIO],
                                    "video": [VIDEO_LEN, D_VIDEO], "repeats": repeats, "warmup": warmup,
                                    "seed": SEED, "dtype": "float32", "device": "cpu"},
                         "contenders": {}}
    for name in names:
        rec = result["contenders"].setdefault(name, {"label": CONTENDERS[name]["label"]})
        try:
            t0 = time.perf_counter()
            c = Contender(name, dirs)
            built[name] = c
            rec.update(params=c.params, trainable=c.trainable,
                       optimizer={k: v for k, v in c.optimizer.defaults.items() if k in ("lr", "weight_decay")},
                       lr_groups=[g["lr"] for g in c.optimizer.param_groups], grad_clip=c.clip)
            log(f"[models] built {name}: {c.params / 1e6:.2f}M params ({time.perf_counter() - t0:.1f}s)")
        except Exception as e:  # noqa: BLE001
            rec["error"] = f"build: {_err(e)}"
            log(f"[models] {name}: build FAILED: {rec['error']}")
            traceback.print_exc(file=sys.stderr)

    log(f"[models] training step: {warmup} warm-up + {repeats} interleaved repetitions")
    train = round_robin({n: c.step for n, c in built.items()}, repeats, warmup, log)
    log(f"[models] eval inference: {warmup} warm-up + {repeats} interleaved repetitions")
    infer = round_robin({n: c.infer for n, c in built.items() if not isinstance(train[n], dict)},
                        repeats, warmup, log)
    for name in built:
        rec = result["contenders"][name]
        if isinstance(train[name], dict):
            rec["error"] = f"train step: {train[name]['error']}"
            continue
        st = _step_summary(train[name])
        rec.update(train_step_s=st["step_s"], train_cpu_s=st["cpu_s"], phases_s=st["phases_s"])
        if isinstance(infer.get(name), dict):
            rec["error"] = f"inference: {infer[name]['error']}"
        elif name in infer:
            rec["infer_batch_s"] = _summary(infer[name])
            rec["infer_samples_per_s"] = BATCH / rec["infer_batch_s"]["median"]
    half = [n for n in ("mmin-base", "mmin-base-ref", "misa-base", "mmin-tiny") if n in built and "train_step_s" in
            result["contenders"][n]]
    if half:
        log(f"[models] half real lengths (same padded tensors): {', '.join(half)}")
        try:
            for n in half:
                built[n].set_real_fraction(0.5)
            tr = round_robin({n: built[n].step for n in half}, repeats, warmup, log)
            inf = round_robin({n: built[n].infer for n in half}, repeats, warmup, log)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            tr = inf = {n: {"error": _err(e)} for n in half}
        for n in half:
            if isinstance(tr[n], dict) or isinstance(inf[n], dict):
                result["contenders"][n]["half"] = {"error": (tr[n] if isinstance(tr[n], dict) else inf[n])["error"]}
                continue
            st = _step_summary(tr[n])
            result["contenders"][n]["half"] = {"train_step_s": st["step_s"], "train_cpu_s": st["cpu_s"],
                                               "infer_samples_per_s": BATCH / statistics.median(inf[n])}
            built[n].set_inputs(AUDIO_LEN, VIDEO_LEN)
    keep = built.get("mmin-tiny")
    built.clear()
    gc.collect()

    if scaling:
        lengths = SCALING_LENGTHS_QUICK if quick else SCALING_LENGTHS
        log(f"[models] MMIN (tiny BERT) step time vs audio length {lengths} (video = 0.75 x audio)")
        sc = {"lengths": [], "error": None}
        try:
            c = keep or Contender("mmin-tiny", dirs)
            fns = {}
            for la in lengths:
                lv = int(round(0.75 * la))

                def fn(la=la, lv=lv):
                    c.set_inputs(la, lv)
                    return c.step()

                fns[f"{la}/{lv}"] = fn
            res = round_robin(fns, repeats, warmup, log)
            for la in lengths:
                key = f"{la}/{int(round(0.75 * la))}"
                if isinstance(res[key], dict):
                    sc["lengths"].append({"audio": la, "video": int(round(0.75 * la)), "error": res[key]["error"]})
                    continue
                sc["lengths"].append({"audio": la, "video": int(round(0.75 * la)), **_step_summary(res[key])})
            ok = [r for r in sc["lengths"] if "step_s" in r]
            if len(ok) >= 2:
                sc["exponent"] = loglog_slope([r["audio"] for r in ok], [r["step_s"]["median"] for r in ok])
                sc["exponent_cpu"] = loglog_slope([r["audio"] for r in ok], [r["cpu_s"]["median"] for r in ok])
                for a, b in zip(ok, ok[1:]):
                    b["local_exponent"] = loglog_slope([a["audio"], b["audio"]],
                                                       [a["step_s"]["median"], b["step_s"]["median"]])
        except Exception as e:  # noqa: BLE001
            sc["error"] = _err(e)
            traceback.print_exc(file=sys.stderr)
        result["scaling"] = sc
    keep = c = None
    gc.collect()

    if busy:
        log("[models] serial MMIN step (tiny BERT) idle and with one competing CPU-bound process")
        result["busy"] = measure_busy(cache_dir, repeats, log)
    if memory:
        log("[models] peak memory: one fresh subprocess per contender")
        result["memory"] = measure_memory(names, cache_dir, log)
    result["seconds"] = time.perf_counter() - t_start
    result["torch_threads"] = torch.get_num_threads()
    result["sparsemax_backend"] = _sparsemax_backend()
    return result


# ----------------------------------------------------------------------------------------------
# markdown
# ----------------------------------------------------------------------------------------------
def _f(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def _ratio(a, b):
    return None if a is None or b is None else a / b


def _medians(result, key):
    return {n: r[key]["median"] for n, r in result["contenders"].items() if key in r}


def tables(result) -> str:
    cs = result["contenders"]
    med, cpu = _medians(result, "train_step_s"), _medians(result, "train_cpu_s")
    thr = {n: r["infer_samples_per_s"] for n, r in cs.items() if "infer_samples_per_s" in r}
    cfg = result["config"]
    out = [f"### Training step (batch {cfg['batch']}, text {cfg['text_len']}, "
           f"audio {cfg['audio'][0]}x{cfg['audio'][1]}, "
           f"video {cfg['video'][0]}x{cfg['video'][1]}, full lengths; median of {cfg['repeats']} after "
           f"{cfg['warmup']} warm-up, {result.get('torch_threads', '?')} torch threads, "
           f"MMIN sparsemax backend {result.get('sparsemax_backend', '?')})", "",
           "| model | params (M) | step wall (s) | min-max (s) | step CPU (s) | fwd+loss (s) | backward (s) "
           "| clip+Adam (s) | x MISA-base (wall / CPU) | x MulT (wall / CPU) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, r in cs.items():
        if "train_step_s" not in r:
            params = f"{r['params'] / 1e6:.2f}" if r.get("params") else "-"
            out.append(f"| {r['label']} | {params} | FAILED: {r.get('error', '?')} | | | | | | | |")
            continue
        s, p = r["train_step_s"], r["phases_s"]
        out.append(f"| {r['label']} | {r['params'] / 1e6:.2f} | {s['median']:.3f} | {s['min']:.3f}-{s['max']:.3f} "
                   f"| {cpu[n]:.3f} | {p['forward_loss']:.3f} | {p['backward']:.3f} | {p['clip_optimizer']:.3f} "
                   f"| {_f(_ratio(med[n], med.get('misa-base')), 2)} / {_f(_ratio(cpu[n], cpu.get('misa-base')), 2)} "
                   f"| {_f(_ratio(med[n], med.get('mult')), 2)} / {_f(_ratio(cpu[n], cpu.get('mult')), 2)} |")
    out.append("\nMMSA's own trainers step the optimizer every `update_epochs` batches (MISA 2, MulT 8); "
               "here every contender does zero_grad + forward + loss + backward + clip + optimizer step "
               "each step, so the clip+Adam column is what accumulation would amortise.")
    out += ["", f"### Eval inference (model.eval(), no_grad, batch {cfg['batch']}, same shapes)", "",
            "| model | batch wall (s) | samples/s | x MISA-base (throughput) | x MulT (throughput) |",
            "|---|---:|---:|---:|---:|"]
    for n, r in cs.items():
        if "infer_samples_per_s" not in r:
            out.append(f"| {r['label']} | FAILED: {r.get('error', '?')} | | | |")
            continue
        out.append(f"| {r['label']} | {r['infer_batch_s']['median']:.3f} | {thr[n]:.2f} "
                   f"| {_f(_ratio(thr[n], thr.get('misa-base')), 2)} | {_f(_ratio(thr[n], thr.get('mult')), 2)} |")
    mem = result.get("memory")
    if mem:
        out += ["", "### Memory of a training step (fresh process per contender; resident set, MB)", "",
                "| model | params (MB) | RSS libs | RSS after build | RSS before step (model+Adam) "
                "| step peak RSS | peak - before step | peak - libs | x MISA-base (peak - libs) |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        base = mem.get("misa-base", {})
        base_fp = base["step_peak_rss_mb"] - base["rss_libs_mb"] if "step_peak_rss_mb" in base else None
        for n, m in mem.items():
            label = CONTENDERS[n]["label"]
            if "error" in m:
                out.append(f"| {label} | FAILED: {m['error']} | | | | | | | |")
                continue
            fp = m["step_peak_rss_mb"] - m["rss_libs_mb"]
            out.append(f"| {label} | {m['params_mb']:.0f} | {m['rss_libs_mb']:.0f} | {m['rss_model_mb']:.0f} "
                       f"| {m['rss_pre_step_mb']:.0f} | {m['step_peak_rss_mb']:.0f} | {m['step_transient_mb']:.0f} "
                       f"| {fp:.0f} | {_f(_ratio(fp, base_fp), 2)} |")
        methods = {m.get("method") for m in mem.values() if "method" in m}
        out.append(f"\nMethod: peak = kernel high-water mark of the resident set ({', '.join(sorted(methods))}) "
                   "during a training step that follows a warm-up step, each contender in a fresh process "
                   "with MALLOC_MMAP_THRESHOLD_=131072 (freed tensors return to the OS at once); "
                   "'peak - before step' = gradients + activations + temporaries; 'peak - libs' = everything "
                   "the model adds to a process that has imported torch/transformers/MMSA.")
    halves = {n: r for n, r in cs.items() if "half" in r}
    if halves:
        out += ["", "### Half the real lengths (same padded tensors: every clip's audio, video and text real "
                "length = half the padded size)", "",
                "| model | full step (s) | half step (s) | half / full | full eval samples/s | half eval samples/s "
                "| half step x MISA-base half |", "|---|---:|---:|---:|---:|---:|---:|"]
        mh = halves.get("misa-base", {}).get("half", {}).get("train_step_s", {}).get("median")
        for n, r in halves.items():
            h = r["half"]
            if "error" in h:
                out.append(f"| {r['label']} | FAILED: {h['error']} | | | | | |")
                continue
            hs = h["train_step_s"]["median"]
            out.append(f"| {r['label']} | {med[n]:.3f} | {hs:.3f} | {hs / med[n]:.2f} | {thr.get(n, 0):.2f} "
                       f"| {h['infer_samples_per_s']:.2f} | {_f(_ratio(hs, mh), 2)} |")
    busy = result.get("busy")
    if busy:
        out += ["", "### Serial MMIN (tiny BERT) step with one competing CPU-bound process (fresh process each)", "",
                "| threads | idle step (s) | threads idle / busy | step with a competitor (s) | busy / idle |",
                "|---|---:|---:|---:|---:|"]
        for mode, r in busy.items():
            if "error" in r:
                out.append(f"| {mode} | FAILED: {r['error']} | | | |")
                continue
            out.append(f"| {mode} | {r['idle_s']:.3f} | {r['threads_idle']} / {r['threads_busy']} | {r['busy_s']:.3f} "
                       f"| {r['ratio']:.2f} |")
    sc = result.get("scaling")
    if sc:
        out += ["", "### MMIN (tiny BERT) training step vs sequence length (text 50, video = 0.75 x audio)", ""]
        if sc.get("error"):
            out.append(f"FAILED: {sc['error']}")
        out += ["| audio steps | video steps | step wall (s) | step CPU (s) | fwd+loss (s) | backward (s) "
                "| x shortest | local exponent |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        ok = [r for r in sc["lengths"] if "step_s" in r]
        for r in sc["lengths"]:
            if "step_s" not in r:
                out.append(f"| {r['audio']} | {r['video']} | FAILED: {r['error']} | | | | | |")
                continue
            out.append(f"| {r['audio']} | {r['video']} | {r['step_s']['median']:.3f} | {r['cpu_s']['median']:.3f} "
                       f"| {r['phases_s']['forward_loss']:.3f} | {r['phases_s']['backward']:.3f} "
                       f"| {r['step_s']['median'] / ok[0]['step_s']['median']:.2f} "
                       f"| {_f(r.get('local_exponent'), 2)} |")
        if "exponent" in sc:
            out.append(f"\nFitted growth exponent (least-squares log-log slope of the median step time vs audio "
                       f"length): **{sc['exponent']:.2f}** on wall time, {sc['exponent_cpu']:.2f} on CPU time "
                       f"(1.0 = linear, 2.0 = quadratic).")
    out += ["", targets(result)]
    return "\n".join(out)


def _verdict(value, limit, tol=0.05):
    if value is None:
        return "not measured"
    if value <= limit * (1 - tol):
        return "met"
    if value <= limit:
        return "met (within noise)"
    if value <= limit * (1 + tol):
        return "missed (within noise)"
    return "missed"


def targets(result) -> str:
    med, cpu = _medians(result, "train_step_s"), _medians(result, "train_cpu_s")
    r1, r1c = _ratio(med.get("mmin-base"), med.get("misa-base")), _ratio(cpu.get("mmin-base"), cpu.get("misa-base"))
    r2, r2c = _ratio(med.get("mmin-tiny"), med.get("mult")), _ratio(cpu.get("mmin-tiny"), cpu.get("mult"))
    sc = result.get("scaling") or {}
    exp, expc = sc.get("exponent"), sc.get("exponent_cpu")
    last = ([r.get("local_exponent") for r in sc.get("lengths", []) if r.get("local_exponent") is not None]
            or [None])[-1]
    longest = max([r["audio"] for r in sc.get("lengths", []) if "step_s" in r] or [0])
    scale_verdict = _verdict(exp, 1.0)
    if exp is not None and longest < max(SCALING_LENGTHS):
        scale_verdict += f" (inconclusive: lengths <= {longest} only, run without --quick)"
    cs = result["contenders"]
    thr = {n: r.get("infer_samples_per_s") for n, r in cs.items()}
    mem = result.get("memory") or {}
    fp = {n: m["step_peak_rss_mb"] - m["rss_libs_mb"] for n, m in mem.items() if "step_peak_rss_mb" in m}
    half = (cs.get("mmin-base", {}).get("half") or {}).get("train_step_s", {}).get("median")
    r_half = _ratio(half, med.get("mmin-base"))
    busy = ((result.get("busy") or {}).get("trial_threads") or {}).get("ratio")
    extra = [
        f"| MMIN peak memory (peak - libs) <= MISA's | {_f(_ratio(fp.get('mmin-base'), fp.get('misa-base')), 2)} x "
        f"| {_verdict(_ratio(fp.get('mmin-base'), fp.get('misa-base')), 1.0)} |",
        f"| MMIN eval throughput >= MISA's | {_f(_ratio(thr.get('mmin-base'), thr.get('misa-base')), 2)} x "
        f"| {_verdict(_ratio(thr.get('misa-base'), thr.get('mmin-base')), 1.0)} |",
        f"| MMIN step at half the real lengths <= 0.6 x full | {_f(r_half, 2)} x | {_verdict(r_half, 0.6)} |",
        f"| serial step with one competing process <= 2.5 x idle (trial_threads) | {_f(busy, 2)} x "
        f"| {_verdict(busy, 2.5)} |"]
    return "\n".join([
        "### Targets (verdict on wall-clock medians; CPU-time figure for comparison)", "",
        "| target | measured (wall; CPU time) | verdict |", "|---|---|---|",
        f"| MMIN step with BERT-base-sized encoder <= 1.3 x MISA's | {_f(r1, 2)} x; {_f(r1c, 2)} x "
        f"| {_verdict(r1, 1.3)} |",
        f"| MMIN step with tiny BERT faster than MulT's | {_f(r2, 2)} x MulT; {_f(r2c, 2)} x | {_verdict(r2, 1.0)} |",
        f"| MMIN step time grows at most linearly with sequence length | exponent {_f(exp, 2)}; {_f(expc, 2)} "
        f"(last segment {_f(last, 2)}) | {scale_verdict} |", *extra])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--cache", default=None, help="where the random BERTs are kept (default: OUT)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--busy-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    cache = Path(args.cache or args.out)
    if args.memory_child:
        memory_child(args.memory_child, cache)
        return
    if args.busy_child:
        busy_child(cache, args.repeats, args.busy_child)
        return
    res = run(cache, quick=args.quick)
    print(tables(res))


if __name__ == "__main__":
    main()
