"""`report.html`: one self-contained page (plots inlined as PNG, no network) to send to a team.

Warnings come first, under the title (scoring views that disagree, with example replies; dev choices
that were ties): they say which numbers below not to trust. Plots: accuracy and relevance per arm
with 95% CIs and the target line; the learning curves on shared axes; accuracy against per-query
cost (the frontier). Under the arms table, notes on arms whose prompts were shortened to fit the
context, and the scoring audit (reply against reference length, empty and cut replies, right in one view
only). Then the paired tests and the examples table (each arm's answer per test item), which a small
inline script filters by arm and by right/wrong; with scripts off, and in print, every row shows.
"""

from __future__ import annotations

import base64
import io
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import select_autoescape
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tuneorprompt.report.notes import forecast_lines, shortened_prompts
from tuneorprompt.summary import ACCURACY, RELEVANCE, Estimate

if TYPE_CHECKING:
    from tuneorprompt.decide import Recommendation
    from tuneorprompt.report.build import Report

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tuneorprompt: {{ r.name }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="tuneorprompt-page" content="{{ page_key }}">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.verdict { font-size: 18px; padding: 12px; background: #eef7ee; border-left: 4px solid #3a3; }
.none { background: #fff6e5; border-color: #e90; }
#details { font-size: 15px; }
img { max-width: 100%; }
code { background: #f4f4f4; padding: 1px 4px; }
.notes { color: #8a5a00; }
.warning { padding: 12px; margin: 1em 0; background: #fdecea; border-left: 4px solid #c33; }
.warning td { text-align: left; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
#examples td, #examples th { text-align: left; vertical-align: top; }
#examples td.right { background: #e6f4e6; }
#examples td.wrong { background: #fbe9e9; }
.mark { font-weight: 700; margin-right: 4px; }
.filters { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; margin: 8px 0; }
.filters[hidden] { display: none; }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
/* Printed, the page shows every example: the filter controls are gone, so a filtered view would
   silently drop rows. */
@media print { .filters { display: none !important; } #examples tbody tr[hidden] { display: table-row; }
  body { max-width: none; margin: 0; } #examples td.right, #examples td.wrong { background: none; } }
</style></head><body>
<h1>{{ r.name }}: prompt or fine-tune?</h1>
{% for w in r.warnings %}<div class="warning" id="warning-{{ w.code }}"><p><strong>Warning ({{ w.code }}):</strong>
{{ w.message }}</p>
{% if w.examples %}<table><tr><th scope="col">arm</th><th scope="col">reply</th><th scope="col">answer extracted</th><th scope="col">reference</th><th scope="col">strict</th>
<th scope="col">lenient</th></tr>
{% for e in w.examples %}<tr><td>{{ e.arm }}</td><td>{{ e.reply }}</td><td>{{ e.answer }}</td><td>{{ e.reference }}</td>
<td>{{ "%g" | format(e.strict) }}</td><td>{{ "%g" | format(e.lenient) }}</td></tr>{% endfor %}</table>{% endif %}
</div>{% endfor %}
<p>Model <code>{{ r.model }}</code>{% if r.served_models %} (the replies named {% for m in r.served_models %}<code>{{ m }}</code>{{ ", " if not loop.last }}{% endfor %}){% endif %}{% if r.protocol %}, {{ "with its chat template" if r.protocol.model.chat_template else "without a chat template" }}{% if r.protocol.prompt.system %} (system message: <code>{{ r.protocol.prompt.system }}</code>){% endif %}{% endif %}; {{ r.data.n_test }} test items ({{ r.data.n_train }} train, {{ r.data.n_dev }} dev);
target accuracy {{ ACCURACY.with_unit(r.target.accuracy, 0) }}{% if r.target.lenient %} (lenient){% endif %};
strategy {{ r.strategy }}.</p>
{% set d = r.recommendation %}<div id="verdict" class="verdict {% if not d.arm %}none{% endif %}"><p id="headline"><strong>{{ d.headline }}</strong></p>
<p id="details">{{ d.details }}</p></div>
<h2>Arms</h2>
<table id="arms"><caption>Each arm on the {{ r.data.n_test }} test items: accuracy, relevance and costs</caption>
<thead><tr><th scope="col">arm</th><th scope="col">accuracy % [95% CI]</th><th scope="col">against the target</th><th scope="col">lenient accuracy % [95% CI]</th>
<th scope="col">relevance [95% CI]</th><th scope="col">prompt tokens</th>
<th scope="col">generated tokens</th><th scope="col">ms / query</th><th scope="col">GFLOPs / query</th><th scope="col">training s</th><th scope="col">training PFLOPs</th><th scope="col">peak RSS MiB</th></tr></thead>
<tbody>{% for a in r.arms %}<tr><th scope="row">{{ a.name }}{% if show_backends %}<br><small>({{ a.backend }})</small>{% endif %}</th>
<td>{{ a.accuracy.shown() }}</td>
<td>{{ target_state(d, a.name) }}</td>
<td>{{ a.accuracy_lenient.shown() }}</td>
<td>{{ a.relevance.shown() }}</td>
<td>{{ "%.0f" | format(a.prompt_tokens) }}</td><td>{{ "%.1f" | format(a.generated_tokens) }}</td>
<td>{{ "%.1f" | format(1000 * a.seconds_per_query) }}</td>
<td>{{ "%.3g" | format(a.flops_per_query / 1e9) if a.flops_per_query else "-" }}</td>
<td>{{ "%.0f" | format(a.training.wall_seconds) if a.training else "-" }}</td>
<td>{{ "%.3g" | format(a.training.flops / 1e15) if a.training else "-" }}</td>
<td>{{ "%.0f" | format(a.peak_rss_mb) if a.peak_rss_mb else "-" }}</td></tr>
{% endfor %}</tbody></table>
<p><small>Accuracy is the strict view (metric.accuracy on the extracted answer); lenient accuracy counts a reply
right when a reference answer appears in it, not counting text copied from the question.</small></p>
{% if notes %}<ul class="notes">{% for note in notes %}<li>{{ note }}</li>{% endfor %}</ul>{% endif %}
<details><summary>What the model saw: each arm's prompt for the first test item, as rendered</summary>
{% for a in r.arms if a.example_prompt %}<h3>{{ a.name }}</h3><pre>{{ a.example_prompt }}</pre>{% endfor %}
</details>
<h2>Plots</h2>
{% for title, alt, png in plots %}<h3>{{ title }}</h3><img class="plot" alt="{{ alt }}" src="data:image/png;base64,{{ png }}">{% endfor %}
<h2>Scoring audit</h2>
<table><tr><th scope="col">arm</th><th scope="col">reply words</th><th scope="col">answer words</th><th scope="col">reference words</th><th scope="col">empty replies</th>
<th scope="col">replies cut at the size cap</th><th scope="col">right strict only</th><th scope="col">right lenient only</th></tr>
{% for a in r.arms %}{% set s = a.scoring_audit %}<tr><td>{{ a.name }}</td>
<td>{{ "%.1f" | format(s.reply_words) }}</td><td>{{ "%.1f" | format(s.answer_words) }}</td>
<td>{{ "%.1f" | format(s.reference_words) }}</td><td>{{ s.empty_replies }} of {{ s.replies }}</td><td>{{ s.replies_cut }}</td>
<td>{{ s.strict_only }}</td><td>{{ s.lenient_only }}</td></tr>{% endfor %}</table>
{% if r.break_even %}<h2>Break-even</h2><table><tr><th scope="col">fine-tuned arm</th><th scope="col">against</th><th scope="col">queries to repay training</th></tr>
{% for b in r.break_even %}<tr><td>{{ b.arm }}</td><td>{{ b.against }}</td>
<td>{{ "{:,.0f}".format(b.queries) if b.queries is not none else "never (its queries are not cheaper)" }}</td></tr>{% endfor %}
</table>{% endif %}
{% if d.differences %}<h2>{{ d.arm or d.best }} against each other arm</h2>
<table id="differences"><caption>Accuracy of {{ d.arm or d.best }} minus each arm: paired bootstrap over test items{% if has_seeds %} and seeds{% endif %}</caption>
<tr><th scope="col">arm</th><th scope="col">difference, points [{{ "%.0f" | format(100 * d.level) }}% CI]</th><th scope="col">between-seed spread (sd, points)</th></tr>
{% for name, diff in d.differences.items() %}<tr><td>{{ name }}</td>
<td>{{ "%+.1f [%+.1f, %+.1f]" | format(100 * diff.value, 100 * diff.low, 100 * diff.high) }}</td>
<td>{{ "%.1f" | format(100 * diff.seed_spread) if diff.seed_spread is not none else "-" }}</td></tr>{% endfor %}</table>
{% if d.noninferiority %}{% set ni = d.noninferiority %}<p id="noninferiority">Non-inferiority of {{ d.arm }} against {{ d.best }}
(margin {{ "%.1f" | format(100 * d.margin) }} points): difference {{ "%+.1f" | format(100 * ni.difference) }} points, one-sided lower bound
{{ "%+.1f" | format(100 * ni.lower) }}, p = {{ "%.3g" | format(ni.p_value) }} ({{ ni.test }}):
{{ "passes" if ni.passes else "does not pass" }}; power {{ "%.0f" | format(100 * ni.power) }}% were the arms equal.</p>{% endif %}{% endif %}
{% for a in r.arms if a.kind == "prompt_search" %}{% set d = a.details[0] %}<h2 id="search-{{ loop.index }}">Prompt search: {{ a.name }}</h2>
<p>Chosen on held-out dev ({{ d.dev_items.holdout }} items the search never saw): <strong>{{ d.chosen }}</strong>, {{ "%.1f" | format(100 * d.holdout_score) }}% there against
{{ "%.1f" | format(100 * d.best_search_score) }}% in the search (dev optimism {{ "%+.1f" | format(100 * d.dev_optimism) }} points).
{{ d.candidates_looked_at }} of {{ d.candidates_in_space }} candidates looked at, {{ d.calls }} calls, {{ "%.3g" | format(d.spent_flops) }} of a {{ "%.3g" | format(d.budget_flops) }} FLOPs budget; first seed{% if a.details | length > 1 %} of {{ a.details | length }}{% endif %}.</p>
<table class="search-top"><caption>The top 5 candidates on dev, and what each costs</caption>
<tr><th scope="col">candidate</th><th scope="col">dev accuracy %</th><th scope="col">dev items</th><th scope="col">search FLOPs spent on it</th><th scope="col">FLOPs per query</th></tr>
{% for t in d.top %}<tr><td>{{ t.candidate }}</td><td>{{ "%.1f" | format(100 * t.dev_score) }}</td><td>{{ t["items"] }}</td>
<td>{{ "%.3g" | format(t.search_flops) }}</td><td>{{ "%.3g" | format(t.flops_per_query) }}</td></tr>{% endfor %}</table>
<details><summary>The winning prompt, as the model saw it for one held-out dev item</summary><pre>{{ d.winning_prompt }}</pre></details>
{% endfor %}
{% for a in r.arms if a.details and a.details[0].searches %}{% set d = a.details[0] %}{% set t = d.trained_with %}{% set x = a.training.extra[0] %}
<h2 id="chain-{{ loop.index }}">Chain: {{ a.name }}</h2>
<p>Trained and queried with the prompt searched on the base model: {{ t.instruction or "no instruction" }}{% if t.instruction %} ({{ t.placement }}){% endif %}{% if t.format_line %}, format line "{{ t.format_line }}"{% endif %}{% if t.demos_dropped %}; its {{ t.demos_dropped.k }} {{ t.demos_dropped.source }} demos ({{ t.demos_dropped.selection }}) were left out of training and queries{% endif %}.
{% if d.searches | length > 1 %}The prompt was then searched again on the fine-tuned model, and test was answered with that search's pick.{% endif %} First seed{% if a.details | length > 1 %} of {{ a.details | length }}{% endif %}.</p>
<table class="chain-steps"><caption>Each step of the chain, in order, and its one-time FLOPs</caption>
<tr><th scope="col">step</th><th scope="col">pick</th><th scope="col">held-out dev %</th><th scope="col">dev optimism, points</th><th scope="col">FLOPs spent (budget)</th></tr>
{% for s in d.searches %}<tr><td>prompt search on the {{ "base" if loop.first else "fine-tuned" }} model</td><td>{{ s.chosen }}</td>
<td>{{ "%.1f" | format(100 * s.holdout_score) }}</td><td>{{ "%+.1f" | format(100 * s.dev_optimism) }}</td>
<td>{{ "%.3g (%.3g)" | format(s.spent_flops, s.budget_flops) }}</td></tr>
{% if loop.first %}<tr><td>training</td><td>lr {{ "%g" | format(x.learning_rate) }}, epoch {{ x.epoch }} of the grid</td><td>{{ "%.1f" | format(100 * x.dev_score) }} (all of dev)</td><td>-</td>
<td>{{ "%.3g" | format(x.training_flops) }}</td></tr>{% endif %}{% endfor %}</table>
{% if d.query_prompt %}<details><summary>The prompt test was answered with, as the fine-tuned model saw it for the first dev item</summary><pre>{{ d.query_prompt }}</pre></details>{% endif %}
{% endfor %}
{% if r.effort %}<h2>Effort: dev accuracy against one-time FLOPs</h2>
{% for c in r.effort.comparisons %}<p class="effort">{{ c.sentence }}</p>{% endfor %}
<table id="effort"><caption>Each side's search on dev: where its standing ended, and what it spent</caption>
<tr><th scope="col">arm</th><th scope="col">side</th><th scope="col">looks or checkpoints</th><th scope="col">final dev standing</th><th scope="col">one-time FLOPs</th><th scope="col">how counted</th></tr>
{% for curve in r.effort.curves %}<tr><td>{{ curve.arm }}</td><td>{{ "prompt search" if curve.side == "prompt" else "fine-tuning grid" }}</td>
<td>{{ curve.points | length }}</td><td>{{ "%.1f%% (%s)" | format(100 * curve.standing[-1].dev_accuracy, curve.standing[-1].label) if curve.standing else "-" }}</td>
<td>{{ "%.3g" | format(curve.total_flops) }}</td><td>{{ curve.counted }}</td></tr>{% endfor %}</table>{% endif %}
{% if forecast_notes %}<h2>Label forecast</h2><ul id="forecast">{% for line in forecast_notes %}<li>{{ line }}</li>{% endfor %}</ul>
<p><small>{{ forecast_method }}</small></p>{% endif %}
<h2>Paired tests (same test items)</h2>
<table id="paired-tests"><caption>Each arm against the baseline and against the recommended arm; Holm p: adjusted over every pair of arms</caption>
<tr><th scope="col">arm</th><th scope="col">against</th><th scope="col">accuracy difference [95% CI]</th><th scope="col">test</th><th scope="col">p</th><th scope="col">Holm p</th>
<th scope="col">smallest detectable difference (80% power)</th>
<th scope="col">relevance difference [95% CI]</th><th scope="col">paired bootstrap p</th><th scope="col">Holm p</th></tr>
{% for t in r.paired_tests %}<tr><td>{{ t.arm }}</td><td>{{ t.against }}</td>
<td>{{ ACCURACY.show_difference(t.accuracy) }}</td>
<td>{{ t.accuracy.test }}</td><td>{{ "%.3g" | format(t.accuracy.p_value) }}</td><td>{{ "%.3g" | format(t.accuracy.p_adjusted) }}</td>
<td>{{ "%.1f points" | format(100 * t.accuracy.detectable) if t.accuracy.detectable is not none else "none (too few items differ)" }}</td>
<td>{{ RELEVANCE.show_difference(t.relevance) }}</td>
<td>{{ "%.3g" | format(t.relevance.p_value) }}</td><td>{{ "%.3g" | format(t.relevance.p_adjusted) }}</td></tr>{% endfor %}</table>
{% if examples %}<h2 id="examples-heading">Examples</h2>
<p>{% if examples | length < n_examples %}{{ examples | length }} of the {{ n_examples }} test items (first those where
the arms disagree){% else %}All {{ n_examples }} test items{% endif %}, first seed of each arm: the answer each arm
extracted, marked right (&#10003;) or wrong (&#10007;) in the strict view.</p>
<div class="filters" id="example-filters" hidden>
<label for="filter-arm">Arm</label>
<select id="filter-arm"><option value="">all arms</option>{% for name in example_arms %}<option value="{{ name }}">{{ name }}</option>{% endfor %}</select>
<label for="filter-outcome">Outcome</label>
<select id="filter-outcome"><option value="">right or wrong</option><option value="right">right (with all arms: in any arm)</option>
<option value="wrong">wrong (with all arms: in any arm)</option></select>
<label><input type="checkbox" id="filter-disagree"> only items where the arms disagree</label>
<output id="filter-count" for="filter-arm filter-outcome filter-disagree" aria-live="polite"></output>
</div>
<table id="examples"><caption>Test items: the reference answer and each arm's answer</caption>
<thead><tr><th scope="col">id</th><th scope="col">reference</th>{% for name in example_arms %}<th scope="col">{{ name }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in examples %}<tr{% if row.disagree %} data-disagree{% endif %}><th scope="row">{{ row.id }}</th><td>{{ row.reference }}</td>
{% for cell in row.answers %}<td class="{{ 'right' if cell.correct else 'wrong' }}" data-arm="{{ cell.arm }}" data-outcome="{{ 'right' if cell.correct else 'wrong' }}"><span class="mark" aria-hidden="true">{{ "✓" if cell.correct else "✗" }}</span><span class="visually-hidden">{{ "right:" if cell.correct else "wrong:" }}</span> {{ cell.answer }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
<script>
// The filter only hides rows: with scripts off, or printed, every row shows and the controls stay hidden.
(function () {
  var table = document.getElementById("examples");
  var controls = document.getElementById("example-filters");
  var arm = document.getElementById("filter-arm");
  var outcome = document.getElementById("filter-outcome");
  var disagree = document.getElementById("filter-disagree");
  var count = document.getElementById("filter-count");
  var rows = Array.prototype.slice.call(table.tBodies[0].rows);
  function apply() {
    var shown = 0;
    rows.forEach(function (row) {
      var cells = Array.prototype.filter.call(row.cells, function (cell) {
        return cell.hasAttribute("data-arm") && (!arm.value || cell.getAttribute("data-arm") === arm.value);
      });
      var keep = (!outcome.value || cells.some(function (cell) {
        return cell.getAttribute("data-outcome") === outcome.value;
      })) && (!disagree.checked || row.hasAttribute("data-disagree"));
      row.hidden = !keep;
      if (keep) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " items shown";
  }
  [arm, outcome, disagree].forEach(function (control) { control.addEventListener("change", apply); });
  controls.hidden = false;
  apply();
})();
</script>{% endif %}
<p><small>Generated by tuneorprompt {{ r.environment.packages.tuneorprompt }}; commit {{ r.environment.git_commit }}.</small></p>
</body></html>
"""

_ENV = ImmutableSandboxedEnvironment(autoescape=select_autoescape(default=True, default_for_string=True))

# Plots are drawn on matplotlib's object-oriented Figure with an Agg canvas, imported when a plot is
# drawn: no global backend or pyplot state is touched (a notebook's own plots stay as they are).


def _axes(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _bars(arms: list[tuple[str, Estimate]], label: str, target: float | None) -> str:
    """A bar per arm with its 95% CI; `target` (reported scale) as a dashed line."""
    figure, axis = _axes(max(6, 0.9 * len(arms)), 3.5)
    values = [e.scale.to_shown(e.value) for _, e in arms]
    # Clipped at 0: a bootstrap bound can sit a rounding error inside the point estimate.
    errors = [[max(0.0, v - e.scale.to_shown(e.ci_low)) for v, (_, e) in zip(values, arms)],
              [max(0.0, e.scale.to_shown(e.ci_high) - v) for v, (_, e) in zip(values, arms)]]
    axis.bar(range(len(arms)), values, yerr=errors, capsize=4, color="#5b8def")
    axis.set_xticks(range(len(arms)), [name for name, _ in arms], rotation=30, ha="right")
    axis.set_ylabel(f"{label} (95% CI)")
    axis.set_ylim(min(0.0, min(values)), 100)  # accuracy (%) and relevance are both shown on a 0-100 scale
    if target is not None:
        axis.axhline(ACCURACY.to_shown(target), color="#c33", linestyle="--", label="target")
        axis.legend()
    return _png(figure)


def _bars_alt(arms: list[tuple[str, Estimate]], label: str, target: float | None) -> str:
    """The bar chart in words, for a screen reader or a page whose images did not load."""
    values = "; ".join(
        f"{name} {e.scale.with_unit(e.value)} [{e.scale.show(e.ci_low)}, {e.scale.show(e.ci_high)}]" for name, e in arms
    )
    line = f"; dashed line: the target, {ACCURACY.with_unit(target, 0)}" if target is not None else ""
    return f"Bar chart of {label} per arm with 95% confidence intervals{line}. {values}."


def _learning_curve(curve: dict) -> str:
    figure, axis = _axes(6, 3.5)
    for key, label in (("few_shot", "few-shot (k demos)"), ("finetune", f"{curve['finetune_kind']} (n examples)")):
        points = curve[key]
        xs = [max(p["x"], 0.5) for p in points]  # k=0 drawn at 0.5 on the log axis
        shown = [ACCURACY.to_shown(p["accuracy"]) for p in points]
        axis.errorbar(xs, shown,
                      yerr=[[max(0.0, y - ACCURACY.to_shown(p["ci_low"])) for y, p in zip(shown, points)],
                            [max(0.0, ACCURACY.to_shown(p["ci_high"]) - y) for y, p in zip(shown, points)]],
                      marker="o", capsize=3, label=label)
    if curve.get("crossover"):
        axis.axvline(curve["crossover"], color="#888", linestyle=":", label="crossover")
    axis.set_xscale("log", base=2)
    xs = sorted({p["x"] for key in ("few_shot", "finetune") for p in curve[key]})
    axis.set_xticks([max(x, 0.5) for x in xs], [str(x) for x in xs])  # plain counts, k=0 at 0.5
    axis.minorticks_off()
    axis.set_xlabel(curve["x_label"])
    axis.set_ylabel("accuracy %")
    axis.legend()
    return _png(figure)


def _frontier(report: Report) -> tuple[str, str] | None:
    """Accuracy against the cost per query the arms were ranked by (`recommendation.cost_basis`):
    inference FLOPs, or prompt + generated tokens when the model's size is unknown. (alt, png)"""
    if not report.arms:
        return None
    if report.recommendation.cost_basis == "flops":
        cost = {a.name: a.flops_per_query for a in report.arms}
        label, unit, scale = "inference FLOPs per query", "GFLOPs", 1e9
    else:
        cost = {a.name: a.prompt_tokens + a.generated_tokens for a in report.arms}
        label, unit, scale = "tokens per query (prompt + generated; the model's size is unknown)", "tokens", 1.0
    points = [(a.name, cost[a.name], ACCURACY.to_shown(a.accuracy.value), a.family == "finetune") for a in report.arms]
    figure = frontier_figure(points, f"{label} (red: fine-tuned, plus one-time training)")
    listed = "; ".join(f"{a.name} {ACCURACY.with_unit(a.accuracy.value)} at {cost[a.name] / scale:.3g} {unit}"
                       for a in report.arms)
    return f"Scatter plot of accuracy against {label}, one point per arm. {listed}.", _png(figure)


def frontier_figure(points: list[tuple[str, float, float, bool]], x_label: str):
    """The accuracy-vs-cost scatter of (arm, cost, accuracy %, fine-tuned) points, on a log cost axis
    whose tick labels never overlap (`log_ticks`) and read compactly: 200M, 5G, 10T."""
    from matplotlib.ticker import EngFormatter, FixedLocator, NullLocator

    figure, axis = _axes(6, 3.5)
    for name, x, y, trained in points:
        axis.scatter(x, y, color="#c33" if trained else "#5b8def")
        axis.annotate(name, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    axis.set_xscale("log")
    low, high = log_view([x for _, x, _, _ in points])
    axis.set_xlim(low, high)
    axis.xaxis.set_major_locator(FixedLocator(log_ticks(low, high)))
    axis.xaxis.set_major_formatter(EngFormatter(sep=""))  # SI prefixes: 1e9 is 1G, 2e13 is 20T
    axis.xaxis.set_minor_locator(NullLocator())
    axis.set_xlabel(x_label)
    axis.set_ylabel("accuracy %")
    return figure


def log_view(values: list[float]) -> tuple[float, float]:
    """Log-axis limits around positive `values`: a margin of a tenth of their span each side, and at
    least a decade in all, so that at least two ticks of 1, 2, 5 x 10^k fall inside."""
    low, high = (math.log10(v) for v in (min(values), max(values)))
    middle, half = (low + high) / 2, max(0.6 * (high - low), 0.5)
    return 10 ** (middle - half), 10 ** (middle + half)


def log_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """At most `most` ticks in [low, high]: 1, 2 and 5 x 10^k where that few fit, else 1 and 3, else the
    powers of ten, every second or third one over a wide range (matplotlib's own log ticks label the
    2-9 x 10^k minor ticks over a decade or two, and those labels run into each other)."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for multiples in ((1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10.0**k for k in decades for m in multiples if low <= m * 10.0**k <= high]
        if len(ticks) <= most:
            return ticks
    return ticks[:: math.ceil(len(ticks) / most)]


def _effort(effort: dict) -> str:
    """Each curve's standing as a step line over cumulative FLOPs; a grid's checkpoints as dots."""
    figure, axis = _axes(6, 3.5)
    for curve in effort["curves"]:
        standing = curve["standing"]
        line, = axis.step([p["flops"] for p in standing], [ACCURACY.to_shown(p["dev_accuracy"]) for p in standing],
                          where="post", label=f"{curve['arm']} ({'search' if curve['side'] == 'prompt' else 'grid'})")
        axis.scatter([p["flops"] for p in curve["points"]], [ACCURACY.to_shown(p["dev_accuracy"]) for p in curve["points"]],
                     s=10, color=line.get_color(), alpha=0.5)
    axis.set_xscale("log")
    axis.set_xlabel("one-time FLOPs spent on dev (log scale)")
    axis.set_ylabel("dev accuracy %")
    axis.legend(fontsize=8)
    return _png(figure)


def _effort_alt(effort: dict) -> str:
    ends = "; ".join(f"{c['arm']}: {ACCURACY.with_unit(c['standing'][-1]['dev_accuracy'])} on dev after "
                     f"{c['total_flops']:.3g} FLOPs" for c in effort["curves"] if c["standing"])
    return f"Step chart of each side's dev standing against the one-time FLOPs it spent. {ends}."


_FORECAST_CURVES = (("finetune", "training examples", "#c33"), ("few_shot", "demos", "#5b8def"))


def _forecast(curve: dict, target: float) -> str:
    """Each curve's measured points and its forecast with the band, out to 4x the labels used."""
    figure, axis = _axes(6, 3.5)
    for key, unit, color in _FORECAST_CURVES:
        forecast = curve["forecast"].get(key)
        if not forecast or not forecast["band"]:
            continue
        name = curve["finetune_kind"] if key == "finetune" else "few-shot"
        band = forecast["band"]
        xs = [p["labels"] for p in band]
        axis.fill_between(xs, [ACCURACY.to_shown(p["low"]) for p in band], [ACCURACY.to_shown(p["high"]) for p in band],
                          color=color, alpha=0.15, linewidth=0)
        axis.plot(xs, [ACCURACY.to_shown(p["value"]) for p in band], color=color, label=f"{name} ({unit}): forecast")
        observed = forecast["observed"]
        axis.scatter([x for x, _ in observed], [ACCURACY.to_shown(y) for _, y in observed], color=color, zorder=3)
    axis.axhline(ACCURACY.to_shown(target), color="#888", linestyle="--", label="target")
    axis.set_xscale("log")
    axis.set_xlabel("labelled examples (log scale); shaded: the forecast's band")
    axis.set_ylabel("accuracy %")
    axis.legend(fontsize=8)
    return _png(figure)


def _forecast_alt(curve: dict, target: float) -> str:
    parts = []
    for key, unit, _ in _FORECAST_CURVES:
        forecast = curve["forecast"].get(key)
        if forecast and forecast["predictions"]:
            name = curve["finetune_kind"] if key == "finetune" else "few-shot"
            parts.append(f"{name}: " + ", ".join(
                f"{ACCURACY.with_unit(p['value'])} [{ACCURACY.show(p['low'])}, {ACCURACY.show(p['high'])}] at {p['labels']:,.0f} {unit}"
                for p in forecast["predictions"]))
    return (f"Line chart of accuracy against labelled examples, measured points and the forecast with its band; dashed "
            f"line: the target, {ACCURACY.with_unit(target, 0)}. " + "; ".join(parts) + ".")


def target_state(decision: Recommendation, name: str) -> str:
    """An arm against the target: "meets", "falls short", or "undecided" with the test items that would decide it."""
    state = decision.states.get(name, "-")  # an arm skipped by the ladder has no state
    items = decision.items_to_decide.get(name)
    return f"{state} (~{items:,} items)" if items is not None else state


_PAGE_KEY = re.compile(r'<meta name="tuneorprompt-page" content="([0-9a-f]{64})">')


def written_page_key(path: Path) -> str | None:
    """The content key a report.html already at `path` was written under (`report.build.page_key`)."""
    try:
        with path.open(encoding="utf-8") as page:
            found = _PAGE_KEY.search(page.read(4096))  # in the page's head
    except (OSError, UnicodeDecodeError):
        return None
    return found.group(1) if found else None


def render_html(report: Report, page_key: str) -> str:
    accuracy = [(a.name, a.accuracy) for a in report.arms]
    relevance = [(a.name, a.relevance) for a in report.arms]
    target = report.target.accuracy
    plots = [("Task accuracy", _bars_alt(accuracy, "accuracy", target), _bars(accuracy, "accuracy", target)),
             ("Response relevance", _bars_alt(relevance, "relevance", None), _bars(relevance, "relevance", None))]
    if report.learning_curve:
        curve = report.learning_curve
        plots.append(("Learning curves", f"Line chart of accuracy against {curve['x_label']}: few-shot with k demos "
                      f"and {curve['finetune_kind']} with n training examples, with 95% confidence intervals"
                      + (f"; fine-tuning overtakes at {curve['crossover']}." if curve.get("crossover") else "."),
                      _learning_curve(curve)))
    if report.effort and report.effort["curves"]:
        plots.append(("Effort: dev accuracy against one-time FLOPs", _effort_alt(report.effort), _effort(report.effort)))
    forecasts = (report.learning_curve or {}).get("forecast") or {}
    if any(forecast["band"] for forecast in forecasts.values()):
        plots.append(("Label forecast", _forecast_alt(report.learning_curve, target), _forecast(report.learning_curve, target)))
    frontier = _frontier(report)
    if frontier:
        plots.append(("Accuracy against cost per query", *frontier))
    return _ENV.from_string(PAGE).render(
        r=report, page_key=page_key, plots=plots, notes=shortened_prompts(report), ACCURACY=ACCURACY, RELEVANCE=RELEVANCE,
        # Which backend answered each arm, once they differ: a served model's fine-tuned arms run on transformers.
        show_backends=any(a.backend != "hf" for a in report.arms),
        example_arms=report.examples.arms, examples=report.examples.rows, n_examples=report.examples.n_items,
        target_state=target_state, has_seeds=any(len(a.seeds) > 1 for a in report.arms),
        forecast_notes=forecast_lines(report),
        forecast_method=next((f["method"] for f in forecasts.values() if f.get("method")), ""),
    )
