"""`report.html`: one self-contained page (plots inlined as PNG, no network) to send to a team.

Warnings come first, under the title (scoring views that disagree, with example replies; dev choices
that were ties): they say which numbers below not to trust. Plots: accuracy and relevance per arm
with 95% CIs and the target line; the learning curves on shared axes; accuracy against per-query
cost (the frontier). Under the arms table, notes on arms whose prompts were shortened to fit the
context, and the scoring audit (reply against reference length, empty replies, right in one view
only). Then the paired tests and examples where the arms disagree.
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display; also keeps a notebook's backend untouched
import matplotlib.pyplot as plt
from jinja2 import select_autoescape
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tuneorprompt.records import ExampleRecord
from tuneorprompt.report.notes import shortened_prompts

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tuneorprompt: {{ r.name }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.verdict { font-size: 18px; padding: 12px; background: #eef7ee; border-left: 4px solid #3a3; }
.none { background: #fff6e5; border-color: #e90; }
img { max-width: 100%; }
code { background: #f4f4f4; padding: 1px 4px; }
.notes { color: #8a5a00; }
.warning { padding: 12px; margin: 1em 0; background: #fdecea; border-left: 4px solid #c33; }
.warning td { text-align: left; }
</style></head><body>
<h1>{{ r.name }}: prompt or fine-tune?</h1>
{% for w in r.warnings or [] %}<div class="warning" id="warning-{{ w.code }}"><p><strong>Warning ({{ w.code }}):</strong>
{{ w.message }}</p>
{% if w.examples %}<table><tr><th>arm</th><th>reply</th><th>answer extracted</th><th>reference</th><th>strict</th>
<th>lenient</th></tr>
{% for e in w.examples %}<tr><td>{{ e.arm }}</td><td>{{ e.reply }}</td><td>{{ e.answer }}</td><td>{{ e.reference }}</td>
<td>{{ "%g" | format(e.strict) }}</td><td>{{ "%g" | format(e.lenient) }}</td></tr>{% endfor %}</table>{% endif %}
</div>{% endfor %}
<p>Model <code>{{ r.model }}</code>{% if r.protocol %}, {{ "with its chat template" if r.protocol.model.chat_template else "without a chat template" }}{% if r.protocol.prompt.system %} (system message: <code>{{ r.protocol.prompt.system }}</code>){% endif %}{% endif %}; {{ r.data.n_test }} test items ({{ r.data.n_train }} train, {{ r.data.n_dev }} dev);
target accuracy {{ "%.0f" | format(100 * r.target.accuracy) }}%{% if r.target.lenient %} (lenient){% endif %};
strategy {{ r.strategy }}.</p>
<p class="verdict {% if not r.recommendation.arm %}none{% endif %}">{{ r.recommendation.reason }}</p>
<h2>Arms</h2>
<table><tr><th>arm</th><th>accuracy % [95% CI]</th><th>lenient accuracy % [95% CI]</th>
<th>relevance [95% CI]</th><th>prompt tokens</th>
<th>generated tokens</th><th>ms / query</th><th>GFLOPs / query</th><th>training s</th><th>training PFLOPs</th></tr>
{% for a in r.arms %}<tr><td>{{ a.name }}</td>
<td>{{ "%.1f [%.1f, %.1f]" | format(100 * a.accuracy.value, 100 * a.accuracy.ci_low, 100 * a.accuracy.ci_high) }}</td>
<td>{% set l = a.accuracy_lenient %}{{ "%.1f [%.1f, %.1f]" | format(100 * l.value, 100 * l.ci_low, 100 * l.ci_high) if l else "-" }}</td>
<td>{{ "%.1f [%.1f, %.1f]" | format(a.relevance.value, a.relevance.ci_low, a.relevance.ci_high) }}</td>
<td>{{ "%.0f" | format(a.prompt_tokens) }}</td><td>{{ "%.1f" | format(a.generated_tokens) }}</td>
<td>{{ "%.1f" | format(1000 * a.seconds_per_query) }}</td>
<td>{{ "%.3g" | format(a.flops_per_query / 1e9) if a.flops_per_query else "-" }}</td>
<td>{{ "%.0f" | format(a.training.wall_seconds) if a.training else "-" }}</td>
<td>{{ "%.3g" | format(a.training.flops / 1e15) if a.training else "-" }}</td></tr>
{% endfor %}</table>
<p><small>Accuracy is the strict view (metric.accuracy on the extracted answer); lenient accuracy counts a reply
right when a reference answer appears in it, not counting text copied from the question.</small></p>
{% if notes %}<ul class="notes">{% for note in notes %}<li>{{ note }}</li>{% endfor %}</ul>{% endif %}
<details><summary>What the model saw: each arm's prompt for the first test item, as rendered</summary>
{% for a in r.arms if a.example_prompt %}<h3>{{ a.name }}</h3><pre>{{ a.example_prompt }}</pre>{% endfor %}
</details>
{% for title, png in plots %}<h3>{{ title }}</h3><img alt="{{ title }}" src="data:image/png;base64,{{ png }}">{% endfor %}
<h2>Scoring audit</h2>
<table><tr><th>arm</th><th>reply words</th><th>answer words</th><th>reference words</th><th>empty replies</th>
<th>right strict only</th><th>right lenient only</th></tr>
{% for a in r.arms if a.scoring_audit %}{% set s = a.scoring_audit %}<tr><td>{{ a.name }}</td>
<td>{{ "%.1f" | format(s.reply_words) }}</td><td>{{ "%.1f" | format(s.answer_words) }}</td>
<td>{{ "%.1f" | format(s.reference_words) }}</td><td>{{ s.empty_replies }} of {{ s.replies }}</td>
<td>{{ s.strict_only }}</td><td>{{ s.lenient_only }}</td></tr>{% endfor %}</table>
{% if r.break_even %}<h2>Break-even</h2><table><tr><th>fine-tuned arm</th><th>against</th><th>queries to repay training</th></tr>
{% for b in r.break_even %}<tr><td>{{ b.arm }}</td><td>{{ b.against }}</td>
<td>{{ "{:,.0f}".format(b.queries) if b.queries is not none else "never (its queries are not cheaper)" }}</td></tr>{% endfor %}
</table>{% endif %}
<h2>Paired tests (same test items)</h2>
<table><tr><th>arm</th><th>against</th><th>accuracy difference [95% CI]</th><th>test</th><th>p</th>
<th>relevance difference [95% CI]</th><th>paired bootstrap p</th></tr>
{% for t in r.paired_tests %}<tr><td>{{ t.arm }}</td><td>{{ t.against }}</td>
<td>{{ "%+.1f [%+.1f, %+.1f]" | format(100 * t.accuracy.difference, 100 * t.accuracy.diff_low, 100 * t.accuracy.diff_high) }}</td>
<td>{{ t.accuracy.test }}</td><td>{{ "%.3g" | format(t.accuracy.p_value) }}</td>
<td>{{ "%+.1f [%+.1f, %+.1f]" | format(t.relevance.difference, t.relevance.diff_low, t.relevance.diff_high) }}</td>
<td>{{ "%.3g" | format(t.relevance.p_value) }}</td></tr>{% endfor %}</table>
{% if disagreements %}<h2>Examples where the arms disagree</h2>
<table><tr><th>id</th><th>reference</th>{% for name in disagreement_arms %}<th>{{ name }}</th>{% endfor %}</tr>
{% for row in disagreements %}<tr><td>{{ row.id }}</td><td>{{ row.reference }}</td>
{% for cell in row.answers %}<td style="background: {{ '#e6f4e6' if cell.correct else '#fbe9e9' }}">{{ cell.answer }}</td>{% endfor %}</tr>
{% endfor %}</table>{% endif %}
<p><small>Generated by tuneorprompt {{ r.environment.packages.tuneorprompt }}; commit {{ r.environment.git_commit }}.</small></p>
</body></html>
"""

_ENV = ImmutableSandboxedEnvironment(autoescape=select_autoescape(default=True, default_for_string=True))


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _bars(report: dict, metric: str, scale: float, target: float | None) -> str:
    arms = report["arms"]
    figure, axis = plt.subplots(figsize=(max(6, 0.9 * len(arms)), 3.5))
    values = [scale * a[metric]["value"] for a in arms]
    # Clipped at 0: a bootstrap bound can sit a rounding error inside the point estimate.
    errors = [[max(0.0, v - scale * a[metric]["ci_low"]) for v, a in zip(values, arms)],
              [max(0.0, scale * a[metric]["ci_high"] - v) for v, a in zip(values, arms)]]
    axis.bar(range(len(arms)), values, yerr=errors, capsize=4, color="#5b8def")
    axis.set_xticks(range(len(arms)), [a["name"] for a in arms], rotation=30, ha="right")
    axis.set_ylabel(f"{metric} (95% CI)")
    axis.set_ylim(min(0.0, min(values)), 100)  # both metrics are on a 0-100 scale here
    if target is not None:
        axis.axhline(target, color="#c33", linestyle="--", label="target")
        axis.legend()
    return _png(figure)


def _learning_curve(curve: dict) -> str:
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for key, label in (("few_shot", "few-shot (k demos)"), ("finetune", f"{curve['finetune_kind']} (n examples)")):
        points = curve[key]
        xs = [max(p["x"], 0.5) for p in points]  # k=0 drawn at 0.5 on the log axis
        axis.errorbar(xs, [100 * p["accuracy"] for p in points],
                      yerr=[[max(0.0, 100 * (p["accuracy"] - p["ci_low"])) for p in points],
                            [max(0.0, 100 * (p["ci_high"] - p["accuracy"])) for p in points]],
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


def _frontier(report: dict) -> str | None:
    arms = [a for a in report["arms"] if a.get("flops_per_query")]
    if not arms:
        return None
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for a in arms:
        axis.scatter(a["flops_per_query"], 100 * a["accuracy"]["value"], color="#c33" if a.get("training") else "#5b8def")
        axis.annotate(a["name"], (a["flops_per_query"], 100 * a["accuracy"]["value"]), fontsize=8,
                      xytext=(4, 4), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_xlabel("inference FLOPs per query (red: fine-tuned, plus one-time training)")
    axis.set_ylabel("accuracy %")
    return _png(figure)


def disagreements(records: dict[str, list[list[ExampleRecord]]], references: dict[str, str], limit: int = 20):
    """Test items (first seed of each arm) where some arms are right and others wrong."""
    names = list(records)
    first_seed = {name: {r.example_id: r for r in records[name][0]} for name in names}
    rows = []
    for example_id in first_seed[names[0]] if names else []:
        cells = [first_seed[name][example_id] for name in names]
        if len({c.correct >= 0.5 for c in cells}) > 1:
            rows.append({"id": example_id, "reference": references.get(example_id, ""),
                         "answers": [{"answer": c.answer, "correct": c.correct >= 0.5} for c in cells]})
        if len(rows) >= limit:
            break
    return names, rows


def render_html(report: dict, records: dict[str, list[list[ExampleRecord]]], references: dict[str, str]) -> str:
    plots = [("Task accuracy", _bars(report, "accuracy", 100, 100 * report["target"]["accuracy"])),
             ("Response relevance", _bars(report, "relevance", 1, None))]
    if report.get("learning_curve"):
        plots.append(("Learning curves", _learning_curve(report["learning_curve"])))
    frontier = _frontier(report)
    if frontier:
        plots.append(("Accuracy against cost per query", frontier))
    shown = {a["name"]: records[a["name"]] for a in report["arms"] if a["name"] in records}
    names, rows = disagreements(shown, references)
    return _ENV.from_string(PAGE).render(r=report, plots=plots, notes=shortened_prompts(report),
                                         disagreement_arms=names, disagreements=rows)
