"""Training-log charts for the pages: smoothed loss, reward and validation series, run summaries, altair lines."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd


def ema(values: list[float] | pd.Series, weight: float) -> list[float]:
    """Exponential moving average, bias-corrected like TensorBoard's smoothing (weight 0 = raw)."""
    out, avg = [], 0.0
    for k, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * float(v)
        out.append(avg / (1 - weight**k) if weight > 0 else float(v))
    return out


def _step_series(runs: dict[str, list[dict]], column: str, smoothing: float) -> pd.DataFrame:
    """run, step, `column` (smoothed per run) from the step records of each run that have `column`."""
    frames = []
    for name, records in runs.items():
        df = pd.DataFrame([r for r in records if r.get("kind") == "step" and column in r])
        if df.empty:
            continue
        df = df.sort_values("step").drop_duplicates("step", keep="last")
        df[column] = ema(df[column], smoothing)
        frames.append(downsample(df.assign(run=name)[["run", "step", column]]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "step", column])


MAX_POINTS = 2000  # per run and series: what a chart draws (the browser slows down well before 100k points)


def downsample(df: pd.DataFrame, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """At most `max_points` rows evenly spaced over `df`, its first and last included (after smoothing, so the
    curve keeps its shape); the raw records stay downloadable on the page."""
    if len(df) <= max_points:
        return df
    return df.iloc[np.unique(np.linspace(0, len(df) - 1, max_points).round().astype(int))]


def steps_frame(runs: dict[str, list[dict]], smoothing: float = 0.0) -> pd.DataFrame:
    """run, step, loss, perplexity (smoothed per run) from each run's cross-entropy step records."""
    df = _step_series(runs, "loss", smoothing)
    return df.assign(perplexity=np.exp(np.minimum(df["loss"].astype(float), 50.0)))


def rewards_frame(runs: dict[str, list[dict]], smoothing: float = 0.0) -> pd.DataFrame:
    """run, step, reward (smoothed per run) from the self-critical (SCST) steps of each run."""
    return _step_series(runs, "reward", smoothing)


def epochs_frame(runs: dict[str, list[dict]], metrics: tuple[str, ...] = ("BLEU-4", "CIDEr")) -> pd.DataFrame:
    """Long format run, epoch, metric, value from each run's validation (epoch) records."""
    rows = [
        {"run": name, "epoch": r["epoch"], "metric": m, "value": r[m]}
        for name, records in runs.items()
        for r in records
        if r.get("kind") == "epoch"
        for m in metrics
        if isinstance(r.get(m), (int, float))
    ]
    return pd.DataFrame(rows, columns=["run", "epoch", "metric", "value"])


def runs_summary(runs: dict[str, list[dict]]) -> pd.DataFrame:
    """run, steps, best val CIDEr and its epoch, and the epoch a self-critical phase started from: a row per run.

    The last matters because SCST starts from the best cross-entropy epoch's weights by default, so the
    validation curves jump back to that epoch's level where the phase begins.
    """
    rows = []
    for name, records in runs.items():
        scored = [r for r in records if r.get("kind") == "epoch" and "CIDEr" in r]
        best = max(scored, key=lambda r: r["CIDEr"], default=None)
        scst = [r for r in records if r.get("event") == "scst_start"]
        began = min((r.get("step", 0) for r in records if r.get("phase") == "scst"), default=None)
        if not scst and began is not None:  # an older log without the event: SCST began from the best
            before = [r for r in scored if r.get("step", 0) <= began]  # cross-entropy epoch, by default
            scst = [{"from_epoch": max(before, key=lambda r: r["CIDEr"]).get("epoch")}] if before else []
        rows.append(
            {
                "run": name,
                "steps": max((r.get("step", 0) for r in records), default=0),
                "best val CIDEr": best["CIDEr"] if best else None,
                "best epoch": best.get("epoch") if best else None,
                "SCST started from epoch": scst[-1].get("from_epoch") if scst else "no SCST phase",
            }
        )
    return pd.DataFrame(rows)


def line_chart(df: pd.DataFrame, x: str, y: str, title: str, log_y: bool = False, points: bool = False) -> alt.Chart:
    """A line per run (coloured by run) of `y` against `x`."""
    scale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    return (
        alt.Chart(df, title=title, height=260)
        .mark_line(point=points or len(df) < 3)  # a run's first record is a point, not an invisible line
        .encode(
            x=alt.X(f"{x}:Q", title=x, axis=alt.Axis(format="~d")),
            y=alt.Y(f"{y}:Q", title=y, scale=scale, axis=alt.Axis(format=".3~g")),
            color=alt.Color("run:N", title="run"),
            tooltip=["run", x, alt.Tooltip(f"{y}:Q", format=".4g")],
        )
    )
