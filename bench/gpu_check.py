"""One prepared GPU check of paulkit: what it measures, in one run of about 3-5 minutes.

On one CUDA GPU, in this order (each part on its own: an error is recorded and the run goes
on; the JSON is rewritten after every part, so a killed run still leaves what it measured):

1. environment: device, torch / CUDA / cuDNN, Python, git commit, date; setup costs;
2. import: ``import paulkit``; only if a dependency is missing (e.g. ipywidgets), a stub
   module is put in ``sys.modules`` and the JSON says which;
3. unit tests: the CUDA-only test(s) (``tests/test_evaluation.py::test_cuda_matches_cpu``)
   in a pytest subprocess;
4. step share: one PAUL step's memory work (memories + PEDAL + IPFL + backward, as
   ``bench/bench_step.py``) at Market scale (N = 12,936) as a share of the ResNet-50 PatchNet
   forward+backward at 384x128, 42 images x 2 views. Goal: **< 5 %**;
5. adaptation throughput: the real ``paulkit.train.adapt_epoch`` (forward, memory updates,
   PEDAL + IPFL, backward, SGD) at 256x128, 42 images x 2 views, N = 12,936 slots, with bf16
   autocast and in fp32, against a bare torchvision ResNet-50 forward+backward+SGD on the same
   batches (and two closer references: the stride-1 backbone alone, the PatchNet with a
   trivial loss). Goal: adaptation **>= 90 %** of the bare backbone's images/s;
6. evaluation at Market-1501 scale (3,368 x 15,913, 1536-d) on the GPU, with the CPU time
   and agreement;
7. a short synth_gpu run: synthetic data, ``train.pretrain`` then ``train.adapt`` (per-epoch
   losses, images/s, mAP / rank-1 at epoch 0 and at the end);
8. clustering (jaccard + DBSCAN at N = 12,936) when ``paulkit/cluster.py`` exists.

Run on a GPU machine, from the repository root, with no install step::

    python3 bench/gpu_check.py     # writes $OUT/gpu.json (else build/gpu.json)

then, with that JSON copied to docs/gpu.json, ``python3 bench/render_gpu.py`` rewrites the
"GPU" section of docs/benchmarks.md. When the copy has no ``.git``, add ``--commit <sha>``
so that the JSON names the commit measured.

``--dry-run`` runs the same code end to end on the CPU with tiny sizes (seconds);
``--parts step_share,evaluation`` runs some parts only; every size is a flag (``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.abc
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

T_START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

SCHEMA = "paulkit-gpu-check/1"
PARTS = ("environment", "import", "unit_tests", "step_share", "adaptation", "evaluation")
PARTS += ("synth_run", "cluster")
CUDA_TESTS = ["tests/test_evaluation.py::test_cuda_matches_cpu"]

# Sizes: the GPU run, and what --dry-run replaces them with (same code, tiny problem).
FULL = dict(
    device="cuda",
    arch="resnet50",
    step_slots=12936,
    step_height=384,
    step_width=128,
    step_rounds=7,
    batch=42,
    views=2,
    slots=12936,
    height=256,
    width=128,
    warmup=5,
    steps=20,
    eval_query=3368,
    eval_gallery=15913,
    eval_ids=750,
    eval_distractors=2798,
    eval_repeat=3,
    synth_size="small",
    pretrain_epochs=2,
    adapt_epochs=2,
    limit_train=0,
    workers=8,
    pretrain_batch=0,  # 0: the preset's
    cluster_n=12936,
)
DRY = dict(
    FULL,
    device="cpu",
    arch="small",
    step_slots=512,
    step_height=64,
    step_width=32,
    step_rounds=2,
    batch=4,
    slots=256,
    height=64,
    width=32,
    warmup=1,
    steps=2,
    eval_query=200,
    eval_gallery=600,
    eval_ids=50,
    eval_distractors=100,
    eval_repeat=1,
    synth_size="tiny",
    pretrain_epochs=2,
    adapt_epochs=1,
    limit_train=48,
    workers=0,
    pretrain_batch=8,
    cluster_n=256,
)
PART_LIMIT_S = dict(
    environment=60,
    unit_tests=150,
    step_share=120,
    adaptation=150,
    evaluation=120,
    synth_run=240,
    cluster=90,
)


def log(msg: str) -> None:
    print(f"[gpu_check {time.perf_counter() - T_START:6.1f}s] {msg}", flush=True)


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:2000]


class PartTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise PartTimeout in the main thread after ``seconds`` (SIGALRM; no-op elsewhere)."""
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise PartTimeout(f"part stopped after its {seconds:.0f} s limit")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- 1. environment


def git_commit() -> tuple[str, str]:
    """(commit, how it was found): git, else .git/HEAD's ref file, else "unknown"."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=20
        )
        if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", out.stdout.strip()):
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=20,
            )
            flag = " (with uncommitted changes)" if dirty.stdout.strip() else ""
            return out.stdout.strip(), "git rev-parse HEAD" + flag
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        head = (ROOT / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref:"):
            ref = head.split(None, 1)[1]
            f = ROOT / ".git" / ref
            if f.exists():
                return f.read_text().strip(), f".git/{ref}"
            packed = ROOT / ".git" / "packed-refs"
            if packed.exists():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0], ".git/packed-refs"
        elif re.fullmatch(r"[0-9a-f]{40}", head):
            return head, ".git/HEAD"
    except OSError:
        pass
    return "unknown", "no git, no .git"


def part_environment(ctx) -> dict:
    import numpy
    import torch
    import torchvision

    commit, how = git_commit()
    if ctx.args.commit:
        commit, how = ctx.args.commit, "--commit"
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
        "commit": commit,
        "commit_source": how,
        "device_kind": ctx.device.type,
    }
    if ctx.device.type == "cuda":
        t0 = time.perf_counter()
        torch.zeros(1, device=ctx.device)
        torch.cuda.synchronize()
        ctx.setup["cuda_init_s"] = time.perf_counter() - t0
        props = torch.cuda.get_device_properties(ctx.device)
        env.update(
            device=torch.cuda.get_device_name(ctx.device),
            device_memory_gib=round(props.total_memory / 2**30, 1),
            capability=".".join(map(str, torch.cuda.get_device_capability(ctx.device))),
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
            gpu_count=torch.cuda.device_count(),
        )
    else:
        env["device"] = f"CPU ({platform.machine()}, dry run)"
    return env


# --------------------------------------------------------------------------- 2. import


class _Block(importlib.abc.MetaPathFinder):
    """Makes the named top-level modules unimportable (``--simulate-missing``)."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (simulated)", name=fullname)
        return None


class _PlaceholderMeta(type):
    """Attributes of a placeholder are placeholders too, so module-level set-up code such as
    ``matplotlib.rcParams.update(...)`` runs through a stub without effect."""

    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _placeholder(attr, cls.__module__)


def _placeholder(attr: str, module: str) -> type:
    def __init__(self, *args, **kwargs):
        pass

    return _PlaceholderMeta(attr, (), {"__module__": module, "__init__": __init__})


def _stub(name: str) -> types.ModuleType:
    """An empty module whose every attribute is a placeholder class (enough for
    ``from x import y`` at import time; using it fails, which the parts would record)."""
    import importlib.machinery

    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    mod.__path__ = []  # a package: its submodules are stubbed one by one as they fail
    mod.__paulkit_stub__ = True

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _placeholder(attr, name)

    mod.__getattr__ = __getattr__
    return mod


def import_paulkit(simulate_missing=()) -> dict:
    """``import paulkit``; stub a missing third-party module only when the import fails."""
    if simulate_missing:
        for n in list(sys.modules):
            if n.split(".")[0] in simulate_missing:
                del sys.modules[n]
        sys.meta_path.insert(0, _Block(simulate_missing))
    stubbed, errors = [], []
    t0 = time.perf_counter()
    for _ in range(25):
        try:
            import paulkit

            break
        except ModuleNotFoundError as e:
            name = e.name or ""
            if not name or name.split(".")[0] == "paulkit" or name in sys.modules:
                raise
            errors.append(_err(e))
            for n in list(sys.modules):  # forget the half-imported package
                if n == "paulkit" or n.startswith("paulkit."):
                    del sys.modules[n]
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                sub = ".".join(parts[:i])
                if sub not in sys.modules:
                    sys.modules[sub] = _stub(sub)
                    stubbed.append(sub)
    else:
        raise ImportError(f"import paulkit still fails after stubbing {stubbed}")
    return {
        "ok": True,
        "seconds": time.perf_counter() - t0,
        "paulkit_version": paulkit.__version__,
        "paulkit_file": str(Path(paulkit.__file__).resolve().relative_to(ROOT)),
        "stubbed_modules": stubbed,
        "used_stub": bool(stubbed),
        "import_errors": errors,
        "simulated_missing": sorted(simulate_missing),
    }


def part_import(ctx) -> dict:
    sim = [m for m in (ctx.args.simulate_missing or "").split(",") if m]
    return import_paulkit(sim)


# --------------------------------------------------------------------------- 3. unit tests


def part_unit_tests(ctx) -> dict:
    tests = ctx.args.tests.split(",") if ctx.args.tests else CUDA_TESTS
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=ctx.args.pytest_timeout
        )
    except subprocess.TimeoutExpired as e:
        raise TimeoutError(f"pytest ran past {ctx.args.pytest_timeout} s") from e
    text = out.stdout + out.stderr
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors")}
    last = [line for line in text.splitlines() if line.strip()][-1:] or [""]
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last[0]):
        counts["errors" if what.startswith("error") else what] = int(n)
    res = {
        "command": " ".join(["python3", "-m", "pytest", *cmd[3:]]),
        "tests": tests,
        "returncode": out.returncode,
        **counts,
        "seconds": time.perf_counter() - t0,
        "summary": last[0].strip("= "),
    }
    if out.returncode != 0:
        res["error"] = f"pytest exit {out.returncode}: " + text[-1500:]
    return res


# --------------------------------------------------------------------------- helpers


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_gib(device):
    import torch

    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# --------------------------------------------------------------------------- 4. step share


def _step_times(BS, n, p, d, b, num, e, dev, rounds):
    """bench_step.py's paulkit step and floor, interleaved: lists of seconds."""
    import torch

    from paulkit import memory

    feats, emb, bank, centers, index = BS.make_inputs(n, p, d, b, num, e, dev)
    pm = memory.PatchMemory(n, p, d).to(dev)
    im = memory.ImageMemory(n, e).to(dev)
    all_idx = torch.arange(n, device=dev)
    pm.update(all_idx, bank)  # the initialisation pass
    im.update(all_idx, centers, num_views=1)
    bank_pnd = pm.bank.transpose(0, 1)
    first_pbd = feats.view(b, num, p, d)[:, 0].transpose(0, 1).contiguous()

    def step():
        return BS.paulkit_step(pm, im, feats, emb, index, num)

    def floor():
        return BS.floor_step(bank_pnd, first_pbd)

    step()
    floor()  # warm-up
    t_step, t_floor = [], []
    for _ in range(rounds):  # interleaved, as bench_step.py
        t_floor.append(BS.timed(floor, dev)[0])
        t_step.append(BS.timed(step, dev)[0])
    return t_step, t_floor


def part_step_share(ctx) -> dict:
    import bench_step as BS  # bench/bench_step.py: the same inputs and step
    import torch

    from paulkit import models

    S, dev = ctx.sizes, ctx.device
    n, p, d, b, num, e = S["step_slots"], 6, 256, S["batch"], S["views"], 6 * 128
    t_step, t_floor = _step_times(BS, n, p, d, b, num, e, dev, S["step_rounds"])
    _free(dev)
    # The network it sits in: ResNet-50 PatchNet forward+backward, as bench_step.py (fp32),
    # and as training runs it on CUDA (bf16 autocast, channels_last).
    torch.manual_seed(0)
    model = models.PatchNet(arch=S["arch"]).to(dev)
    x = torch.randn(b * num, 3, S["step_height"], S["step_width"], device=dev)
    net = {}
    for mode in ("fp32", "amp"):
        amp = mode == "amp" and dev.type == "cuda"
        xx = x.contiguous(memory_format=torch.channels_last) if amp else x
        mm = model.to(memory_format=torch.channels_last) if amp else model
        ctx_amp = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
            if amp
            else contextlib.nullcontext
        )

        def fwd_bwd(mm=mm, xx=xx, ctx_amp=ctx_amp):
            with ctx_amp():
                out = mm(xx)
            out.embedding.float().square().mean().backward()

        times = []
        for i in range(S["step_rounds"] + 1):
            dt = BS.timed(fwd_bwd, dev)[0]
            if i:
                times.append(dt)
        net[mode] = statistics.median(times)
    med_step, med_floor = statistics.median(t_step), statistics.median(t_floor)
    del model, x
    _free(dev)
    return {
        "slots": n,
        "patches": p,
        "dim": d,
        "batch": b,
        "views": num,
        "embed": e,
        "rounds": S["step_rounds"],
        "arch": S["arch"],
        "input": f"{S['step_height']}x{S['step_width']}",
        "step_ms": 1000 * med_step,
        "floor_ms": 1000 * med_floor,
        "step_x_floor": med_step / med_floor,
        "net_fwd_bwd_ms": 1000 * net["fp32"],
        "net_fwd_bwd_amp_ms": 1000 * net["amp"],
        "share_pct": 100 * med_step / net["fp32"],
        "share_amp_pct": 100 * med_step / net["amp"],
        "goal_share_pct": 5.0,
        "meets_goal": 100 * med_step / net["fp32"] < 5.0,
        "note": "share_pct as bench_step.py --device cuda (network in fp32); share_amp_pct "
        "against the bf16 autocast + channels_last network",
    }


# --------------------------------------------------------------------------- 5. adaptation


def _cfg(ctx, *extra):
    from paulkit import config as C

    S = ctx.sizes
    sets = [
        f"model.arch={S['arch']}",
        "model.weights=none",
        f"data.height={S['height']}",
        f"data.width={S['width']}",
        f"adapt.batch_size={S['batch']}",
        f"adapt.num_views={S['views']}",
        "cpu_threads=0",  # keep --threads (a dry run on the CPU); on a GPU it does nothing
        *extra,
    ]
    return C.override(C.get_preset("synth_gpu"), *sets), sets


def _adapt_optimizer(model, a):
    from paulkit import train

    if hasattr(train, "_adapt_optimizer"):
        return train._adapt_optimizer(model, a)
    import torch

    groups = model.param_groups()  # as paulkit.train._adapt_optimizer
    params = list(groups["backbone"]) + list(groups["new"])
    return torch.optim.SGD(params, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)


def _bare_rate(kind, batches, rt, a, steps, warmup, arch_model=None) -> float:
    """Views per second of a plain forward+backward+SGD over the same batches."""
    import torch
    import torch.nn.functional as F
    import torchvision

    from paulkit import models, train

    dev = rt.device
    torch.manual_seed(0)
    if kind == "torchvision_resnet50":
        net = torchvision.models.resnet50(weights=None)
        loss_fn = lambda out, n: F.cross_entropy(  # noqa: E731
            out.float(), torch.arange(n, device=dev) % 1000
        )
    elif kind == "backbone_stride1":
        net, _ = models.resnet_backbone("resnet50", None, last_stride=1)
        loss_fn = lambda out, n: out.float().mean()  # noqa: E731
    else:  # the adaptation PatchNet itself with a trivial loss: no memories, no PAUL losses
        net = arch_model
        loss_fn = lambda out, n: out.embedding.float().square().mean()  # noqa: E731
    net = net.to(dev).train()
    if rt.channels_last:
        net = net.to(memory_format=torch.channels_last)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)

    def run(n_steps):
        for i in range(n_steps):
            views, _ = batches[i % len(batches)]
            x = rt.to_device(views.flatten(0, 1))
            with rt.autocast():
                out = net(x)
            loss = loss_fn(out, x.shape[0])
            opt.zero_grad(set_to_none=True)
            train._backward_step(loss, opt, rt)
            float(loss.detach())  # one sync per step, as adapt_epoch's statistics

    run(warmup)
    _sync(dev)
    t0 = time.perf_counter()
    run(steps)
    _sync(dev)
    dt = time.perf_counter() - t0
    n_views = sum(batches[i % len(batches)][0].shape[0] for i in range(steps)) * a.num_views
    return n_views / dt


def part_adaptation(ctx) -> dict:
    import torch
    import torch.nn.functional as F

    from paulkit import memory, runtime, train

    S, dev = ctx.sizes, ctx.device
    n, b, num = S["slots"], S["batch"], S["views"]
    res = {
        "slots": n,
        "batch": b,
        "views": num,
        "input": f"{S['height']}x{S['width']}",
        "arch": S["arch"],
        "warmup_steps": S["warmup"],
        "timed_steps": S["steps"],
        "inputs": "random images resident on the device (data loading excluded: see synth_run)",
        "goal_ratio_pct": 90.0,
        "modes": {},
    }
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):  # a few distinct batches, reused cyclically
        views = torch.randn(b, num, 3, S["height"], S["width"], generator=g).to(dev)
        batches.append((views, torch.randperm(n, generator=g)[:b]))
    for mode, amp in (("bf16", True), ("fp32", False)):
        log(f"adaptation: {mode}")
        try:
            cfg, _ = _cfg(ctx, f"amp={amp}")
            rt = runtime.make_runtime(cfg, dev, distributed=False)
            a, m = cfg.adapt, cfg.model
            _reset_peak(dev)
            torch.manual_seed(0)
            model = train.build_model(cfg, None, pretrain=False, backbone_weights=False)
            model = model.to(rt.device)
            if rt.channels_last:
                model = model.to(memory_format=torch.channels_last)
            opt = _adapt_optimizer(model, a)
            trained = {id(p) for gr in opt.param_groups for p in gr["params"]}
            for p in model.parameters():  # frozen, as train.adapt does
                if id(p) not in trained:
                    p.requires_grad_(False)
            pm = memory.PatchMemory(n, m.num_patches, m.patch_dim, a.memory_momentum).to(dev)
            im = memory.ImageMemory(n, m.num_patches * m.embed_dim, a.memory_momentum).to(dev)
            all_idx = torch.arange(n, device=dev)  # the initialisation pass, random features
            pf = F.normalize(torch.randn(n, m.num_patches, m.patch_dim, device=dev), dim=-1)
            pm.update(all_idx, pf)
            im.update(all_idx, torch.randn(n, m.num_patches * m.embed_dim, device=dev), num_views=1)
            del pf
            warm = [batches[i % len(batches)] for i in range(S["warmup"])]
            timed = [batches[i % len(batches)] for i in range(S["steps"])]
            train.adapt_epoch(model, warm, opt, pm, im, rt, a, progress=False)
            _sync(dev)
            t0 = time.perf_counter()
            stats = train.adapt_epoch(model, timed, opt, pm, im, rt, a, progress=False)
            _sync(dev)
            dt = time.perf_counter() - t0
            adapt_views = S["steps"] * b * num / dt
            peak = _peak_gib(dev)
            del pm, im, opt
            _free(dev)
            refs = {}
            for kind in ("torchvision_resnet50", "backbone_stride1", "patchnet_trivial_loss"):
                try:
                    refs[kind] = _bare_rate(
                        kind, batches, rt, a, S["steps"], S["warmup"], arch_model=model
                    )
                except Exception as e:  # noqa: BLE001
                    refs[kind] = None
                    res.setdefault("reference_errors", {})[f"{mode}/{kind}"] = _err(e)
                _free(dev)
            del model
            _free(dev)
            bare = refs["torchvision_resnet50"]
            res["modes"][mode] = {
                "amp_dtype": str(rt.amp_dtype).replace("torch.", "") if rt.amp_dtype else None,
                "channels_last": rt.channels_last,
                "step_ms": 1000 * dt / S["steps"],
                "adapt_images_per_s": adapt_views / num,
                "adapt_views_per_s": adapt_views,
                "adapt_epoch_images_per_s": stats["images_per_s"],
                "loss": stats["loss"],
                "pedal": stats["pedal"],
                "ipfl": stats["ipfl"],
                "bare_resnet50_views_per_s": bare,
                "backbone_stride1_views_per_s": refs["backbone_stride1"],
                "patchnet_trivial_loss_views_per_s": refs["patchnet_trivial_loss"],
                "ratio_vs_bare_pct": 100 * adapt_views / bare if bare else None,
                "ratio_vs_stride1_pct": (
                    100 * adapt_views / refs["backbone_stride1"]
                    if refs["backbone_stride1"]
                    else None
                ),
                "ratio_vs_patchnet_pct": (
                    100 * adapt_views / refs["patchnet_trivial_loss"]
                    if refs["patchnet_trivial_loss"]
                    else None
                ),
                "peak_memory_gib": peak,
            }
            res["modes"][mode]["meets_goal"] = bool(
                bare and 100 * adapt_views / bare >= res["goal_ratio_pct"]
            )
        except PartTimeout:
            raise
        except Exception as e:  # noqa: BLE001
            res["modes"][mode] = {"error": _err(e), "traceback": traceback.format_exc()[-2000:]}
            _free(dev)
    if any("error" in v for v in res["modes"].values()):
        res["error"] = "; ".join(
            f"{k}: {v['error']}" for k, v in res["modes"].items() if "error" in v
        )
    return res


# --------------------------------------------------------------------------- 6. evaluation


def part_evaluation(ctx) -> dict:
    import bench_eval as BE  # bench/bench_eval.py: Market-shaped features with identities
    import torch

    from paulkit import evaluation

    S, dev = ctx.sizes, ctx.device
    t0 = time.perf_counter()
    qf, gf, *labels = BE.market_like(
        S["eval_query"], S["eval_gallery"], S["eval_ids"], S["eval_distractors"]
    )
    gen_s = time.perf_counter() - t0
    ctx.setup["evaluation_features_s"] = gen_s
    qd, gd = torch.from_numpy(qf).to(dev), torch.from_numpy(gf).to(dev)
    res = evaluation.evaluate_features(qd, gd, *labels)  # warm-up
    _sync(dev)
    times = []
    for _ in range(S["eval_repeat"]):
        _sync(dev)
        t = time.perf_counter()
        res = evaluation.evaluate_features(qd, gd, *labels)
        _sync(dev)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    cpu = evaluation.evaluate_features(qf, gf, *labels)
    cpu_s = time.perf_counter() - t
    d, dc = res.as_dict(), cpu.as_dict()
    del qd, gd
    _free(dev)
    return {
        "queries": len(qf),
        "gallery": len(gf),
        "dim": int(qf.shape[1]),
        "device_seconds_best": min(times),
        "device_seconds_median": statistics.median(times),
        "repeats": len(times),
        "cpu_seconds": cpu_s,
        "cpu_threads": torch.get_num_threads(),
        "mAP": d["mAP"],
        "rank1": d["rank1"],
        "mINP": d["mINP"],
        "max_abs_diff_vs_cpu": max(abs(d[k] - dc[k]) for k in ("mAP", "rank1", "mINP")),
        "feature_generation_s": gen_s,
    }


# --------------------------------------------------------------------------- 7. synth run


def part_synth_run(ctx) -> dict:
    import torch

    from paulkit import data as D
    from paulkit import train

    S, dev, args = ctx.sizes, ctx.device, ctx.args
    base = Path(args.synth_root) if args.synth_root else Path(ctx.tmp)
    os.environ["PAULKIT_SYNTH"] = str(base / "synth")
    os.environ["PAULKIT_OUT"] = str(base / "outputs")
    t0 = time.perf_counter()
    src, tgt = D.synth.embedded(S["synth_size"], 0, root=base / "synth")
    gen_s = time.perf_counter() - t0
    ctx.setup["synth_generation_s"] = gen_s
    log(f"synth_run: data made in {gen_s:.1f} s ({src.name}, {tgt.name})")
    pe, ae = S["pretrain_epochs"], S["adapt_epochs"]
    sets = [
        f"data.synth_size={S['synth_size']}",
        f"data.num_workers={S['workers']}",
        f"data.limit_train={S['limit_train']}",
        f"pretrain.epochs={pe}",
        f"pretrain.lr_step={pe}",  # no decay inside so short a run
        f"pretrain.stn_start={max(pe - 1, 0)}",  # the patch generator learns in the last epoch
        f"pretrain.stn_stop={pe}",
        f"adapt.epochs={ae}",
        f"adapt.lr_step={ae}",
        f"adapt.eval_every={ae}",  # evaluated at epoch 0 and at the end
    ]
    if S["pretrain_batch"]:
        sets.append(f"pretrain.batch_size={S['pretrain_batch']}")
    cfg, sets = _cfg(ctx, *sets)
    ck = (base / "outputs" / "pretrain.pt") if args.checkpoints else None
    _reset_peak(dev)
    t0 = time.perf_counter()
    model, hp = train.pretrain(cfg=cfg, device=dev, checkpoint=ck, progress=False)
    _sync(dev)
    pre_s = time.perf_counter() - t0
    log(f"synth_run: pretrain {pe} epochs in {pre_s:.1f} s, loss {hp['loss']}")
    ck = (base / "outputs" / "adapt.pt") if args.checkpoints else None
    t0 = time.perf_counter()
    model2, ha = train.adapt(cfg=cfg, pretrained=model, device=dev, checkpoint=ck, progress=False)
    _sync(dev)
    ad_s = time.perf_counter() - t0
    evals = ha.get("eval", [])
    keep = ("mAP", "rank1", "rank5", "mINP")
    res = {
        "synth_size": S["synth_size"],
        "config": cfg.name,
        "overrides": sets,
        "arch": cfg.model.arch,
        "input": f"{cfg.data.height}x{cfg.data.width}",
        "amp": cfg.amp,
        "num_workers": cfg.data.num_workers,
        "synth_generation_s": gen_s,
        "pretrain": {
            "epochs": pe,
            "batch_pairs": cfg.pretrain.batch_size,
            "seconds": pre_s,
            "loss": hp["loss"],
            "acc": hp["acc"],
            "images_per_s": hp["images_per_s"],
        },
        "adapt": {
            "epochs": ae,
            "batch_images": cfg.adapt.batch_size,
            "seconds": ad_s,
            "loss": ha["loss"],
            "pedal": ha["pedal"],
            "ipfl": ha["ipfl"],
            "images_per_s": ha["images_per_s"],
        },
        "eval": [{"epoch": ev["epoch"], **{k: ev[k] for k in keep if k in ev}} for ev in evals],
        "peak_memory_gib": _peak_gib(dev),
    }
    if evals:
        res["mAP_epoch0"], res["mAP_end"] = evals[0].get("mAP"), evals[-1].get("mAP")
        res["rank1_epoch0"], res["rank1_end"] = evals[0].get("rank1"), evals[-1].get("rank1")
    del model, model2
    _free(dev)
    torch.manual_seed(0)
    return res


# --------------------------------------------------------------------------- 8. clustering


def part_cluster(ctx) -> dict:
    import importlib.util

    if importlib.util.find_spec("paulkit.cluster") is None:
        return {"status": "not available", "reason": "paulkit/cluster.py does not exist yet"}
    import torch
    import torch.nn.functional as F

    cl = importlib.import_module("paulkit.cluster")
    n = ctx.sizes["cluster_n"]
    feats = F.normalize(torch.randn(n, 1536, generator=torch.Generator().manual_seed(0)), dim=-1)
    feats = feats.to(ctx.device)
    jac, dbs = cl.jaccard_distance, cl.cluster_labels  # k1 = 30, k2 = 6; eps 0.6, 4 samples
    _sync(ctx.device)
    t0 = time.perf_counter()
    dist = jac(feats)
    _sync(ctx.device)
    t1 = time.perf_counter()
    labels = dbs(dist)
    t2 = time.perf_counter()
    return {
        "status": "ok",
        "n": n,
        "jaccard_s": t1 - t0,
        "dbscan_s": t2 - t1,
        "functions": [jac.__name__, dbs.__name__],
        "clusters": len(set(int(x) for x in labels) - {-1}) if labels is not None else None,
    }


# --------------------------------------------------------------------------- driver


class Ctx:
    def __init__(self, args, sizes, device, tmp):
        self.args, self.sizes, self.device, self.tmp = args, sizes, device, tmp
        self.setup: dict = {}


def summary(data: dict) -> str:
    """The closing table: one line per part that ran (every figure from ``data``)."""

    def f(x, fmt="{:.1f}"):
        return "-" if x is None else fmt.format(x)

    rows = []
    env = data.get("environment")
    if env:
        rows.append(("device", str(env.get("device", "?"))))
        rows.append(("torch / CUDA", f"{env.get('torch')} / {env.get('cuda')}"))
        rows.append(("commit", str(env.get("commit", "?"))[:12]))
    imp = data.get("import")
    if imp:
        stubs = imp.get("stubbed_modules") or []
        rows.append(("import paulkit", ("stubbed: " + ",".join(stubs)) if stubs else "ok"))
    ut = data.get("unit_tests")
    if ut:
        counts = ", ".join(f"{ut.get(k, '-')} {k}" for k in ("passed", "failed", "skipped"))
        rows.append(("CUDA unit tests", counts))
    st = data.get("step_share")
    if st:
        rows.append(
            (
                "step share (goal < 5%)",
                f"{f(st.get('step_ms'), '{:.2f}')} ms of {f(st.get('net_fwd_bwd_ms'))} ms = "
                f"{f(st.get('share_pct'), '{:.2f}')}% (bf16 net: {f(st.get('share_amp_pct'))}%)",
            )
        )
    for mode, m in (data.get("adaptation") or {}).get("modes", {}).items():
        rows.append(
            (
                f"adaptation {mode} (goal >= 90%)",
                f"{f(m.get('adapt_images_per_s'), '{:.0f}')} img/s, "
                f"{f(m.get('ratio_vs_bare_pct'))}% of bare ResNet-50, "
                f"{f(m.get('ratio_vs_patchnet_pct'))}% of PatchNet alone",
            )
        )
    ev = data.get("evaluation")
    if ev and "queries" in ev:
        rows.append(
            (
                "evaluation",
                f"{ev['queries']} x {ev['gallery']}: {f(ev.get('device_seconds_best'), '{:.2f}')}"
                f" s (CPU {f(ev.get('cpu_seconds'), '{:.2f}')} s)",
            )
        )
    sr = data.get("synth_run") or {}
    if sr.get("mAP_end") is not None:
        rows.append(
            (
                "synth run mAP",
                f"{100 * sr['mAP_epoch0']:.1f} -> {100 * sr['mAP_end']:.1f} (pretrain "
                f"{sr['pretrain']['seconds']:.0f} s, adapt {sr['adapt']['seconds']:.0f} s)",
            )
        )
    if data.get("cluster"):
        rows.append(("cluster", str(data["cluster"].get("status", "?"))))
    for name in PARTS:
        p = data.get(name) or {}
        if "error" in p:
            rows.append((f"ERROR {name}", p["error"].splitlines()[0][:120]))
    rows.append(("total wall", f"{data.get('total_wall_s', 0):.1f} s"))
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"  {a:<{w}}  {b}" for a, b in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, same code")
    ap.add_argument("--json", help="output (default $OUT/gpu.json, else build/gpu.json)")
    ap.add_argument("--parts", help=f"comma list of parts to run (default all: {','.join(PARTS)})")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--commit", help="record this commit (when the copy has no .git)")
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip parts after this")
    ap.add_argument("--tests", help="pytest node ids, comma separated (default: CUDA-only)")
    ap.add_argument("--pytest-timeout", type=float, default=120.0)
    ap.add_argument("--synth-root", help="folder for synthetic data and outputs (default: tmp)")
    ap.add_argument("--checkpoints", action="store_true", help="write checkpoints in synth_run")
    ap.add_argument("--simulate-missing", help="(testing) make these modules unimportable")
    for k, v in FULL.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=None, help=f"{v}")
    args = ap.parse_args(argv)
    sizes = dict(DRY if args.dry_run else FULL)
    for k in FULL:
        if getattr(args, k) is not None:
            sizes[k] = getattr(args, k)
    if args.json:
        out = Path(args.json)
    elif os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "gpu.json"
    else:
        out = ROOT / "build" / "gpu.json"
    parts = args.parts.split(",") if args.parts else list(PARTS)
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")

    t0 = time.perf_counter()
    import torch

    import_torch_s = time.perf_counter() - t0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(sizes["device"])
    shown = ["python3", "bench/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]
    data: dict = {
        "schema": SCHEMA,
        "dry_run": bool(args.dry_run),
        "command": " ".join(shown),
        "sizes": sizes,
        "setup": {"import_torch_s": import_torch_s},
    }
    tmp = tempfile.mkdtemp(
        prefix="paulkit-gpu-check-", dir="/tmp" if Path("/tmp").is_dir() else None
    )
    ctx = Ctx(args, sizes, device, tmp)
    if device.type == "cuda" and not torch.cuda.is_available():
        data["error"] = "CUDA is not available here (use --dry-run on a CPU)"
        log(data["error"])
    log(f"writing {out}; device {device}; parts {','.join(parts)}")
    funcs = {name: globals()[f"part_{name}"] for name in PARTS}
    for name in PARTS:
        if name not in parts:
            continue
        if name != "environment" and "error" in data:
            data[name] = {"status": "skipped", "error": data["error"]}
            continue
        elapsed = time.perf_counter() - T_START
        if name not in ("environment", "import") and elapsed > args.budget_s:
            data[name] = {"status": "skipped", "reason": f"time budget {args.budget_s} s spent"}
            log(f"{name}: skipped (budget)")
            continue
        if name not in ("environment", "import") and "paulkit" not in sys.modules:
            try:
                data["import"] = {**part_import(ctx), "status": "ok", "implicit": True}
            except Exception as e:  # noqa: BLE001
                data["import"] = {"status": "error", "error": _err(e)}
        log(f"{name}: start")
        t = time.perf_counter()
        # each part's own limit, cut so that the whole run ends near budget + 30 s
        limit = min(PART_LIMIT_S.get(name, 120), max(args.budget_s + 30 - elapsed, 20))
        try:
            with time_limit(limit):
                res = funcs[name](ctx)
            res.setdefault("status", "ok" if "error" not in res else "error")
        except BaseException as e:  # noqa: BLE001  (KeyboardInterrupt too: keep what we have)
            res = {"status": "error", "error": _err(e), "traceback": traceback.format_exc()[-3000:]}
            if isinstance(e, KeyboardInterrupt):
                data[name] = res
                break
        res["part_seconds"] = time.perf_counter() - t
        data[name] = res
        log(f"{name}: {res['status']} in {res['part_seconds']:.1f} s" + (
            f" ({res['error'].splitlines()[0][:200]})" if "error" in res else ""))  # fmt: skip
        data["setup"].update(ctx.setup)
        data["total_wall_s"] = time.perf_counter() - T_START
        write_json(data, out)
    if not args.synth_root:
        shutil.rmtree(tmp, ignore_errors=True)
    data["setup"].update(ctx.setup)
    data["total_wall_s"] = time.perf_counter() - T_START
    write_json(data, out)
    print(f"\npaulkit GPU check ({'DRY RUN, CPU' if args.dry_run else 'GPU'}): {out}")
    print(summary(data), flush=True)
    failed = [n for n in parts if data.get(n, {}).get("status") == "error"]
    return 1 if failed or "error" in data else 0


if __name__ == "__main__":
    sys.exit(main())
