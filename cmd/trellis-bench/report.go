package main

import (
	"fmt"
	"html/template"
	"sort"
	"strings"
)

func markdown(rep *report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n### trellis-bench (%s profile) — %s\n\n", rep.Profile, rep.Machine)
	b.WriteString("| scenario | profile | run | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | CPU s / peak RSS MiB | note |\n")
	b.WriteString("|---|---|---|---:|---:|---:|---:|---:|---|---|---|\n")
	for _, r := range rep.Rows {
		name := r.Name
		if r.Baseline {
			name += " (baseline)"
		}
		var errs []string
		for k, v := range r.Result.Errors {
			errs = append(errs, fmt.Sprintf("%s:%d", k, v))
		}
		sort.Strings(errs)
		var procs []string
		for k, u := range r.Processes {
			procs = append(procs, fmt.Sprintf("%s %.1f / %.0f", k, u.CPUSeconds, u.PeakRSSMiB))
		}
		sort.Strings(procs)
		fmt.Fprintf(&b, "| %s | %s | %s | %.0f | %.2f | %.2f | %.2f | %.2f | %s | %s | %s |\n", r.Scenario, strings.SplitN(r.Profile, " ", 2)[0], name, r.Result.Throughput,
			r.Result.P50ms, r.Result.P90ms, r.Result.P99ms, r.Result.P999ms, strings.Join(errs, " "), strings.Join(procs, ", "), r.Note)
	}
	b.WriteString("\n| ratio | measured | floor |\n|---|---:|---:|\n")
	var keys []string
	for k := range rep.Ratios {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		floor := "—"
		if f, ok := rep.Floors[k]; ok {
			floor = fmt.Sprintf("%.2f", f)
		}
		fmt.Fprintf(&b, "| %s | %.3f | %s |\n", k, rep.Ratios[k], floor)
	}
	return b.String()
}

// bar is one bar of an inline SVG chart.
type bar struct {
	Label      string
	Value      float64
	Width      float64
	Y          float64
	Baseline   bool
	ValueLabel string
}

type chart struct {
	Title  string
	Height float64
	Bars   []bar
}

func barChart(title, unit string, rows []row, value func(row) float64) chart {
	c := chart{Title: title}
	max := 0.0
	for _, r := range rows {
		if v := value(r); v > max {
			max = v
		}
	}
	for i, r := range rows {
		v := value(r)
		w := 0.0
		if max > 0 {
			w = 520 * v / max
		}
		c.Bars = append(c.Bars, bar{Label: r.Scenario + " · " + r.Name, Value: v, Width: w, Y: float64(i) * 26, Baseline: r.Baseline,
			ValueLabel: fmt.Sprintf("%.2f %s", v, unit)})
	}
	c.Height = float64(len(rows))*26 + 10
	return c
}

var page = template.Must(template.New("report").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trellis-bench {{.Rep.Profile}}</title>
<style>
body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#1d2733}
table{border-collapse:collapse;font-size:.85rem}td,th{border-bottom:1px solid #e3e8ee;padding:.3rem .5rem;text-align:right}
td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){text-align:left}
svg text{font-size:11px}.base{fill:#9aa7b4}.cand{fill:#2f6feb}.fail{color:#a4161a}
</style></head><body>
<h1>trellis-bench — {{.Rep.Profile}} profile</h1>
<p>{{.Rep.Machine}} · started {{.Rep.Started.Format "2006-01-02 15:04 MST"}} · baselines in grey, measured in the same run.</p>
{{if .Rep.Failed}}<p class="fail">Failed: {{range .Rep.Failed}}{{.}}; {{end}}</p>{{end}}
{{range .Charts}}<h2>{{.Title}}</h2>
<svg width="980" height="{{.Height}}" role="img" aria-label="{{.Title}}">
{{range .Bars}}<text x="0" y="{{.Y}}" dy="15">{{.Label}}</text>
<rect x="400" y="{{.Y}}" width="{{.Width}}" height="20" class="{{if .Baseline}}base{{else}}cand{{end}}"></rect>
<text x="{{.Width}}" y="{{.Y}}" dx="405" dy="15">{{.ValueLabel}}</text>
{{end}}</svg>{{end}}
<h2>All numbers</h2>
<table><tr><th>scenario</th><th>run</th><th>req/s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>note</th></tr>
{{range .Rep.Rows}}<tr><td>{{.Scenario}}</td><td>{{.Name}}{{if .Baseline}} (baseline){{end}}</td><td>{{printf "%.0f" .Result.Throughput}}</td>
<td>{{printf "%.2f" .Result.P50ms}}</td><td>{{printf "%.2f" .Result.P90ms}}</td><td>{{printf "%.2f" .Result.P99ms}}</td><td>{{printf "%.2f" .Result.P999ms}}</td><td>{{.Note}}</td></tr>
{{end}}</table>
<h2>Ratios</h2><table>{{range $k, $v := .Rep.Ratios}}<tr><td>{{$k}}</td><td>{{printf "%.3f" $v}}</td></tr>{{end}}</table>
</body></html>`))

// html renders the report as one self-contained page: inline SVG charts,
// no scripts, nothing loaded from elsewhere.
func html(rep *report) string {
	var b strings.Builder
	charts := []chart{
		barChart("Throughput (requests/s)", "req/s", rep.Rows, func(r row) float64 { return r.Result.Throughput }),
		barChart("Latency p99 (ms)", "ms", rep.Rows, func(r row) float64 { return r.Result.P99ms }),
	}
	_ = page.Execute(&b, struct {
		Rep    *report
		Charts []chart
	}{rep, charts})
	return b.String()
}
