"""`bnlab report`: run folders read back through the records module, turned into spread over
seeds, figures and claim verdicts, then into one Markdown file and one self-contained HTML file.

build_report is pure analysis (runs in, a Report of sections out); render_markdown and
render_html are pure text; write_report is the only function that writes. Every piece of text
from configs and runs stays plain text in the Report; the HTML renderer escapes it in one place.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from bnlab.analysis import figures
from bnlab.analysis.claims import ClaimResult
from bnlab.analysis.stats import summarize
from bnlab.errors import BnlabError, RecordsError
from bnlab.records import CHANCE_LOSS, DID_NOT_TRAIN, atomic_write, read_finished, read_runs, run_status

FIGURES_DIR = "report-figures"  # beside report.md: the Markdown file's images (the HTML inlines its own)
_FINISHED = ("done", "diverged", "failed")


# --- the report as data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    text: str  # plain text; `code spans` in backticks
    kind: str = "p"  # p | note | warning | disagree


@dataclass(frozen=True)
class Badge:
    outcome: str  # supported | not supported | depends | inconclusive (claims.OUTCOMES)
    detail: str = ""


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str | Badge]]
    title: str = ""
    align_numbers: bool = True  # right-align columns of numbers (not in key-value tables)


@dataclass(frozen=True)
class Figure:
    slug: str  # file name stem under report-figures/
    title: str
    png: bytes
    caption: str = ""


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Items:
    items: list[str]
    title: str = ""


Block = Text | Badge | Table | Figure | Code | Items


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


@dataclass(frozen=True)
class Report:
    title: str
    source: str
    warnings: list[str]  # shown as boxes above everything else
    sections: list[Section]
    runs: Any  # read_runs' frame
    cells: Any  # one row per cell (per dataset): the numbers behind the per-cell tables

    @property
    def figures(self) -> list[Figure]:
        return [block for section in self.sections for block in section.blocks if isinstance(block, Figure)]


# --- reading runs back -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    path: Path
    run_id: str
    status: str  # done | diverged | failed
    config: dict[str, Any]  # dotted field -> value, exactly as the resolved config holds it
    summary: dict[str, Any]

    def final(self, metric: str) -> float | None:
        return (self.summary.get("final") or {}).get(metric)

    @property
    def did_not_train(self) -> bool:
        return run_status(self.summary) == DID_NOT_TRAIN


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        flat |= _flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
    return flat


def _sweep_state(folder: Path) -> dict[str, Any] | None:
    """The sweep's resolved base and axes (sweep.json), or None for a folder that is not a sweep."""
    try:
        state = json.loads((folder / "sweep.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("base"), dict) else None


def _load(path: Path) -> tuple[Any, list[_Run], list[tuple[str, str]]]:
    """(frame, finished runs, damaged (path, problem)); unfinished runs stay in the frame only."""
    frame = read_runs(path)
    if frame.empty:
        raise RecordsError(f"{path}: no runs here")
    runs, damaged = [], []
    for row in frame.to_dict("records"):
        folder = Path(row["path"])
        if row["status"] == "damaged":
            damaged.append((row["path"], str(row.get("problem") or "")))
        elif row["status"] in _FINISHED:
            try:  # re-read one by one: exact types (a frame with damaged rows turns ints into floats)
                summary, config_model = read_finished(folder)
            except BnlabError as err:  # changed since read_runs looked
                damaged.append((row["path"], str(err)))
                continue
            runs.append(_Run(folder, folder.name, summary["status"], _flatten(config_model.model_dump()), summary))
    return frame, runs, damaged


# --- formatting ---------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A config value for tables and labels: 0.05, 1e+06, none, [16, 8]."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return str(value)


def _yaml_value(value: Any) -> str:
    """A value as a dotted override needs it (YAML that parses back to the same value)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()


def _override(name: str, value: Any) -> str:
    return shlex.quote(f"{name}={_yaml_value(value)}")


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (1, value)
    return (2, _show(value))


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
        label = "unknown" if value is None else _show(value)
        counts[label] = counts.get(label, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{value} ({count} run{'s' * (count != 1)})" for value, count in counts.items())


# --- cells ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """The runs of one dataset (or all runs): the fields that vary among them, and the cells."""

    label: str  # "" unless runs of several datasets are split
    fields: list[str]  # varied config fields, seed excluded (it is the replicate)
    cells: dict[tuple[str, ...], list[_Run]]  # in sorted order of the fields' values

    def suffix(self) -> str:
        return f" ({self.label})" if self.label else ""

    def cell_label(self, key: tuple[str, ...], skip: str | None = None, short: bool = False) -> str:
        """'train.lr=0.1, model.bn=after'; short: 'lr=0.1, bn=after' (for legends)."""
        parts = [f"{name.rsplit('.', 1)[-1] if short else name}={value}"
                 for name, value in zip(self.fields, key, strict=True) if name != skip]
        return ", ".join(parts) or "all runs"


def _group(runs: list[_Run], label: str, axes: Sequence[str]) -> _Group:
    """Fields in the sweep's axis order, then in the config's; cells sorted by their values."""
    columns = [*axes, *(name for run in runs for name in run.config)]
    columns = [name for name in dict.fromkeys(columns) if name not in ("name", "seed")]
    fields = [name for name in columns if len({_show(run.config.get(name)) for run in runs}) > 1]
    ordered = sorted(runs, key=lambda run: ([_sort_key(run.config.get(name)) for name in fields], run.config["seed"]))
    cells: dict[tuple[str, ...], list[_Run]] = {}
    for run in ordered:
        cells.setdefault(tuple(_show(run.config.get(name)) for name in fields), []).append(run)
    return _Group(label, fields, cells)


def _cell_frame(group: _Group) -> pd.DataFrame:
    rows = []
    for key, runs in group.cells.items():
        row: dict[str, Any] = {"dataset": group.label or runs[0].config["data.dataset"],
                               **dict(zip(group.fields, key, strict=True)), "runs": len(runs)}
        for metric in ("test_acc", "val_acc"):
            s = summarize([run.final(metric) for run in runs])
            row |= {f"{metric}_{name}": value for name, value in s.items()}
        row |= {status: sum(run.status == status for run in runs) for status in _FINISHED}
        row["did_not_train"] = sum(run.did_not_train for run in runs)
        rows.append(row)
    return pd.DataFrame(rows)


# --- sections -----------------------------------------------------------------------------------


def _provenance(path: Path, frame: Any, runs: list[_Run]) -> Section:
    summaries = [run.summary for run in runs]
    statuses = frame["status"].value_counts().to_dict()
    order = [*_FINISHED, "unfinished", "damaged"]
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
    sweeps = sorted({run.path.parent for run in runs if (run.path.parent / "spec.yaml").exists()})
    if sweeps:
        blocks.append(Text("Reproduce the whole sweep (finished runs in the target folder are skipped):"))
        blocks.append(Code("\n".join(f"bnlab sweep {shlex.quote(str(folder / 'spec.yaml'))}" for folder in sweeps)))
        blocks.append(Text("spec.yaml is the spec as it was given: a relative `base:` path in it resolves against "
                           "the folder the spec was in, and overrides given to `bnlab sweep` are not in it. "
                           "sweep.json holds the resolved base; the per-cell commands below need neither."))
    return Section("Provenance", blocks)


def _number_cells(runs: list[_Run]) -> list[str]:
    test = [run.final("test_acc") for run in runs]
    return [str(len(runs)), str(summarize(test)["n"]), *_stat_cells(test),
            *_stat_cells([run.final("val_acc") for run in runs])]


def _results(group: _Group) -> list[Section]:
    numbers = ["n", "test acc %", "test sd", "test 95% CI", "val acc %", "val sd", "val 95% CI"]
    sections = []
    one_seed = all(sum(run.final("test_acc") is not None for run in runs) <= 1 for runs in group.cells.values())
    seed_note = (Text("n=1: no confidence interval: every cell has at most one seed with a result, so there is no "
                      "spread over seeds to show. Run more seeds (`seeds: [0, 1, 2]`) before reading differences.",
                      "warning") if one_seed else
                 Text("Mean, standard deviation and 95% t-interval over seeds of the final accuracy (%); n counts "
                      "runs with a result (diverged and failed runs have none: see Divergence)."))
    if group.fields:
        blocks: list[Block] = [Text("Each value of a field, pooled over the other fields' values and the seeds.")]
        for name in group.fields:
            values: dict[str, list[_Run]] = {}
            for key, runs in group.cells.items():
                values.setdefault(key[group.fields.index(name)], []).extend(runs)
            rows = [[value, *_number_cells(runs)] for value, runs in values.items()]
            blocks.append(Table([name, "runs", *numbers], rows))
        sections.append(Section("Results by field" + group.suffix(), [seed_note, *blocks]))
    rows = [[*key, *_number_cells(runs)] for key, runs in group.cells.items()]
    blocks = [Table([*group.fields, "runs", *numbers], rows)]
    sections.append(Section("Results per cell" + group.suffix(), blocks if group.fields else [seed_note, *blocks]))
    for title, slug, draw in (("Accuracy heatmaps", "heatmap", figures.heatmap),
                              ("Learning curves", "curves", figures.learning_curves),
                              ("Activation percentiles", "probes", figures.activation_percentiles)):
        drawn = draw(group)
        if drawn is not None:
            slug = "-".join(filter(None, [slug, re.sub(r"[^a-z0-9]+", "-", group.label.lower()).strip("-")]))
            sections.append(Section(title + group.suffix(), [Figure(slug, drawn.title, drawn.png, drawn.caption)]))
    return sections


def _divergence(group: _Group) -> Section:
    """Counts per cell, for the cells where anything but a clean finish happened."""
    rows, totals = [], dict.fromkeys(("diverged", "failed", "did not train"), 0)
    for key, runs in group.cells.items():
        counts = {"diverged": sum(run.status == "diverged" for run in runs),
                  "failed": sum(run.status == "failed" for run in runs),
                  "did not train": sum(run.did_not_train for run in runs)}
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


def _commands(group: _Group) -> Section:
    """Per cell: the sweep-base overrides and the exact command for one of its runs."""
    states = {folder: _sweep_state(folder) for folder in {run.path.parent for runs in group.cells.values()
                                                          for run in runs}}
    rows = []
    for runs in group.cells.values():
        first = runs[0]
        state = states[first.path.parent]
        if state is not None:
            base = _flatten(state["base"])
            changed = [name for name, value in first.config.items()
                       if name not in ("name", "seed") and _show(base.get(name)) != _show(value)]
            changed.sort(key=lambda name: group.fields.index(name) if name in group.fields else len(group.fields))
        else:
            changed = group.fields
        overrides = " ".join(_override(name, first.config[name]) for name in changed)
        seeds = ", ".join(str(run.config["seed"]) for run in runs)
        rows.append([f"`{overrides}`" if overrides else "(the base)", seeds,
                     f"`bnlab run {shlex.quote(str(first.path / 'config.yaml'))}`"])
    blocks: list[Block] = [
        Text("Overrides: how the cell differs from its sweep's base (sweep.json), as dotted `field=value`; "
             "`bnlab run BASE.yaml name=NAME <overrides> seed=N` trains one seed of it, where BASE.yaml holds that "
             "base. The command runs the listed run's own resolved config (its first seed); append `seed=N` for "
             "another seed. Outside a sweep the overrides are the varied fields."),
        Table(["overrides", "seeds", "command (first seed)"], rows)]
    return Section("Commands per cell" + group.suffix(), blocks)


def _failures(runs: list[_Run], frame: Any, damaged: list[tuple[str, str]]) -> list[Section]:
    sections = []
    failed = [run for run in runs if run.status == "failed"]
    if failed:
        rows = [[run.run_id, str(run.path), str(run.summary.get("error") or "(no error recorded)")] for run in failed]
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
        return "–" if value is None else _show(value)

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
    blocks: list[Block] = [Badge(claim.outcome), Text(f"Claim: “{claim.claim}”"), Text(claim.summary),
                           Text(f"Decision rule: {rule}. Design: {claim.design}; budget: {claim.budget}"
                                + (f"; {ran}." if ran else "."))]
    if claim.literature:
        blocks.append(Text(f"Literature: {claim.literature}",
                           "disagree" if claim.disagrees else "note"))
    if claim.comparisons:
        rows = []
        for c in claim.comparisons:
            p = c.paired
            failed = (f"{c.rates.failures_a}/{c.rates.total_a}, {c.rates.failures_b}/{c.rates.total_b}"
                      if c.rates is not None else "–")
            rows.append([c.label + (" (primary)" if c.primary else ""), c.name_a, c.name_b, str(p.n),
                         str(c.n_dropped), failed, effect(p.diff_mean),
                         f"[{effect(p.ci95[0])}, {effect(p.ci95[1])}]" if p.n >= 2 else "n<2: no CI",
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
    datasets = sorted({run.config["data.dataset"] for run in runs})
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
    states = [_sweep_state(folder) for folder in sorted({run.path.parent for run in runs})]
    axes = [name for state in states if state for name in state.get("axes", []) if isinstance(name, str)]
    groups = ([_group([run for run in runs if run.config["data.dataset"] == name], name, axes) for name in datasets]
              if len(datasets) > 1 else [_group(runs, "", axes)] if runs else [])
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


def _md_text(text: str) -> str:
    """Markdown viewers render raw HTML: escape tags outside `code spans` (which show them literally)."""
    parts = re.split(r"(`[^`]+`)", text)
    return "".join(part if part.startswith("`") else part.replace("<", "&lt;").replace(">", "&gt;")
                   for part in parts)


def _md_badge(badge: Badge) -> str:
    return f"**{badge.outcome}**" + (f" ({badge.detail})" if badge.detail else "")


def _md_cell(value: str | Badge) -> str:
    text = _md_badge(value) if isinstance(value, Badge) else _md_text(value)
    return text.replace("|", "\\|").replace("\n", " ") or " "


def _md_fence(text: str) -> str:
    """A code fence longer than any run of backticks inside, so no text can close it early."""
    return "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))


def render_markdown(report: Report) -> str:
    out = [f"# {_md_text(report.title)}", ""]
    out += [f"> **Warning:** {_md_text(warning)}\n" for warning in report.warnings]
    for section in report.sections:
        out += [f"## {_md_text(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                prefix = {"p": "", "note": "> ", "warning": "> **Note:** ", "disagree": "> **Disagrees with the "
                          "literature.** "}[block.kind]
                out += [prefix + _md_text(block.text), ""]
            elif isinstance(block, Badge):
                out += [f"Verdict: {_md_badge(block)}", ""]
            elif isinstance(block, Table):
                out += [f"**{_md_text(block.title)}**", ""] if block.title else []
                out += ["| " + " | ".join(_md_cell(c) for c in block.columns) + " |",
                        "|" + "---|" * len(block.columns)]
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows] + [""]
            elif isinstance(block, Figure):
                out += [f"![{_md_text(block.title)}]({FIGURES_DIR}/{block.slug}.png)", "",
                        f"*{_md_text(block.caption)}*" if block.caption else "", ""]
            elif isinstance(block, Code):
                out += [_md_fence(block.text), block.text, _md_fence(block.text), ""]
            elif isinstance(block, Items):
                out += [f"**{_md_text(block.title)}**", ""] if block.title else []
                out += [f"- {_md_text(item)}" for item in block.items] + [""]
            else:
                raise TypeError(f"report block: unknown {type(block).__name__}")
    return "\n".join(out).rstrip() + "\n"


def _html_text(text: str) -> str:
    escaped = html.escape(text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)  # backticks survive escaping; tags cannot


def _badge_html(badge: Badge) -> str:
    kind = re.sub(r"[^a-z]+", "-", badge.outcome.lower())
    detail = f' <span class="detail">{html.escape(badge.detail)}</span>' if badge.detail else ""
    return f'<span class="badge {kind}">{html.escape(badge.outcome)}</span>{detail}'


_NUMERIC = re.compile(r"^([–+-]?[\d.]+(e[+-]?\d+)?[%x]?|\[.*\]|<0\.001|–|n=1: no CI|n<2: no CI|no result)$")


_NUM = ' class="num"'


def _numeric_columns(table: Table) -> list[bool]:
    if not table.align_numbers:
        return [False] * len(table.columns)
    return [all(isinstance(row[i], str) and _NUMERIC.match(row[i]) for row in table.rows) and any(
        isinstance(row[i], str) and re.search(r"\d", row[i]) for row in table.rows) for i in range(len(table.columns))]


def _html_cell(value: str | Badge, numeric: bool) -> str:
    if isinstance(value, Badge):
        return f"<td>{_badge_html(value)}</td>"
    kind = _NUM if numeric else ' class="long"' if len(value) > 40 else ""  # long text wraps, short never
    return f"<td{kind}>{_html_text(value)}</td>"


def _html_block(block: Block) -> str:
    if isinstance(block, Text):
        cls = "" if block.kind == "p" else f' class="callout {block.kind}"'
        return f"<p{cls}>{_html_text(block.text)}</p>"
    if isinstance(block, Badge):
        return f'<p class="verdict">Verdict: {_badge_html(block)}</p>'
    if isinstance(block, Table):
        title = f"<h4>{html.escape(block.title)}</h4>" if block.title else ""
        numeric = _numeric_columns(block)
        head = "".join(f"<th{_NUM if num else ''}>{html.escape(c)}</th>"
                       for c, num in zip(block.columns, numeric, strict=True))
        body = "".join("<tr>" + "".join(_html_cell(c, num) for c, num in zip(row, numeric, strict=True)) + "</tr>"
                       for row in block.rows)
        head_row = f"<thead><tr>{head}</tr></thead>" if any(block.columns) else ""
        return f'{title}<div class="table-wrap"><table>{head_row}<tbody>{body}</tbody></table></div>'
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        caption = f"<figcaption>{html.escape(block.caption)}</figcaption>" if block.caption else ""
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.title)}">'
                f"{caption}</figure>")
    if isinstance(block, Code):
        return f"<pre><code>{html.escape(block.text)}</code></pre>"
    if isinstance(block, Items):
        title = f"<h4>{html.escape(block.title)}</h4>" if block.title else ""
        return title + "<ul>" + "".join(f"<li>{_html_text(item)}</li>" for item in block.items) + "</ul>"
    raise TypeError(f"report block: unknown {type(block).__name__}")


_CSS = """
:root{--fg:#1f2937;--muted:#6b7280;--line:#e5e7eb;--soft:#f9fafb}
*{box-sizing:border-box}
body{margin:0;background:#f3f4f6;color:var(--fg);font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,"Noto Sans","Liberation Sans",sans-serif;-webkit-font-smoothing:antialiased}
main{max-width:1160px;margin:24px auto;background:#fff;padding:28px 40px 40px;border-radius:10px;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
h1{font-size:26px;margin:0 0 2px;letter-spacing:-.01em}
.source{color:var(--muted);margin:0 0 16px;word-break:break-all}
h2{font-size:20px;margin:34px 0 10px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h4{font-size:14px;margin:18px 0 4px;color:#374151}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:12.5px}
code{background:#f3f4f6;padding:1px 4px;border-radius:4px}
pre{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:10px 12px;white-space:pre-wrap;
word-break:break-all}
pre code{background:none;padding:0}
.table-wrap{overflow-x:auto;margin:6px 0 14px}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600;white-space:nowrap;border-bottom:2px solid #d1d5db}
tbody tr:nth-child(even){background:#fbfbfc}
td{white-space:nowrap}
td.long{white-space:normal;word-break:break-word;min-width:16em}
td.num,th.num{text-align:right}
.badge{display:inline-block;padding:1px 10px;border-radius:999px;font-size:12.5px;font-weight:600;border:1px solid}
.badge.supported{background:#dcfce7;color:#166534;border-color:#86efac}
.badge.not-supported{background:#f3f4f6;color:#374151;border-color:#d1d5db}
.badge.inconclusive{background:#fef3c7;color:#92400e;border-color:#fcd34d}
.badge.depends{background:#ede9fe;color:#5b21b6;border-color:#c4b5fd}
.detail{color:var(--muted);font-size:12px}
.verdict{font-size:16px;margin:6px 0}
.callout{border-left:4px solid;padding:9px 14px;border-radius:6px;margin:10px 0}
.callout.note{background:#eff6ff;border-color:#60a5fa}
.callout.warning{background:#fffbeb;border-color:#f59e0b}
.callout.disagree{background:#fef2f2;border-color:#ef4444;font-weight:600}
figure{margin:10px 0 22px}
figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
figcaption{color:var(--muted);font-size:13px;margin-top:4px}
nav{display:flex;flex-wrap:wrap;gap:2px 16px;background:var(--soft);border:1px solid var(--line);
border-radius:8px;padding:8px 16px;margin:14px 0;font-size:13.5px}
nav a{color:#1d4ed8;text-decoration:none;white-space:nowrap}
section.claim{border:1px solid var(--line);border-radius:8px;padding:0 18px 8px;margin:18px 0}
section.claim h2{border:0}
"""


def render_html(report: Report) -> str:
    """One self-contained page: inline CSS, images as data URIs, no script, nothing from the network."""
    toc = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in report.sections)
    parts = [f"<h1>{html.escape(report.title)}</h1>", f'<p class="source">{html.escape(report.source)}</p>']
    parts += [f'<p class="callout warning"><strong>Warning:</strong> {_html_text(w)}</p>' for w in report.warnings]
    parts.append(f"<nav>{toc}</nav>")
    for section in report.sections:
        cls = ' class="claim"' if section.title.startswith("Claim: ") else ""
        body = "".join(_html_block(block) for block in section.blocks)
        parts.append(f'<section id="{section.anchor}"{cls}><h2>{html.escape(section.title)}</h2>{body}</section>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head>"
            f"<body><main>{''.join(parts)}</main></body></html>\n")


def write_report(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write report.md (its figures under report-figures/) and the self-contained report.html."""
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    try:
        for figure in report.figures:
            atomic_write(out_dir / FIGURES_DIR / f"{figure.slug}.png", figure.png)
        atomic_write(md_path, render_markdown(report).encode())
        atomic_write(html_path, render_html(report).encode())
    except OSError as err:
        raise RecordsError(f"{out_dir}: cannot write the report: {err.strerror or err}") from None
    return md_path, html_path
