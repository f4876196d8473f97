"""The dashboard in a real browser: five sessions on Train during a live run, and upload → overlay on Explain.

Both scenarios start ``streamlit run dashboard/app.py`` as a user does and drive Debian's Chromium
with Playwright (``/usr/bin/chromium``, never a downloaded browser). Figures are measured, printed
and written to JSON; nothing here is a pass/fail test.

**load**: a MobileNet v1 α=0.25 run on the real X-rays is launched the way the Train page's Start
button launches it (``Run.launch``: its own process), then five browser sessions (five contexts,
so five Streamlit sessions) open the Train page at once. Measured:

- time to show: from each session's ``goto`` to the run's id being visible on its page;
- epoch lag: every 0.5 s each session's "Epoch" figure is read and compared with the trainer's
  own record (``history.jsonl``: the time each epoch ended). A sample's lag is how long ago the
  first epoch that the page does not yet show had ended (0 when it shows every ended epoch);
- the server's and the trainer's CPU seconds over the window (``/proc``);
- where the server's time goes: py-spy samples the server process from outside (50 Hz, busy
  threads only) and the summary lists the functions of ``dashboard/`` and ``core/`` that were on
  the stack most often, and the leaf functions where the samples landed.

``--trainer-nice`` runs the scenario once per value, side by side (0 = the trainer at the same
priority as the server; the product's launcher default is printed).

**explain**: the shipped starter (EfficientNet-Lite0, 224 px) in the store; on Explain, "Upload
an X-ray", then real films of the official test split uploaded one after another. Measured: from
``set_input_files`` to the overlay image decoded and visible, for the first upload (model load
included) and the warm ones (median and range).

    python -m benchmarks.dashboard --quick
    python -m benchmarks.dashboard --what load,explain --trainer-nice 0,10
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from benchmarks._common import REPO, base_parser, finish, loadavg, machine, table
from benchmarks.dashboard_profile import start_profile, stop_profile, summarise_profile

__all__ = ["main", "start_dashboard", "epoch_lags"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WEIGHTS = REPO.parent / "shared" / "data" / "keras_weights" / "mobilenet_2_5_224_tf_no_top.h5"
STARTER = REPO / "models" / "starter-efficientnet-lite0"
RESULTS = REPO / "benchmarks" / "results"
REFRESH_SECONDS = 2.0  # the Train page's live fragment interval (dashboard/views/train.py)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_dashboard(runs: Path, cache: Path, log: Path, root: Path = REPO) -> tuple[str, subprocess.Popen]:
    """``streamlit run dashboard/app.py`` of the checkout ``root`` (its code and its ``.streamlit`` settings) on a free
    port with its own run store; returns (url, process) once healthy."""
    port = _free_port()
    env = {**os.environ, "CXR_STUDIO_RUNS": str(runs), "CXR_STUDIO_CACHE": str(cache), "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false"],
                            cwd=root, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                return url, proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the dashboard did not start within 120 s; see {log}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its waited-for children."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _browser_cpu_seconds() -> float:
    """CPU seconds of every Chromium process on this machine (the five sessions' browser)."""
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if "chrom" in (proc.info["name"] or "") and proc.info["cpu_times"] is not None:
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return total


def epoch_lags(samples: list[tuple[float, int | None]], ended: list[float]) -> list[float]:
    """Per sample ``(time, epoch shown)``: seconds since the first epoch the page does not show had ended (0 if none).

    ``ended[k]`` is when epoch ``k + 1`` ended. A sample that shows nothing yet counts from the first epoch's end.
    """
    lags = []
    for t, shown in samples:
        shown = shown or 0
        missing = [end for end in ended[shown:] if end <= t]
        lags.append(t - missing[0] if missing else 0.0)
    return lags


# ------------------------------------------------------------------------------------------ load
def _load_config(args, cache_note: str):
    from core.config import RunConfig

    return RunConfig().with_overrides(**{
        "name": "load-bench", "data.source": "folder", "data.path": str(Path(args.data).resolve()),
        "data.image_size": 224, "data.max_images_per_class": args.max_images_per_class,
        "model.backbone": "mobilenet", "model.alpha": 0.25,
        "model.weights": str(WEIGHTS) if WEIGHTS.is_file() else "none", "model.unfreeze_from_block": 5,
        "train.head.epochs": args.head_epochs, "train.finetune.epochs": args.finetune_epochs,
        "train.early_stopping_patience": 0, "train.evaluate_test": False}).validate()


_EPOCH_JS = """() => {
    for (const m of document.querySelectorAll('[data-testid="stMetric"]')) {
        const label = m.querySelector('[data-testid="stMetricLabel"]');
        const value = m.querySelector('[data-testid="stMetricValue"]');
        if (label && value && label.innerText.trim() === 'Epoch') return value.innerText.trim();
    }
    return null;
}"""


async def _sessions(url: str, run_id: str, n: int, window: float, until_done, pids: dict[str, int]) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        contexts = [await browser.new_context(viewport={"width": 1400, "height": 900}) for _ in range(n)]
        pages = [await c.new_page() for c in contexts]

        async def open_one(page) -> float:
            start = time.time()
            await page.goto(f"{url}/train", timeout=300_000)
            await page.get_by_text(run_id).first.wait_for(timeout=300_000)
            return time.time() - start

        before = {name: _cpu_seconds(pid) for name, pid in pids.items()} | {"browser": _browser_cpu_seconds()}
        opened_at = time.time()
        show = await asyncio.gather(*(open_one(page) for page in pages))
        spent = time.time() - opened_at
        after = {name: _cpu_seconds(pid) for name, pid in pids.items()} | {"browser": _browser_cpu_seconds()}
        opening_cpu = {name: (after[name] - before[name]) / spent for name in before}  # cores used while opening
        samples: list[list[tuple[float, int | None]]] = [[] for _ in pages]
        end = time.time() + window
        while time.time() < end and not until_done():
            for i, page in enumerate(pages):
                asked = time.time()  # the page shows at least this state when asked: a later stamp would add lag
                text = await page.evaluate(_EPOCH_JS)
                shown = int(text.split("/")[0]) if text and text.split("/")[0].strip().isdigit() else None
                samples[i].append((asked, shown))
            await asyncio.sleep(0.5)
        await browser.close()
    return {"opened_at": opened_at, "seconds_to_show": list(show), "samples": samples, "opening_cpu": opening_cpu}


def load_scenario(args, nice: int, work: Path, root: Path = REPO) -> dict[str, Any]:
    from core.store.runs import RunStore

    tag = f"nice{nice}-{'this' if root == REPO else 'baseline'}"
    runs, cache = work / f"runs-{tag}", work / f"cache-{tag}"
    url, server = start_dashboard(runs, cache, work / f"streamlit-{tag}.log", root)
    try:
        run = RunStore(runs).create(_load_config(args, ""))
        env = {**os.environ, "CXR_STUDIO_CACHE": str(cache), "CXR_STUDIO_TRAINER_NICE": str(nice)}
        pid = run.launch(env=env)
        deadline = time.time() + 60
        while time.time() < deadline and not run.status().active:
            time.sleep(0.2)
        server_cpu0, trainer_cpu0, t0 = _cpu_seconds(server.pid), _cpu_seconds(pid), time.time()
        profile_file = work / f"server-profile-{tag}.txt"
        profiler = start_profile(server.pid, args.window + 300, profile_file)
        got = asyncio.run(_sessions(url, run.id, args.sessions, args.window,
                                    lambda: run.status().state in ("finished", "failed", "stopped"),
                                    {"server": server.pid, "trainer": pid}))
        elapsed = time.time() - t0
        stop_profile(profiler)
        server_cpu = _cpu_seconds(server.pid) - server_cpu0
        try:
            trainer_cpu = _cpu_seconds(pid) - trainer_cpu0
        except psutil.NoSuchProcess:
            trainer_cpu = None  # ended inside the window
        ended = [row["time"] for row in run.epochs()]
        lags = [epoch_lags(s, ended) for s in got["samples"]]
        measured = [[lag for (t, _), lag in zip(s, ls) if t >= got["opened_at"] + max(got["seconds_to_show"])]
                    for s, ls in zip(got["samples"], lags)]
        state = run.status().state
        if run.status().active:
            run.request_stop()
            for _ in range(100):
                if not run.status().active:
                    break
                time.sleep(0.2)
    finally:
        _stop(server)
    flat = [lag for session in measured for lag in session]
    return {
        "dashboard": "this checkout" if root == REPO else f"baseline {args.baseline_label or root.name}",
        "trainer_nice": nice, "run_state_at_end": state, "window_seconds": elapsed,
        "epochs_ended_in_window": sum(1 for t in ended if t0 <= t <= t0 + elapsed),
        "seconds_to_show": got["seconds_to_show"], "slowest_to_show": max(got["seconds_to_show"]),
        "cores_used_while_opening": got["opening_cpu"],
        "lag_max_per_session": [max(s) if s else None for s in measured],
        "lag_median_per_session": [statistics.median(s) if s else None for s in measured],
        "lag_max": max(flat) if flat else None, "samples_per_session": [len(s) for s in measured],
        "server_cpu_seconds": server_cpu, "trainer_cpu_seconds": trainer_cpu,
        "server_cpu_share": server_cpu / elapsed, "trainer_cpu_share": trainer_cpu / elapsed if trainer_cpu else None,
        "server_profile": summarise_profile(profile_file), "loadavg_end": loadavg(),
    }


# ------------------------------------------------------------------------------------------ explain
_OVERLAY_SRC_JS = """() => {
    for (const e of document.querySelectorAll('[data-testid="stImage"]')) {
        if (!e.innerText.includes('Overlay (opacity')) continue;
        const img = e.querySelector('img');
        if (img && img.complete && img.naturalWidth > 0) return img.src;
    }
    return null;
}"""


async def _uploads(url: str, files: list[Path]) -> list[float]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(300_000)
        await page.goto(f"{url}/explain")
        await page.get_by_role("heading", name="Explain", level=1).wait_for()
        await page.get_by_text("Upload an X-ray", exact=True).click()  # the segmented control's option
        chooser = page.locator("[data-testid='stFileUploaderDropzoneInput']")
        await chooser.wait_for(state="attached")
        seconds = []
        for path in files:
            before = await page.evaluate(_OVERLAY_SRC_JS)
            start = time.time()
            await chooser.set_input_files(str(path))
            await page.get_by_text(f"X-ray ({path.name})").wait_for()
            # a new overlay (its media URL changes with its pixels), decoded by the browser: not the last film's one
            await page.wait_for_function(f"(before) => {{ const src = ({_OVERLAY_SRC_JS})(); "
                                         "return src !== null && src !== before; }", arg=before)
            seconds.append(time.time() - start)
        await browser.close()
    return seconds


def explain_scenario(args, work: Path, root: Path = REPO) -> dict[str, Any]:
    if not STARTER.is_dir():
        raise SystemExit(f"{STARTER} is missing: the explain scenario needs the shipped starter model")
    tag = "this" if root == REPO else "baseline"
    runs = work / f"runs-explain-{tag}"
    shutil.copytree(STARTER, runs / STARTER.name)
    test = Path(args.data) / "test"
    pneumonia, normal = sorted((test / "PNEUMONIA").glob("*.jpeg")), sorted((test / "NORMAL").glob("*.jpeg"))
    files = [f for pair in zip(pneumonia, normal) for f in pair][: args.uploads + 1]  # alternating classes
    url, server = start_dashboard(runs, work / f"cache-explain-{tag}", work / f"streamlit-explain-{tag}.log", root)
    try:
        seconds = asyncio.run(_uploads(url, files))
    finally:
        _stop(server)
    warm = seconds[1:]
    return {"dashboard": "this checkout" if root == REPO else f"baseline {args.baseline_label or root.name}",
            "run": STARTER.name, "backbone": "efficientnet_lite0", "image_size": 224, "method": "gradcam",
            "files": [f.name for f in files], "file_bytes": [f.stat().st_size for f in files],
            "first_upload_seconds": seconds[0], "warm_seconds": warm,
            "warm_median": statistics.median(warm) if warm else None,
            "warm_min": min(warm) if warm else None, "warm_max": max(warm) if warm else None}


# ------------------------------------------------------------------------------------------ driver
def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--what", default="load,explain", help="comma list of load, explain")
    p.add_argument("--sessions", type=int, default=5)
    p.add_argument("--window", type=float, help="seconds of sampling after the sessions open (default 120, quick 40)")
    p.add_argument("--trainer-nice", default=None,
                   help="comma list of trainer nice values, one load scenario each (default: the launcher's default)")
    p.add_argument("--max-images-per-class", type=int, help="training films per class (default all; quick 150)")
    p.add_argument("--head-epochs", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=6)
    p.add_argument("--uploads", type=int, help="films uploaded on Explain (default 10, quick 4)")
    p.add_argument("--baseline", type=Path, help="another checkout whose dashboard serves the same load scenario first "
                                                 "(e.g. a clone at an earlier commit): before and after in one run")
    p.add_argument("--baseline-label", help="what to call the baseline in the table (default: its folder name)")
    args = p.parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is not installed (Debian package 'chromium')")
    args.window = args.window or (40.0 if args.quick else 120.0)
    args.uploads = args.uploads or (4 if args.quick else 10)
    if args.quick and args.max_images_per_class is None:
        args.max_images_per_class = 150
    from core.store.runs import trainer_nice

    default_nice = trainer_nice({})
    nices = [int(v) for v in args.trainer_nice.split(",")] if args.trainer_nice else [default_nice]
    what = [w.strip() for w in args.what.split(",") if w.strip()]
    if args.out is None:
        args.out = RESULTS / ("dashboard-quick.json" if args.quick else "dashboard.json")

    result: dict[str, Any] = {"benchmark": "dashboard", "machine": machine(), "quick": args.quick,
                              "settings": {"sessions": args.sessions, "window": args.window,
                                           "refresh_seconds": REFRESH_SECONDS, "launcher_default_nice": default_nice,
                                           "max_images_per_class": args.max_images_per_class,
                                           "epochs": [args.head_epochs, args.finetune_epochs],
                                           "uploads": args.uploads}}
    text = []
    work = Path(tempfile.mkdtemp(prefix="cxr-dashboard-bench-"))
    try:
        if "load" in what:
            result["load"] = []
            roots = ([args.baseline.resolve()] if args.baseline else []) + [REPO]
            for root in roots:
                for nice in nices:
                    print(f"load: {args.sessions} sessions on Train ({root.name}), trainer at nice {nice}… "
                          f"(load {loadavg()})", flush=True)
                    result["load"].append(load_scenario(args, nice, work, root))
            rows = [[r["dashboard"], r["trainer_nice"], f"{max(r['seconds_to_show']):.1f}",
                     " / ".join(f"{r['cores_used_while_opening'][k]:.2f}" for k in ("browser", "server", "trainer")),
                     " ".join(f"{s:.1f}" for s in r["seconds_to_show"]), r["epochs_ended_in_window"],
                     f"{r['lag_max']:.1f}" if r["lag_max"] is not None else "—",
                     " ".join(f"{m:.1f}" for m in r["lag_median_per_session"] if m is not None),
                     f"{r['server_cpu_share']:.0%}",
                     f"{r['trainer_cpu_share']:.0%}" if r["trainer_cpu_share"] is not None else "—"]
                    for r in result["load"]]
            text.append(table(rows, ["dashboard", "trainer nice", "slowest to show s", "cores while opening: browser / server / trainer",
                                     "each session s", "epochs ended",
                                     "max epoch lag s", "median lag per session s", "server CPU", "trainer CPU"]))
            text.append(f"targets: every session shows the run within 10 s; lag ≤ one refresh ({REFRESH_SECONDS:.0f} s). "
                        "CPU = share of one core over the window.")
            for r in result["load"]:
                prof = r["server_profile"]
                if prof.get("samples"):
                    text.append(f"server profile, {r['dashboard']}, trainer nice {r['trainer_nice']} ({prof['samples']} busy samples, "
                                f"{prof['idle_samples']} waiting left out): our functions on the stack\n" + "\n".join(
                                    f"  {share:6.1%}  {frame}" for frame, share in prof["ours_inclusive"])
                                + "\nleaf functions\n" + "\n".join(f"  {share:6.1%}  {frame}"
                                                                     for frame, share in prof["leaf_self"]))
        if "explain" in what:
            result["explain"] = []
            for root in ([args.baseline.resolve()] if args.baseline else []) + [REPO]:
                print(f"explain ({root.name}): {args.uploads + 1} uploads on Explain (the first one reported apart)… "
                      f"(load {loadavg()})", flush=True)
                e = explain_scenario(args, work, root)
                result["explain"].append(e)
                text.append(f"Explain, {e['dashboard']}, upload → overlay visible ({e['backbone']}, Grad-CAM): first "
                            f"{e['first_upload_seconds']:.2f} s (right after opening the page); then median "
                            f"{e['warm_median']:.2f} s [{e['warm_min']:.2f}–{e['warm_max']:.2f}] over "
                            f"{len(e['warm_seconds'])} films. Target ≤ 1.0 s.")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    finish(result, args.out, "\n\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
