"""The HTTP API under load: N concurrent clients on loopback, each posting one image at a time.

Run: .venv/bin/python -m benchmarks.bench_serve [--clients 1 4 16] [--seconds 20] [--requests 40]

For each N it starts `captioning serve` (the shipped model) on a free loopback port, lets N client threads post
images for at most --seconds (at most --requests each), and reports requests/s, p50/p95 latency and the server's
peak RSS. The same images captioned in-process, one call each, are the baseline: what the API adds (HTTP,
multipart, a thread hop) and what batching across clients wins back.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx

from captioning.config import DecodeConfig
from captioning.data import SAMPLE_ROOT, load_image
from captioning.inference import Captioner

REPO = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(url: str, images: list[bytes], clients: int, seconds: float, most: int) -> tuple[list[float], float]:
    """Latencies of every request, and the wall time, of `clients` threads posting for `seconds`."""
    latencies, lock, stop = [], threading.Lock(), time.monotonic() + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=120) as http:
            for r in range(most):
                if time.monotonic() > stop:
                    return
                body = images[(k + r) % len(images)]
                t = time.perf_counter()
                reply = http.post(f"{url}/caption", files=[("image", ("x.jpg", body, "image/jpeg"))])
                reply.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=40, help="the most each client sends")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    files = sorted((SAMPLE_ROOT / "val").glob("*.jpg"))[:16]
    images = [p.read_bytes() for p in files]
    captioner = Captioner.from_checkpoint(device="cpu")
    captioner.caption([load_image(files[0])])
    t = time.perf_counter()
    for p in files:
        captioner.caption([load_image(p)], DecodeConfig())
    base = (time.perf_counter() - t) / len(files)
    print(f"in-process, one call per image: {1 / base:.1f} images/s, {base * 1000:.0f} ms each (the baseline)")
    print(f"{'clients':>8s}{'requests':>10s}{'req/s':>8s}{'p50 ms':>9s}{'p95 ms':>9s}{'server peak RSS':>17s}")
    for n in args.clients:
        port = _port()
        server = subprocess.Popen([sys.executable, "-m", "captioning", "serve", "--port", str(port), "--device",
                                   "cpu"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            load(url, images[:2], 1, 5, 2)  # warm-up
            latencies, wall = load(url, images, n, args.seconds, args.requests)
            ordered = sorted(latencies)
            p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
            p50 = statistics.median(latencies)
            print(f"{n:>8d}{len(latencies):>10d}{len(latencies) / wall:>8.1f}{p50 * 1000:>9.0f}{p95 * 1000:>9.0f}"
                  f"{_peak_rss_mb(server.pid):>14.0f} MB")  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
