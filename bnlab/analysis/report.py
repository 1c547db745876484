"""`bnlab report`'s sections: run folders read back through records, turned into spread over
seeds, figures, failures, commands and claim verdicts. Runs in, a document.Report out; it writes
nothing (analysis.render renders and writes it)."""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from bnlab.analysis import figures, learning_curves
from bnlab.analysis.cells import Group, group_runs, show
from bnlab.analysis.claims import ClaimResult
from bnlab.analysis.document import Badge, Block, Code, Figure, Items, Report, Section, Table, Text
from bnlab.analysis.stats import summarize
from bnlab.config import flatten
from bnlab.errors import BnlabError, RecordsError
from bnlab.records import (
    CHANCE_LOSS,
    CONFIG,
    DID_NOT_TRAIN,
    RUN_STATUSES,
    FinishedRun,
    SweepRecord,
    read_finished,
    read_runs,
    read_sweep_record,
    spec_path,
)


def _sweep_record(folder: Path) -> SweepRecord | None:
    """The sweep's resolved base and axes, or None for a folder that is not a sweep (or whose
    sweep.json is damaged: the report then shows the varied fields instead)."""
    try:
        return read_sweep_record(folder)
    except BnlabError:
        return None


def _load(path: Path) -> tuple[Any, list[FinishedRun], list[tuple[str, str]]]:
    """(frame, finished runs, damaged (path, problem)); unfinished runs stay in the frame only."""
    frame = read_runs(path)
    if frame.empty:
        raise RecordsError(f"{path}: no runs here")
    runs, damaged = [], []
    for row in frame.to_dict("records"):
        folder = Path(row["path"])
        if row["status"] == "damaged":
            damaged.append((row["path"], str(row.get("problem") or "")))
        elif row["status"] in RUN_STATUSES:
            try:  # re-read one by one: exact types (a frame with damaged rows turns ints into floats)
                runs.append(read_finished(folder))
            except BnlabError as err:  # changed since read_runs looked
                damaged.append((row["path"], str(err)))
    return frame, runs, damaged


# --- formatting ---------------------------------------------------------------------------------


def _yaml_value(value: Any) -> str:
    """A value as a dotted override needs it (YAML that parses back to the same value)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()


def _override(name: str, value: Any) -> str:
    return shlex.quote(f"{name}={_yaml_value(value)}")


def _pct(value: float) -> str:
    return f"{100 * value:.2f}" if math.isfinite(value) else "–"


def _stat_cells(values: Sequence[float | None]) -> list[str]:
    """mean, sd and 95% CI of an accuracy over seeds, in %; n=1 has no CI and says so."""
    s = summarize(values)
    if s["n"] == 0:
        return ["–", "–", "no result"]
    if s["n"] == 1:
        return [_pct(s["mean"]), "–", "n=1: no CI"]
    return [_pct(s["mean"]), _pct(s["sd"]), f"[{_pct(s['ci95_low'])}, {_pct(s['ci95_high'])}]"]


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _signed(value: float, scale: float) -> str:
    if not math.isfinite(value):
        return "–"
    text = f"{value * scale:+.2f}"
    return text.replace("-0.00", "0.00").replace("+0.00", "0.00")


def _counted(values: Sequence[Any]) -> str:
    """'a (3 runs); b (1 run)' for provenance fields that should agree across runs."""
    counts: dict[str, int] = {}
    for value in values:
        label = "unknown" if value is None else show(value)
        counts[label] = counts.get(label, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{value} ({count} run{'s' * (count != 1)})" for value, count in counts.items())


# --- cells ------------------------------------------------------------------------------------------


def _cell_frame(group: Group) -> pd.DataFrame:
    rows = []
    for key, runs in group.cells.items():
        row: dict[str, Any] = {"dataset": group.label or runs[0].fields["data.dataset"],
                               **dict(zip(group.fields, key, strict=True)), "runs": len(runs)}
        for metric in ("test_acc", "val_acc"):
            s = summarize([run.final.get(metric) for run in runs])
            row |= {f"{metric}_{name}": value for name, value in s.items()}
        row |= {status.replace("-", "_"): sum(run.status == status for run in runs) for status in RUN_STATUSES}
        rows.append(row)
    return pd.DataFrame(rows)


# --- sections -----------------------------------------------------------------------------------


def _provenance(path: Path, frame: Any, runs: list[FinishedRun]) -> Section:
    summaries = [run.summary for run in runs]
    statuses = frame["status"].value_counts().to_dict()
    order = [*RUN_STATUSES, "unfinished", "damaged"]
    counted = ", ".join(f"{statuses[status]} {status}" for status in order if status in statuses)
    rows = [["source", str(path)], ["runs", f"{len(frame)} ({counted})"]]
    for name in ("bnlab", "torch", "python"):
        rows.append([name, _counted([(s.get("versions") or {}).get(name) for s in summaries])])
    rows.append(["device", _counted([s.get("device") for s in summaries if s.get("status") != "failed"])])
    rows.append(["engine", _counted([s.get("engine") for s in summaries])])
    rows.append(["git commit", _counted([s.get("git_commit") for s in summaries])])
    datasets: dict[str, dict[str, str]] = {}
    for s in summaries:
        data = s.get("dataset") or {}
        if data.get("sha256"):
            datasets.setdefault(json.dumps([data.get("name"), data["sha256"]], sort_keys=True), data)
    for data in datasets.values():
        rows.append(["dataset", f"{data.get('name')} ({data.get('source', 'source unknown')})"])
        rows += [[f"  sha256 {file}", digest] for file, digest in sorted(data["sha256"].items())]
    blocks: list[Block] = [Table(["field", "value"], rows, align_numbers=False)]
    specs = sorted({spec for spec in (spec_path(run.folder.parent) for run in runs) if spec is not None})
    if specs:
        blocks.append(Text("Reproduce the whole sweep (finished runs in the target folder are skipped):"))
        blocks.append(Code("\n".join(f"bnlab sweep {shlex.quote(str(spec))}" for spec in specs)))
        blocks.append(Text("spec.yaml is the spec as it was given: a relative `base:` path in it resolves against "
                           "the folder the spec was in, and overrides given to `bnlab sweep` are not in it. "
                           "sweep.json holds the resolved base; the per-cell commands below need neither."))
    return Section("Provenance", blocks)


def _number_cells(runs: list[FinishedRun]) -> list[str]:
    test = [run.final.get("test_acc") for run in runs]
    return [str(len(runs)), str(summarize(test)["n"]), *_stat_cells(test),
            *_stat_cells([run.final.get("val_acc") for run in runs])]


def _results(group: Group) -> list[Section]:
    numbers = ["n", "test acc %", "test sd", "test 95% CI", "val acc %", "val sd", "val 95% CI"]
    sections = []
    one_seed = all(sum(run.final.get("test_acc") is not None for run in runs) <= 1 for runs in group.cells.values())
    seed_note = (Text("n=1: no confidence interval: every cell has at most one seed with a result, so there is no "
                      "spread over seeds to show. Run more seeds (`seeds: [0, 1, 2]`) before reading differences.",
                      "warning") if one_seed else
                 Text("Mean, standard deviation and 95% t-interval over seeds of the final accuracy (%); n counts "
                      "runs with a result (diverged and failed runs have none: see Divergence)."))
    if group.fields:
        blocks: list[Block] = [Text("Each value of a field, pooled over the other fields' values and the seeds.")]
        for name in group.fields:
            values: dict[str, list[FinishedRun]] = {}
            for key, runs in group.cells.items():
                values.setdefault(key[group.fields.index(name)], []).extend(runs)
            rows = [[value, *_number_cells(runs)] for value, runs in values.items()]
            blocks.append(Table([name, "runs", *numbers], rows))
        sections.append(Section("Results by field" + group.suffix(), [seed_note, *blocks]))
    rows = [[*key, *_number_cells(runs)] for key, runs in group.cells.items()]
    blocks = [Table([*group.fields, "runs", *numbers], rows)]
    sections.append(Section("Results per cell" + group.suffix(), blocks if group.fields else [seed_note, *blocks]))
    for title, slug, draw in (("Accuracy heatmaps", "heatmap", figures.heatmap),
                              ("Learning curves", "curves", learning_curves.learning_curves),
                              ("Activation percentiles", "probes", figures.activation_percentiles)):
        drawn = draw(group)
        if drawn is not None:
            slug = "-".join(filter(None, [slug, re.sub(r"[^a-z0-9]+", "-", group.label.lower()).strip("-")]))
            sections.append(Section(title + group.suffix(), [Figure(slug, drawn.title, drawn.png, drawn.caption)]))
    return sections


def _divergence(group: Group) -> Section:
    """Counts per cell, for the cells where anything but a clean finish happened."""
    rows, totals = [], dict.fromkeys(("diverged", "failed", "did not train"), 0)
    for key, runs in group.cells.items():
        counts = {"diverged": sum(run.status == "diverged" for run in runs),
                  "failed": sum(run.status == "failed" for run in runs),
                  "did not train": sum(run.status == DID_NOT_TRAIN for run in runs)}
        totals = {name: totals[name] + count for name, count in counts.items()}
        if any(counts.values()):
            rows.append([*key, str(len(runs)), *(str(count) for count in counts.values())])
    runs = sum(len(runs) for runs in group.cells.values())
    blocks: list[Block] = [Text(
        f"{totals['diverged']} of {runs} runs diverged (the loss became NaN or infinite: a result, not a crash), "
        f"{totals['failed']} failed (raised), and {totals['did not train']} finished but did not train (final "
        f"training loss above ln 10 = {CHANCE_LOSS:.3f}, chance level for 10 classes).")]
    if rows:
        blocks.append(Table([*group.fields, "runs", "diverged", "failed", "did not train"], rows))
    return Section("Divergence" + group.suffix(), blocks)


def _commands(group: Group) -> Section:
    """Per cell: the sweep-base overrides and the exact command for one of its runs."""
    states = {folder: _sweep_record(folder) for folder in {run.folder.parent for runs in group.cells.values()
                                                           for run in runs}}
    rows = []
    for runs in group.cells.values():
        first = runs[0]
        state = states[first.folder.parent]
        if state is not None:
            base = flatten(state.base.model_dump())
            changed = [name for name, value in first.fields.items()
                       if name not in ("name", "seed") and show(base.get(name)) != show(value)]
            changed.sort(key=lambda name: group.fields.index(name) if name in group.fields else len(group.fields))
        else:
            changed = group.fields
        overrides = " ".join(_override(name, first.fields[name]) for name in changed)
        seeds = ", ".join(str(run.fields["seed"]) for run in runs)
        rows.append([f"`{overrides}`" if overrides else "(the base)", seeds,
                     f"`bnlab run {shlex.quote(str(first.folder / CONFIG))}`"])
    blocks: list[Block] = [
        Text("Overrides: how the cell differs from its sweep's base (sweep.json), as dotted `field=value`; "
             "`bnlab run BASE.yaml name=NAME <overrides> seed=N` trains one seed of it, where BASE.yaml holds that "
             "base. The command runs the listed run's own resolved config (its first seed); append `seed=N` for "
             "another seed. Outside a sweep the overrides are the varied fields."),
        Table(["overrides", "seeds", "command (first seed)"], rows)]
    return Section("Commands per cell" + group.suffix(), blocks)


def _failures(runs: list[FinishedRun], frame: Any, damaged: list[tuple[str, str]]) -> list[Section]:
    sections = []
    failed = [run for run in runs if run.status == "failed"]
    if failed:
        rows = [[run.run_id, str(run.folder), str(run.summary.get("error") or "(no error recorded)")] for run in failed]
        sections.append(Section("Failed runs", [
            Text(f"{len(failed)} run(s) raised; error.txt in each folder holds the traceback. "
                 "`bnlab sweep SPEC --retry-failed` runs them again.", "warning"),
            Table(["run", "folder", "error"], rows)]))
    if damaged:
        sections.append(Section("Damaged runs", [
            Text(f"{len(damaged)} folder(s) could not be read back and are left out of every number above.", "warning"),
            Table(["folder", "problem"], [[folder, problem] for folder, problem in damaged])]))
    unfinished = frame[frame["status"] == "unfinished"]["path"].tolist()
    if unfinished:
        sections.append(Section("Unfinished runs", [
            Text(f"{len(unfinished)} folder(s) have no summary.json (still running, or interrupted): not counted."),
            Items(sorted(unfinished))]))
    return sections


# --- claims ------------------------------------------------------------------------------------


def _frame_table(title: str, frame: Any) -> Table:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if math.isfinite(value) else "–"
        return "–" if value is None else show(value)

    return Table([str(column) for column in frame.columns],
                 [[cell(value) for value in row] for row in frame.itertuples(index=False)], title=title)


def _effect_format(rule: dict[str, Any]) -> tuple[str, Any]:
    """(column header, formatter) for B - A in the rule's unit; log-ratios are shown as ratios B / A."""
    unit, scale = str(rule.get("unit", "pp")), float(rule.get("scale", 100.0))
    if unit == "log-ratio":
        return "B / A", lambda x: f"{math.exp(x):.2f}x" if math.isfinite(x) else "–"
    return (f"B − A ({unit})" if unit else "B − A"), lambda x: _signed(x, scale)


def _claim_section(claim: ClaimResult) -> Section:
    rule_dict = claim.rule
    metric, margin, direction = rule_dict.get("metric", ""), rule_dict.get("margin"), rule_dict.get("direction", 1)
    header, effect = _effect_format(rule_dict)
    rule = f"metric {metric}"
    if margin and rule_dict.get("unit") == "log-ratio":
        rule += f", margin a factor of {math.exp(margin):.2f}"
    elif margin:
        rule += f", margin {margin * float(rule_dict.get('scale', 100.0)):g} {rule_dict.get('unit', 'pp')}"
    rule += f", the claim says B {'>' if direction > 0 else '<'} A"
    ran = f"{claim.runs} runs over seeds {claim.seeds}" if claim.seeds else ""
    if ran and claim.wall_seconds is not None:
        ran += f", {claim.wall_seconds / 60:.1f} min of wall time training them (every invocation, resumes included)"
    blocks: list[Block] = [Badge(claim.outcome), Text(f"Claim: “{claim.claim}”"), Text(claim.summary)]
    if claim.figure is not None:
        blocks.append(Figure(f"verdict-{claim.name}", claim.figure.title, claim.figure.png, claim.figure.caption))
    blocks.append(Text(f"Decision rule: {rule}. Design: {claim.design}; budget: {claim.budget}"
                       + (f"; {ran}." if ran else ".")))
    if claim.literature:
        blocks.append(Text(f"Literature: {claim.literature}",
                           "disagree" if claim.disagrees else "note"))
    if claim.comparisons:
        rows = []
        for c in claim.comparisons:
            p = c.paired
            failed = (f"{c.rates.failures_a}/{c.rates.total_a}, {c.rates.failures_b}/{c.rates.total_b}"
                      if c.rates is not None else "–")
            own = _effect_format({"unit": c.unit, "scale": c.scale})[1] if c.unit is not None else effect
            rows.append([c.label + (" (primary)" if c.primary else ""), c.name_a or "(contrast)", c.name_b, str(p.n),
                         str(c.n_dropped), failed, own(p.diff_mean),
                         f"[{own(p.ci95[0])}, {own(p.ci95[1])}]" if p.n >= 2 else "n<2: no CI",
                         _p(p.p_value), _p(p.tost_p), _p(p.welch_p),
                         Badge(c.verdict.outcome, "" if c.verdict.reason == c.verdict.outcome else c.verdict.reason)])
        blocks.append(Table(["comparison", "A", "B", "n", "dropped", "did not train (A, B)", header, "95% CI",
                             "paired-t p", "TOST p", "Welch p", "verdict"], rows))
        blocks.append(Items([f"{c.label}: {c.sentence}" for c in claim.comparisons]))
    blocks += [_frame_table(title, frame) for title, frame in claim.tables]
    if claim.deviations:
        blocks.append(Items(list(claim.deviations), title="deviations:"))
    if claim.command:
        blocks.append(Code(claim.command))
    return Section(f"Claim: {claim.name}", blocks)


# --- building -----------------------------------------------------------------------------------


def build_report(path: Path, claims: Sequence[ClaimResult] = ()) -> Report:
    """Read every run at or under `path` (a sweep folder, run folders, a runs root) and build the
    report. RecordsError "PATH: no runs here" when there is nothing to report on."""
    frame, runs, damaged = _load(path)
    warnings = []
    datasets = sorted({run.fields["data.dataset"] for run in runs})
    if len(datasets) > 1:
        warnings.append(f"These runs mix datasets ({', '.join(datasets)}): their numbers are not comparable, so "
                        "every table and figure below is split by data.dataset.")
    digests = {json.dumps((run.summary.get("dataset") or {}).get("sha256"), sort_keys=True)
               for run in runs if (run.summary.get("dataset") or {}).get("sha256")}
    if len(digests) > len(datasets):
        warnings.append("Runs of the same dataset used files with different SHA-256s (see Provenance): "
                        "they trained on different data.")
    if damaged:
        warnings.append(f"{len(damaged)} damaged run folder(s) are left out (see Damaged runs).")
    failed = sum(run.status == "failed" for run in runs)
    if failed:
        warnings.append(f"{failed} run(s) failed (see Failed runs).")
    states = [_sweep_record(folder) for folder in sorted({run.folder.parent for run in runs})]
    axes = [name for state in states if state for name in state.axes if isinstance(name, str)]
    groups = ([group_runs([run for run in runs if run.fields["data.dataset"] == name], name, axes) for name in datasets]
              if len(datasets) > 1 else [group_runs(runs, "", axes)] if runs else [])
    sections = [_claim_section(claim) for claim in claims]
    sections.append(_provenance(path, frame, runs))
    for group in groups:
        sections += _results(group)
    sections += [_divergence(group) for group in groups]
    sections += _failures(runs, frame, damaged)
    sections += [_commands(group) for group in groups]
    if not runs:
        sections.insert(len(claims) + 1, Section("Results", [Text("No finished runs to report on yet.", "warning")]))
    cells = pd.concat([_cell_frame(group) for group in groups], ignore_index=True) if groups else pd.DataFrame()
    return Report(f"bnlab report: {path.name or path}", str(path), warnings, sections, frame, cells)


# --- rendering ------------------------------------------------------------------------------------
