"""The experiment's report: ``OUT/report.md`` (and figures) from a `Results`.

Everything here is a function of the results file: the statistics are recomputed from
its rows (`leep_jax.experiments.statistics`, `leep_jax.experiments.selection`), so a
report can be rebuilt from ``results.json`` alone (``leep-jax experiment --report-only
OUT``), byte for byte, and a partial run gives a report with fewer rows. The tables are
in `leep_jax.experiments.tables`, the figures in `leep_jax.experiments.figures`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from leep_jax.experiments import tables
from leep_jax.experiments.figures import write_figures
from leep_jax.experiments.labels import LABELS, METHOD_LABELS
from leep_jax.experiments.pairs import format_classes
from leep_jax.experiments.results import Results
from leep_jax.experiments.selection import Selection, selection
from leep_jax.experiments.statistics import (
    CORRELATED_METHODS,
    PAPER_SCORES,
    RegimeSummary,
    convergence,
    summarize,
)
from leep_jax.experiments.tables import num_text

__all__ = ["write_report"]


def _timing_section(results: Results) -> list[str]:
    tasks = results.tasks
    lines = [
        f"Measured duration: {results.duration_s:.0f} s over "
        f"{len(results.sessions)} session(s) (sum of wall-clock time of every "
        "session, source-model training included).",
    ]
    keys = ("scores_s", "retrain_head_s", "fine_tune_s", "scratch_s")
    timed = [t for t in tasks if all(k in t.timings for k in keys)]
    if timed:
        means = {k: float(np.mean([t.timings[k] for t in timed])) for k in keys}
        lines += [
            "",
            f"Mean per task over {len(timed)} tasks: scores {means['scores_s']:.3f} s "
            f"(from cached outputs), head re-training {means['retrain_head_s']:.2f} s "
            f"(cached features), fine-tuning {means['fine_tune_s']:.2f} s, from scratch "
            f"{means['scratch_s']:.2f} s (compilation included).",
        ]
    forwards = [
        f"`{pair}`: {info['pool_forward']['num_images']} images in "
        f"{info['pool_forward']['seconds']:.1f} s"
        for pair, info in results.sources.items()
        if "pool_forward" in info
    ]
    if forwards:
        lines += [
            "",
            "One forward pass of the source model over the whole target pool, "
            "shared by all tasks of a pair: " + "; ".join(forwards) + ".",
        ]
    if results.sessions:
        env = results.sessions[-1].environment
        lines += [
            "",
            f"Machine (last session): {env.get('platform')}, {env.get('cpu_count')} "
            f"CPUs, jax {env.get('jax')}, devices {env.get('devices')}.",
        ]
    return lines


def _setup_section(results: Results) -> list[str]:
    config = results.config
    kwargs = config.get("model_kwargs")
    lines = [
        f"Mode `{config.get('mode')}`, seed {config.get('seed')}, protocol version "
        f"{config.get('protocol_version', 'n/a')}, source architecture "
        f"`{config.get('architecture')}`" + (f" {kwargs}" if kwargs else "") + ".",
        "",
        "| pair | source classes | source train examples | epochs | source test acc "
        "(after each epoch) | target pool (train/test) |",
        "|---|---|---|---|---|---|",
    ]
    for pair in config.get("pairs", ()):
        info = results.sources.get(pair) or {}
        spec = (config.get("sources") or {}).get(pair) or info.get("spec") or {}
        pool = info.get("pool_forward", {})
        classes = spec.get("classes")
        curve = info.get("source_test_accuracy_curve") or []
        lines.append(
            f"| `{pair}` | {format_classes(classes) if classes else 'n/a'} | "
            f"{info.get('source_train_examples', 'n/a')} | {spec.get('epochs', 'n/a')} | "
            f"{num_text(info.get('source_test_accuracy'), '.3f')}"
            + (f" ({', '.join(num_text(a, '.3f') for a in curve)})" if curve else "")
            + " | "
            f"{pool.get('num_train', 'n/a')}/{pool.get('num_test', 'n/a')} |"
        )
    counts = ", ".join(f"{r}: {n}" for r, n in config.get("tasks_per_regime", {}).items())
    lines += [
        "",
        f"- Tasks per pair: {counts}; each draws 2..{config.get('max_classes') or 'all'} "
        "classes of the target pool.",
        f"- Target pool: at most {config.get('large_per_class')} training and "
        f"{config.get('test_per_class') or 'all'} test examples per class; no two tasks "
        "of one pair and regime share a class set; large_balanced uses all "
        f"pool examples of its classes, the small regimes at most "
        f"{config.get('small_per_class')} per class; small_imbalanced: largest/smallest "
        f"class = {config.get('imbalance_ratio')}; small_noisy: a share of "
        f"{config.get('noise_rate')} of the training labels flipped (test labels clean).",
        f"- Fine-tuning and training from scratch: {config.get('train_steps')} SGD steps on "
        f"every task whatever its size (test accuracy every {config.get('eval_every')} "
        f"steps), batch {config.get('batch_size')}; head re-training: a new linear head on "
        f"the frozen features, {config.get('head_epochs')} epochs at learning rate "
        f"{config.get('head_lr')}. A run is flagged at chance when a one-sided binomial "
        "test cannot tell its test accuracy from always predicting the most frequent test "
        f"class (level {config.get('chance_alpha')}).",
        f"- RQ4: {len(results.zoo) or len(config.get('zoo') or [])} zoo models, up to "
        f"{config.get('rq4_tasks')} tasks of {config.get('rq4_num_classes')} classes per "
        f"target ({', '.join(f'`{t}`' for t in config.get('rq4_targets') or ())}), "
        f"{config.get('rq4_train_steps')} fine-tuning steps; k-NN baseline with "
        f"k = {config.get('knn_neighbors')}.",
        "- Scores on the (possibly noisy) target training labels; accuracies on the clean "
        "target test examples.",
        "",
        f"Learning rates, chosen once per pair (and for RQ4) by the mean accuracy on "
        f"{config.get('validation_tasks')} validation tasks per pair or RQ4 target, built "
        f"from the training split with a held-out share of {config.get('validation_fraction')}"
        " of each class's examples (never from a test split; `results.json` `lr_selection`):",
        "",
        *tables.lr_selection_lines(results.lr_selection),
    ]
    return lines


def _lead_section(summary: Mapping[str, Mapping[str, RegimeSummary]], rq4: Selection) -> list[str]:
    lines = ["### Source selection (RQ4)", ""]
    if rq4.per_task:
        lines += [
            f"{len(rq4.per_task)} target tasks x {len(rq4.models)} zoo models"
            + (
                f" ({rq4.incomplete_tasks} tasks still incomplete, left out)"
                if rq4.incomplete_tasks
                else ""
            )
            + ". Per task, each method orders the models; weighted Kendall tau "
            "(`scipy.stats.weightedtau`, defaults, as in the LogME and SFDA benchmarks) "
            "against the fine-tuned accuracy the models reach, and top-1: the method's "
            "highest-scoring model is the best one (tied top scores: the expectation of a "
            "random pick among them, also for picked / best accuracy). Means over tasks with "
            "bootstrap 95 % intervals (10,000 resamples of the tasks, seeded); LEEP paired "
            "against each method over the same tasks (mean difference of tau with its "
            "bootstrap interval, two-sided Wilcoxon signed-rank p). Baselines: the source "
            "model's own test accuracy, its parameter count, and k-NN accuracy on the target "
            "features (source accuracy and size are one value per model, whatever the task).",
            "",
            *tables.selection_table(rq4, "fine_tune"),
            "",
            "The same with the accuracy of head re-training as the ground truth:",
            "",
            *tables.selection_table(rq4, "retrain_head"),
            "",
        ]
    else:
        lines += ["No complete RQ4 task yet (no zoo configured, or not reached).", ""]
    lines += [
        "### Scores with the class count controlled (RQ1, RQ3)",
        "",
        "Random tasks differ in their number of classes, which alone moves the accuracy "
        "and most scores. Partial r: the correlation after regressing both the score and "
        "the accuracy on log(number of classes) (t-test, n - 3 degrees of freedom); the "
        "`class count` column is the baseline score -log(number of classes), whose "
        "partial r is undefined by construction. Over distinct tasks; bold: the best score; "
        "† marks p >= 0.05.",
        "",
    ]
    for method in CORRELATED_METHODS:
        lines += [
            f"Partial r with the accuracy of {METHOD_LABELS[method]}:",
            "",
            *tables.correlation_table(summary, method, partial=True),
            "",
        ]
    lines += [
        "Within one class count: score and accuracy centred within each class count, one "
        "r over all centred tasks (class counts with fewer than 2 distinct tasks skipped; "
        "t-test with n - groups - 1 degrees of freedom).",
        "",
    ]
    for outcome in (*CORRELATED_METHODS, "gain"):
        label = (
            "fine-tuned minus from-scratch accuracy"
            if outcome == "gain"
            else (f"the accuracy of {METHOD_LABELS[outcome]}")
        )
        lines += [f"Pooled within-class-count r with {label}:", ""]
        lines += [*tables.within_table(summary, outcome), ""]
    note = tables.class_count_note(summary, "fine_tune")
    if note:
        lines += [
            "What the class count alone reaches (raw Pearson r of -log(number of classes) "
            "with fine-tuned accuracy): " + note[0] + ".",
            "",
        ]
    lines += [
        "### Runs at chance",
        "",
        "Rows whose test accuracy is no better than predicting the most frequent test "
        "class; they stay in every statistic.",
        "",
        *tables.at_chance_table(summary, rq4),
    ]
    return lines


_PAPER_CONTEXT = """\
The paper (Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate
Transferability of Learned Representations", ICML 2020, arXiv 2002.12462) builds 200
random target tasks from CIFAR100 for each of two source models, a ResNet20 pre-trained on
CIFAR10 and a ResNet18 pre-trained on ImageNet, and correlates LEEP, NCE (Tran et al.
2019) and H-score (Bao et al. 2019) with the test accuracy of head re-training and of
fine-tuning, also for small and imbalanced target sets; it also studies convergence,
source-model selection and meta-transfer learning with CNAPs. Its headline numbers,
beside this run's (raw Pearson r, as the paper reports it):
"""

_DEVIATIONS = """\
Only the paper's headline figures are quoted (from its abstract and Sec. 5.1 as
summarized in this project's design notes); its per-setting coefficients are not copied,
because the paper's text was not available offline to check them against.

What differs from the paper, so the numbers are not comparable one to one:
- Not done: the meta-transfer-learning study with CNAPs (listed with RQ2 in issue #14):
  there is no meta-learned CNAPs model here.
- Data: FashionMNIST, scikit-learn's 8x8 digits (upsampled to 28x28) and a rotated
  FashionMNIST source (10 classes x 4 rotations = 40 source classes, the large-label-space
  pair), grey-scale, instead of CIFAR10, CIFAR100 and ImageNet (those run through the same
  command with `--pair tfds:cifar10->tfds:cifar100` where TFDS data is available).
- Source architectures: small CNNs (and ResNet20s in the zoo) trained here on a CPU,
  for at most a few epochs; the paper's ImageNet ResNet18 source and its fully trained
  models are not reproduced.
- RQ4's zoo: models trained here on FashionMNIST class subsets, not the paper's
  ImageNet models; RQ4 tasks have a fixed number of classes (see Setup).
- Target tasks have few classes (at most the target pool's) instead of up to 100, and
  capped pool sizes.
- Training: a fixed budget of SGD steps for fine-tuning and training from scratch
  (see Setup), learning rates chosen on validation tasks rather than the paper's recipe.
- The small/imbalanced/noisy regimes use this project's definitions (see Setup), not
  necessarily the paper's exact sizes.
- Added beyond the paper: nine further scores of the library, class-count-controlled
  statistics (partial and pooled within-class-count r), averaging of repeated tasks,
  weighted Kendall tau with bootstrap intervals and paired tests for source selection,
  and the baselines class count, source accuracy, parameter count and k-NN accuracy.
"""


def _paper_comparison(summary: Mapping[str, Mapping[str, RegimeSummary]]) -> list[str]:
    """The paper's headline figures beside the same statistics of this run."""
    cells = []  # (LEEP's r, best r of NCE and H-score or None, where)
    for pair, regimes in summary.items():
        for regime, entry in regimes.items():
            for method in CORRELATED_METHODS:
                leep_r = entry.correlations["leep"][method].pearson_r
                others = [entry.correlations[s][method].pearson_r for s in PAPER_SCORES[1:]]
                others = [r for r in others if r is not None]
                if leep_r is not None:
                    where = f"`{pair}`, {regime}, {METHOD_LABELS[method]}"
                    cells.append((leep_r, max(others) if others else None, where))
    lines = ["| | the paper | this run |", "|---|---|---|"]
    here = "n/a"
    if cells:
        leep_r, _, where = max(cells, key=lambda c: c[0])
        here = f"up to {leep_r:+.2f} ({where})"
    lines.append(
        "| Pearson r of LEEP with transfer accuracy | up to 0.98 (CIFAR10 -> CIFAR100, "
        f"ResNet20 source, 200 random tasks) | {here} |"
    )
    margins = [(leep_r - other, where) for leep_r, other, where in cells if other is not None]
    here = "n/a"
    if margins:
        low = min(margins, key=lambda m: m[0])
        high = max(margins, key=lambda m: m[0])
        ahead = sum(margin >= 0 for margin, _ in margins)
        here = (
            f"LEEP ahead or tied in {ahead} of {len(margins)} cells; difference in r from "
            f"{low[0]:+.2f} ({low[1]}) to {high[0]:+.2f} ({high[1]})"
        )
    lines.append(
        "| LEEP against the best of NCE and H-score | LEEP ahead in most settings; up to "
        f"30% higher r (relative, ImageNet -> CIFAR100) | {here} |"
    )
    return lines


def _duplicates_note(summary: Mapping[str, Mapping[str, RegimeSummary]]) -> list[str]:
    merged = [
        f"`{pair}` {regime}: {entry.n_rows} rows, {entry.n_tasks} distinct tasks"
        for pair, regimes in summary.items()
        for regime, entry in regimes.items()
        if entry.duplicate_rows
    ]
    if not merged:
        return ["Every row is a distinct task."]
    return [
        "Rows that are the same task (the same class set in large_balanced) are averaged "
        "into one task before any statistic: " + "; ".join(merged) + "."
    ]


def _rq4_details(results: Results, rq4: Selection) -> list[str]:
    lines = ["Zoo:", "", *tables.zoo_table(results), ""]
    if rq4.per_task:
        lines += [
            "Per target pool, mean weighted tau and top-1 rate with fine-tuned accuracy:",
            "",
            *tables.selection_targets_table(rq4, "fine_tune"),
            "",
        ]
    return lines


def _glance(summary: Mapping[str, Mapping[str, RegimeSummary]], rq4: Selection) -> list[str]:
    """A few lines, each number taken from the tables below."""
    lines = []
    if rq4.per_task:
        ranked = sorted(
            (m for m in rq4.methods if rq4.all[m]["fine_tune"].weighted_tau.mean is not None),
            key=lambda m: -rq4.all[m]["fine_tune"].weighted_tau.mean,
        )
        lines.append(
            f"- RQ4, {len(rq4.per_task)} tasks x {len(rq4.models)} models, mean weighted tau "
            "with fine-tuned accuracy: "
            + ", ".join(
                f"{LABELS[m]} {tables.estimate_text(rq4.all[m]['fine_tune'].weighted_tau)}"
                for m in ranked
            )
            + "."
        )
    for pair, regimes in summary.items():
        entry = regimes.get("large_balanced")
        if entry is None or not entry.n_tasks:
            continue
        leep = entry.correlations["leep"]["fine_tune"]
        count = entry.correlations["class_count"]["fine_tune"]
        pooled = entry.within_class_count["leep"]["fine_tune"]
        lines.append(
            f"- RQ1, `{pair}`, {entry.n_tasks} large balanced tasks, with fine-tuned "
            f"accuracy: LEEP r {tables.r_text(leep.pearson_r, leep.p_value)}, class count "
            f"alone r {tables.r_text(count.pearson_r, count.p_value)}, LEEP partial r "
            f"{tables.r_text(leep.partial_r, leep.partial_p)}, LEEP pooled within-class-count "
            f"r {tables.r_text(pooled.r, pooled.p_value)}."
        )
    if lines:
        lines += ["", "† marks p >= 0.05."]
    return lines


def _analysis(results: Results) -> tuple[dict[str, Any], dict[str, Any], Selection]:
    config = results.config
    pairs = list(config.get("pairs", ()))
    regimes = list(config.get("tasks_per_regime", {}))
    # Rows of pairs or regimes the configuration does not list (none in a valid file)
    # would be silently dropped: list them too.
    pairs += sorted({t.pair for t in results.tasks} - set(pairs))
    regimes += sorted({t.regime for t in results.tasks} - set(regimes))
    return (
        summarize(results.tasks, pairs, regimes),
        convergence(results.tasks, pairs, regimes),
        selection(results.rq4_rows, results.zoo),
    )


def write_report(results: Results, out_dir: str | Path) -> Path:
    """Writes ``out_dir/report.md`` (and the figures of `write_figures`).

    Returns:
      The report's path.
    """
    out = Path(out_dir)
    summary, rq2, rq4 = _analysis(results)
    figures = write_figures(results, out, rq4)
    status = "complete" if results.complete else "INCOMPLETE (resume to finish)"
    lines = [
        "# LEEP paper experiments (leep-jax)",
        "",
        f"Status: {status}; {len(results.tasks)} target-task rows and "
        f"{len(results.rq4_rows)} RQ4 (task, model) rows. Generated from `results.json` by "
        "`leep_jax.experiments.report`: every number below is computed from its rows.",
        "",
    ]
    waiting = [
        f"`{pair}`"
        for pair in results.config.get("pairs", ())
        if not any(entry.n_rows for entry in summary.get(pair, {}).values())
    ]
    if waiting:
        lines += ["Pairs without rows yet: " + ", ".join(waiting) + ".", ""]
    if results.config.get("mode") == "quick":
        lines += [
            "**Quick mode**: a smoke test with a briefly trained source, tiny tasks and few "
            "epochs. Statistics over so few tasks are noisy; do not read them as results.",
            "",
        ]
    glance = _glance(summary, rq4)
    if glance:
        lines += ["## At a glance", "", *glance, ""]
    lines += ["## What the data support", "", *_lead_section(summary, rq4), ""]
    lines += ["## Setup", "", *_setup_section(results), ""]
    lines += ["## The paper's tables: scores vs transfer accuracy (RQ1, RQ3)", ""]
    lines += [*_duplicates_note(summary), ""]
    for method in CORRELATED_METHODS:
        lines += [
            f"Pearson r with the accuracy of {METHOD_LABELS[method]} (bold: the best score; "
            "† marks p >= 0.05, two-sided, `scipy.stats.pearsonr`):",
            "",
            *tables.correlation_table(summary, method, partial=False),
            "",
        ]
    lines += ["What the tasks look like, and the accuracy each method reached:", ""]
    lines += [*tables.accuracy_table(results), ""]
    lines += ["### The paper, for context", "", _PAPER_CONTEXT]
    lines += [*_paper_comparison(summary), "", _DEVIATIONS]
    lines += ["## RQ2: convergence", ""]
    lines += [
        "Correlation of the paper's scores with the fine-tuned test accuracy after each "
        "epoch, and with the gain of fine-tuning over training from scratch after the same "
        "number of steps: r (partial r given log(number of classes)).",
        "",
        *tables.convergence_tables(rq2),
    ]
    lines += ["## RQ4: details", "", *_rq4_details(results, rq4)]
    lines += ["## Time", "", *_timing_section(results)]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"- [{p.name}]({p.name})" for p in figures]
    path = out / "report.md"
    tmp = path.with_name(".report.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path
