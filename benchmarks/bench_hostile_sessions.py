"""Hostile visitors at once: N sessions each uploading the corpus's worst images, against one session alone.

Run: nice .venv/bin/python -m benchmarks.bench_hostile_sessions [--sessions 8] [--unbounded]

Each session is a thread running Home's upload path (`app.uploads.caption_files`, which `ui.caption_uploads` calls;
Streamlit serves sessions as threads of one process) with the shipped model on the CPU. A session uploads two
40-Mpixel PNGs of a few hundred KB (RGBA and 16-bit grey: 0.5-0.6 GB each to decode), every image of
`tests/adversarial.py`'s COSTLY_IMAGES, a decompression bomb, a truncated JPEG and a COCO photo. Reported per phase:
the growth of the process's peak RSS, the decodes and pixels in flight at most, and what each file got (a caption,
a refusal, or "busy": no room to decode within the wait). `--unbounded` lifts the decode budget, as before #22.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _kb(field: str) -> int:
    return int(next(line for line in open("/proc/self/status") if line.startswith(field)).split()[1])


def _uploads() -> list[tuple[str, bytes]]:
    sys.path.insert(0, str(REPO / "tests"))  # the corpus the hostile-input tests use
    from adversarial import COSTLY_IMAGES, IMAGES, png_40mp

    photo = sorted((REPO / "captioning" / "sample" / "val").glob("*.jpg"))[0].read_bytes()
    worst = [("rgba-40mp.png", png_40mp("RGBA")), ("grey16-40mp.png", png_40mp("I;16")), ("photo.jpg", photo)]
    refused = [(n, data) for n, (data, _) in COSTLY_IMAGES.items()]
    refused += [(n, IMAGES[n][0]) for n in ("bomb.png", "truncated.jpg")]
    return worst + refused


def _phase(captioner, uploads: list, sessions: int) -> dict:
    """Run `sessions` sessions at once; their answers, and what the process held at most."""
    from app.uploads import caption_files
    from captioning.config import DecodeConfig
    from captioning.decodebudget import DECODES

    answers: list[list] = [[] for _ in range(sessions)]
    DECODES.reset_peaks()
    open("/proc/self/clear_refs", "w").write("5")  # the peak RSS restarts from the current size
    before, start = _kb("VmRSS"), time.perf_counter()
    threads = [threading.Thread(target=lambda k=k: answers[k].extend(caption_files(captioner, uploads, DecodeConfig())))
               for k in range(sessions)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = [r for a in answers for r in a]
    busy = sum(bool(r.error) and "busy" in r.error for r in results)
    return {
        "sessions": sessions, "seconds": time.perf_counter() - start, "peak_mb": (_kb("VmHWM") - before) // 1024,
        "files": len(results), "answered": sum(bool(r.caption) != bool(r.error) for r in results),
        "captioned": sum(r.caption is not None for r in results), "busy": busy,
        "refused": sum(r.error is not None for r in results) - busy,
        "decodes_at_once": DECODES.peak_running, "mpixels_at_once": DECODES.peak_pixels / 1e6,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--unbounded", action="store_true", help="no decode budget (what #22 fixed)")
    args = parser.parse_args()
    from captioning.decodebudget import DECODES
    from captioning.inference import Captioner

    if args.unbounded:
        DECODES.pixels, DECODES.slots = 10**12, 10**6
    captioner = Captioner.from_checkpoint(device="cpu")
    uploads = _uploads()
    _phase(captioner, uploads[2:3], 1)  # warm-up: the model's first caption allocates what later ones reuse
    print(f"{len(uploads)} files a session; budget {DECODES.pixels / 1e6:g} Mpixels, {DECODES.slots} decodes, "
          f"wait {DECODES.wait_s:g} s")  # fmt: skip
    print(f"{'sessions':>8s} {'seconds':>8s} {'peak MB':>8s} {'files':>6s} {'answered':>9s} {'captioned':>10s} "
          f"{'refused':>8s} {'busy':>5s} {'decodes':>8s} {'Mpixels':>8s}")  # fmt: skip
    for sessions in (1, args.sessions):
        r = _phase(captioner, uploads, sessions)
        print(f"{r['sessions']:8d} {r['seconds']:8.1f} {r['peak_mb']:8d} {r['files']:6d} {r['answered']:9d} "
              f"{r['captioned']:10d} {r['refused']:8d} {r['busy']:5d} {r['decodes_at_once']:8d} "
              f"{r['mpixels_at_once']:8.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
