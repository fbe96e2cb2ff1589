"""``summary.md``: the final values, error bars, every handler's quantities with their definitions, correlations.

The definitions come from the records the log handler wrote into the event file (one sentence per
quantity, in the terms of the options the handler used), so a run needs nothing else to be reported.

Example:
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from ignite_landscape.report.events import RunData, Series
    >>> record = '{"kind": "sharpness", "definitions": {"value": "L(θ+ε) − L(θ)"}}'
    >>> run = RunData("r", Path("r"), scalars={"landscape/sam05/value": Series(np.array([2]), np.array([0.25]))},
    ...               texts={"landscape/sam05/record": [(2, record)]})
    >>> handler_rows(run)
    [('sam05', 'sharpness', 'value', 0.25, 'L(θ+ε) − L(θ)')]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ignite_landscape.measures.jackknife import INTERVAL_Z
from ignite_landscape.report.events import RunData
from ignite_landscape.report.figures import cell
from ignite_landscape.report.metrics import (
    METRICS,
    SUMMARY_COLUMNS,
    probe_note,
    sharpness_note,
    slice_note,
    stderr_rows,
)
from ignite_landscape.report.statistics import MIN_POINTS, Correlation, format_number

__all__ = ["handler_rows", "summary_markdown"]


def handler_rows(run: RunData) -> list[tuple[str, str, str, float | None, str]]:
    """``(handler, kind, quantity, last value or None, definition)`` for every quantity a record defines.

    The probe's definition, shared by a run's handlers, is left to the *Definitions* section.
    """
    rows = []
    for name in run.handler_names():
        kind = run.kind_of(name)
        for key, text in sorted(run.definitions(name).items()):
            if key == "probe":  # the same for every handler of a run: stated once, under Definitions
                continue
            s = run.series(f"landscape/{name}/{key}")
            rows.append((name, kind, key, s.last() if s is not None else None, text))
    return rows


def _md(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(
    runs: Sequence[RunData],
    rows: Sequence[dict[str, Any]],
    corrs: Sequence[Correlation],
    figures: dict[str, Path],
    skipped: dict[str, str],
    num_resamples: int,
    seed: int,
) -> str:
    """The text of ``summary.md``."""
    lines = ["# Loss-landscape report", ""]
    lines += ["## Runs", ""] + [f"- **{r.name}**: `{r.path}`" for r in runs] + [""]
    cols = [(k, h) for k, h in SUMMARY_COLUMNS if any(r.get(k) is not None for r in rows)]
    lines += ["## Final values", ""]
    lines += ["| quantity | " + " | ".join(r["run"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    lines += [f"| {_md(h)} | " + " | ".join(cell(r.get(k)) for r in rows) + " |" for k, h in cols[1:]]
    lines += [
        "",
        "`—`: not logged by that run. With several handlers of one kind, the first in name order fills a row "
        "(every handler's values are listed under *Handlers*). No condition number is given: the Hessian is "
        "indefinite, so |λ_min|/λ_max and the negative spectral mass describe its negative part instead.",
        "",
    ]
    lines += _error_bars(runs)
    lines += ["## Definitions", ""]
    for run in runs:
        lines.append(f"- {run.name}: {probe_note(run)}; {sharpness_note(run)}; {slice_note(run)}")
    lines += [f"- {m.label}: {m.define(runs)}" for m in METRICS if any(m.all(r) for r in runs)]
    lines += ["", "## Correlation with test accuracy", ""] + _correlations(runs, corrs, num_resamples, seed)
    lines += _handlers(runs)  # the full glossary last: long for a run with every handler
    lines += ["## Figures", ""] + [f"- [{name}]({p.name})" for name, p in figures.items()]
    lines += [f"- {name}: not written — {why}" for name, why in skipped.items()] + [""]
    return "\n".join(lines)


_ERROR_BARS_INTRO = (
    "Last logged value of each quantity with a standard error, and the interval value ± 2 stderr. "
    "*jackknife*: over chunks of the probe's samples (`uncertainty='jackknife'`: how much the number would "
    "move on another probe of the same size); *estimator*: the estimator's own (random vectors or draws)."
)
_HANDLERS_INTRO = (
    "Every quantity each handler defined in its record (written by `LandscapeLogHandler`), with its last "
    "logged value (`—` for a curve or a quantity not logged as a scalar)."
)


def _error_bars(runs: Sequence[RunData]) -> list[str]:
    rows = [
        f"| {_md(r.name)} | {tag.removeprefix('landscape/')} | {format_number(v)} | {format_number(e, 3)} | "
        f"[{format_number(v - INTERVAL_Z * e)}, {format_number(v + INTERVAL_Z * e)}] | {kind} |"
        for r in runs
        for tag, v, e, kind in stderr_rows(r)
    ]
    columns = ("run", "quantity", "value", "stderr", "value ± 2 stderr", "kind")
    return _table_section("Error bars", _ERROR_BARS_INTRO, columns, rows)


def _handlers(runs: Sequence[RunData]) -> list[str]:
    rows = [
        f"| {_md(r.name)} | {_md(name)} | {kind} | {_md(key)} | {cell(value)} | {_md(text)} |"
        for r in runs
        for name, kind, key, value, text in handler_rows(r)
    ]
    return _table_section(
        "Handlers", _HANDLERS_INTRO, ("run", "handler", "kind", "quantity", "last value", "definition"), rows
    )


def _table_section(title: str, intro: str, columns: Sequence[str], rows: list[str]) -> list[str]:
    """A ``## title`` section: the ``intro`` paragraph, then a table of ``columns`` with formatted ``rows``.

    No rows, no section (``[]``).
    """
    if not rows:
        return []
    return [f"## {title}", "", intro, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows, ""]


def _correlations(runs: Sequence[RunData], corrs: Sequence[Correlation], num_resamples: int, seed: int) -> list[str]:
    if not corrs:
        return ["No geometry quantity was logged at the same steps as a test accuracy; nothing to correlate.", ""]
    lines = [
        f"Pearson's r and Kendall's τ-b, each with a 95% percentile bootstrap interval ({num_resamples} "
        f"resamples of the points, numpy Generator seeded with {seed}). *Within* a run the points are its "
        "epochs; *pooled* uses every logged (epoch, run) pair of all runs — consecutive epochs of one run are "
        "not independent and training time drives both quantities, so pooled and within-run intervals are "
        "optimistic. *Across runs* uses one final value per run and needs at least 3 runs. Each run contributes "
        "its first handler (name order) of a quantity's kind.",
        "",
        "| quantity | points | n | Pearson r | 95% CI | Kendall τ | 95% CI | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in corrs:
        if c.estimable:
            lines.append(
                f"| {_md(c.metric)} | {_md(c.scope)} | {c.n} | {format_number(c.pearson, 3)} | "
                f"[{format_number(c.pearson_ci[0], 3)}, {format_number(c.pearson_ci[1], 3)}] | "
                f"{format_number(c.kendall, 3)} | "
                f"[{format_number(c.kendall_ci[0], 3)}, {format_number(c.kendall_ci[1], 3)}] | {_md(c.note)} |"
            )
        else:
            lines.append(
                f"| {_md(c.metric)} | {_md(c.scope)} | {c.n} | — | — | — | — | cannot be estimated: {_md(c.note)} |"
            )
    if len(runs) < MIN_POINTS:
        lines += [
            "",
            f"With {len(runs)} run{'s' if len(runs) != 1 else ''}, no correlation *across runs* can be "
            f"estimated (it needs at least {MIN_POINTS}; two points always give r = ±1).",
        ]
    return lines + [""]
