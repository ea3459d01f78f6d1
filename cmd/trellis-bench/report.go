package main

import (
	"bytes"
	"compress/gzip"
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/go-echarts/go-echarts/v2/charts"
	"github.com/go-echarts/go-echarts/v2/opts"
	"github.com/go-echarts/go-echarts/v2/render"
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
		fmt.Fprintf(&b, "| %s | %s | %s | %.0f | %.2f | %.2f | %.2f | %.2f | %s | %s | %s |\n", r.Scenario, strings.SplitN(r.Profile, " ", 2)[0], name, r.Result.Throughput,
			r.Result.P50ms, r.Result.P90ms, r.Result.P99ms, r.Result.P999ms, strings.Join(errs, " "), procSummary(r.Processes), r.Note)
	}
	b.WriteString("\n| ratio | measured | floor |\n|---|---:|---:|\n")
	for _, r := range ratioRows(rep) {
		fmt.Fprintf(&b, "| %s | %.3f | %s |\n", r.Name, r.Value, r.Floor)
	}
	return b.String()
}

// ratio is one line of the ratios table.
type ratio struct {
	Name, Floor string // Floor is "—" when none is set
	Value       float64
}

func ratioRows(rep *report) []ratio {
	var out []ratio
	for _, k := range sortedKeys(rep.Ratios) {
		floor := "—"
		if f, ok := rep.Floors[k]; ok {
			floor = fmt.Sprintf("%.2f", f)
		}
		out = append(out, ratio{k, floor, rep.Ratios[k]})
	}
	return out
}

func sortedKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// procSummary is "name CPU-s / peak-RSS-MiB" per process.
func procSummary(ps map[string]usage) string {
	var out []string
	for k, u := range ps {
		out = append(out, fmt.Sprintf("%s %.1f / %.0f", k, u.CPUSeconds, u.PeakRSSMiB))
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// echartsGz is Apache ECharts 5.4.3 (dist/echarts.min.js of the npm
// package echarts@5.4.3, sha256 1156429a…4c54d19, gzipped; licence and
// notice beside it), the version go-echarts v2.6 writes options for. It is
// inlined into the report so the page needs no network: go-echarts would
// otherwise load it from a CDN.
//
//go:embed echarts/echarts.min.js.gz
var echartsGz []byte

var echartsJS = sync.OnceValue(func() string {
	zr, err := gzip.NewReader(bytes.NewReader(echartsGz))
	if err != nil {
		panic(err) // the embedded file is part of the build
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		panic(err)
	}
	return string(b)
})

const (
	colBaseline  = "#9aa7b4"
	colCandidate = "#2f6feb"
)

// rowLabel names a row on a chart axis.
func rowLabel(r row) string {
	label := r.Scenario + " · " + r.Name
	if strings.HasPrefix(r.Profile, "split") {
		label += " (split)"
	}
	return label
}

// closedLoopRows are the rows with a latency histogram from a load run
// (not scenario 3's rate sweep, nor scenario 4's benchmark-derived rows).
func closedLoopRows(rows []row) []row {
	var out []row
	for _, r := range rows {
		if len(r.Result.Spectrum) > 0 && !strings.HasPrefix(r.Scenario, "3") {
			out = append(out, r)
		}
	}
	return out
}

func initOpts(title, subtitle string, height int) []charts.GlobalOpts {
	return []charts.GlobalOpts{
		charts.WithInitializationOpts(opts.Initialization{Width: "1100px", Height: fmt.Sprintf("%dpx", height)}),
		charts.WithTitleOpts(opts.Title{Title: title, Subtitle: subtitle}),
		charts.WithTooltipOpts(opts.Tooltip{Show: opts.Bool(true), Trigger: "axis"}),
		charts.WithLegendOpts(opts.Legend{Show: opts.Bool(true), Top: "bottom"}),
		charts.WithGridOpts(opts.Grid{Left: "430", Right: "40", Bottom: "60"}),
	}
}

// runsDownward lists a horizontal bar chart's runs top to bottom, in
// report order.
var runsDownward = charts.WithYAxisOpts(opts.YAxis{Inverse: opts.Bool(true)})

// throughputChart: one bar per run, baselines grey.
func throughputChart(rows []row) *charts.Bar {
	c := charts.NewBar()
	c.SetGlobalOptions(append(initOpts("Throughput", "requests/s, closed loop; baselines grey, measured in the same run", 90+28*len(rows)), runsDownward)...)
	var labels []string
	var data []opts.BarData
	for _, r := range rows {
		labels = append(labels, rowLabel(r))
		col := colCandidate
		if r.Baseline {
			col = colBaseline
		}
		data = append(data, opts.BarData{Value: int(r.Result.Throughput), ItemStyle: &opts.ItemStyle{Color: col}})
	}
	c.SetXAxis(labels).AddSeries("req/s", data)
	c.XYReversal()
	return c
}

// percentileChart: p50/p90/p99/p99.9 per run.
func percentileChart(rows []row) *charts.Bar {
	c := charts.NewBar()
	c.SetGlobalOptions(append(initOpts("Latency percentiles", "ms", 110+44*len(rows)), runsDownward,
		charts.WithXAxisOpts(opts.XAxis{Name: "ms"}))...)
	var labels []string
	for _, r := range rows {
		labels = append(labels, rowLabel(r))
	}
	c.SetXAxis(labels)
	for _, q := range []struct {
		name string
		v    func(*result) float64
	}{{"p50", func(r *result) float64 { return r.P50ms }}, {"p90", func(r *result) float64 { return r.P90ms }},
		{"p99", func(r *result) float64 { return r.P99ms }}, {"p99.9", func(r *result) float64 { return r.P999ms }}} {
		var data []opts.BarData
		for _, r := range rows {
			data = append(data, opts.BarData{Value: q.v(r.Result)})
		}
		c.AddSeries(q.name, data)
	}
	c.XYReversal()
	return c
}

// spectrumChart: the HDR percentile spectrum of every run, the usual way
// to read a latency histogram (the tail to the right).
func spectrumChart(rows []row) *charts.Line {
	c := charts.NewLine()
	c.SetGlobalOptions(append(initOpts("Latency by percentile (HDR histograms)", "ms at each percentile, log scale", 560),
		charts.WithYAxisOpts(opts.YAxis{Type: "log", Name: "ms"}),
		charts.WithGridOpts(opts.Grid{Left: "60", Right: "40", Bottom: "90"}),
		charts.WithLegendOpts(opts.Legend{Show: opts.Bool(true), Top: "bottom", Type: "scroll"}))...)
	var labels []string
	if len(rows) > 0 {
		for _, q := range rows[0].Result.Spectrum {
			if q.Percentile == 0 { // older results.json files carry the minimum
				continue
			}
			if q.Percentile == 100 {
				labels = append(labels, "max")
			} else {
				labels = append(labels, fmt.Sprintf("p%g", q.Percentile))
			}
		}
	}
	c.SetXAxis(labels)
	for _, r := range rows {
		var data []opts.LineData
		for _, p := range r.Result.Spectrum {
			if p.Percentile == 0 {
				continue
			}
			data = append(data, opts.LineData{Value: max(p.Ms, 0.001)})
		}
		c.AddSeries(rowLabel(r), data)
	}
	return c
}

// rateChart: scenario 3, p99 at each offered CreateOrder rate per
// profile, against the 50 ms line that defines "sustainable".
func rateChart(rows []row) *charts.Line {
	c := charts.NewLine()
	c.SetGlobalOptions(append(initOpts("CreateOrder end to end: p99 by offered rate", "open loop; sustainable = p99 under 50 ms and under 1% errors", 420),
		charts.WithXAxisOpts(opts.XAxis{Name: "req/s"}),
		charts.WithGridOpts(opts.Grid{Left: "60", Right: "80", Bottom: "60"}))...)
	byProfile := map[string]map[string]float64{}
	var rates []string
	for _, r := range rows {
		if !strings.HasPrefix(r.Scenario, "3") {
			continue
		}
		p := strings.SplitN(r.Profile, " ", 2)[0]
		if byProfile[p] == nil {
			byProfile[p] = map[string]float64{}
		}
		byProfile[p][r.Name] = r.Result.P99ms
		if !slices.Contains(rates, r.Name) {
			rates = append(rates, r.Name)
		}
	}
	slices.SortFunc(rates, func(a, b string) int { return perSecond(a) - perSecond(b) })
	top := 100.0 // the axis must show the 50 ms line
	for _, p := range byProfile {
		for _, v := range p {
			for top < v {
				top *= 10
			}
		}
	}
	c.SetGlobalOptions(charts.WithYAxisOpts(opts.YAxis{Type: "log", Name: "p99 ms", Max: top}))
	c.SetXAxis(rates)
	profiles := make([]string, 0, len(byProfile))
	for p := range byProfile {
		profiles = append(profiles, p)
	}
	sort.Strings(profiles)
	for i, p := range profiles {
		var data []opts.LineData
		for _, rate := range rates {
			if v, ok := byProfile[p][rate]; ok {
				data = append(data, opts.LineData{Value: max(v, 0.001)})
			} else {
				data = append(data, opts.LineData{Value: "-"})
			}
		}
		so := []charts.SeriesOpts{charts.WithLineChartOpts(opts.LineChart{ConnectNulls: opts.Bool(true)})}
		if i == 0 {
			so = append(so, charts.WithMarkLineNameYAxisItemOpts(opts.MarkLineNameYAxisItem{Name: "50 ms", YAxis: 50}))
		}
		c.AddSeries(p, data, so...)
	}
	return c
}

// overloadChart draws scenario 8: goodput (created orders per second, bars
// on the left axis) and the p99 of created orders (lines on the right,
// log) of each system against the offered load (1×, 2×, 4× the base).
func overloadChart(rows []row) *charts.Bar {
	c := charts.NewBar()
	c.SetGlobalOptions(append(initOpts("Overload: goodput and created p99 by offered load", "CreateOrder open loop at multiples of the max sustainable rate; bars goodput (left), lines p99 of created orders (right, log)", 440),
		charts.WithXAxisOpts(opts.XAxis{Name: "offered"}),
		charts.WithYAxisOpts(opts.YAxis{Name: "created/s"}),
		charts.WithGridOpts(opts.Grid{Left: "60", Right: "80", Bottom: "60"}))...)
	c.ExtendYAxis(opts.YAxis{Type: "log", Name: "p99 ms"})
	goodput, p99 := map[string]map[string]float64{}, map[string]map[string]float64{}
	var systems, loads []string
	for _, r := range rows {
		if !strings.HasPrefix(r.Scenario, "8") {
			continue
		}
		i := strings.LastIndex(r.Name, ", ")
		if i < 0 {
			continue
		}
		sys, load := r.Name[:i], r.Name[i+2:]
		if goodput[sys] == nil {
			goodput[sys], p99[sys] = map[string]float64{}, map[string]float64{}
			systems = append(systems, sys)
		}
		goodput[sys][load], p99[sys][load] = r.Result.Throughput, r.Result.P99ms
		if !slices.Contains(loads, load) {
			loads = append(loads, load)
		}
	}
	slices.Sort(loads) // "1×" < "2×" < "4×"
	c.SetXAxis(loads)
	line := charts.NewLine()
	for _, sys := range systems {
		var bars []opts.BarData
		var points []opts.LineData
		for _, l := range loads {
			bars = append(bars, opts.BarData{Value: goodput[sys][l]})
			points = append(points, opts.LineData{Value: max(p99[sys][l], 0.001), YAxisIndex: 1})
		}
		c.AddSeries(sys+" goodput", bars)
		line.AddSeries(sys+" p99", points)
	}
	c.Overlap(line)
	return c
}

var page = template.Must(template.New("report").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trellis-bench {{.Rep.Profile}}</title>
<script>{{.ECharts}}</script>
<style>
body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#1d2733}
table{border-collapse:collapse;font-size:.85rem}td,th{border-bottom:1px solid #e3e8ee;padding:.3rem .5rem;text-align:right}
td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){text-align:left}.fail{color:#a4161a}
.chart{margin:2rem 0}
</style></head><body>
<h1>trellis-bench — {{.Rep.Profile}} profile</h1>
<p>{{.Rep.Machine}} · started {{.Rep.Started.Format "2006-01-02 15:04 MST"}} · every candidate beside its baseline, measured in the same run.</p>
{{if .Rep.Failed}}<p class="fail">Failed: {{range .Rep.Failed}}{{.}}; {{end}}</p>{{end}}
<h2>Ratios</h2><table><tr><th>ratio</th><th>measured</th><th>floor</th></tr>
{{range .Ratios}}<tr><td>{{.Name}}</td><td>{{printf "%.3f" .Value}}</td><td>{{.Floor}}</td></tr>{{end}}</table>
{{range .Charts}}<div class="chart">{{.Element}}{{.Script}}</div>{{end}}
<h2>All numbers</h2>
<table><tr><th>scenario</th><th>run</th><th>req/s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>system CPU µs/req</th><th>processes: CPU s / peak RSS MiB</th><th>note</th></tr>
{{range .Rows}}<tr><td>{{.Scenario}}</td><td>{{.Name}}</td><td>{{printf "%.0f" .Result.Throughput}}</td>
<td>{{printf "%.2f" .Result.P50ms}}</td><td>{{printf "%.2f" .Result.P90ms}}</td><td>{{printf "%.2f" .Result.P99ms}}</td><td>{{printf "%.2f" .Result.P999ms}}</td>
<td>{{if .Result.ServerCPUus}}{{printf "%.1f" .Result.ServerCPUus}}{{end}}</td><td>{{.Procs}}</td><td>{{.Note}}</td></tr>
{{end}}</table>
</body></html>`))

// html renders the report as one self-contained page: go-echarts charts
// with ECharts inlined, nothing loaded from elsewhere.
func html(rep *report) string {
	type snippet struct{ Element, Script template.HTML }
	var snippets []snippet
	lat := closedLoopRows(rep.Rows)
	for _, c := range []render.Renderer{throughputChart(lat), percentileChart(lat), spectrumChart(lat), rateChart(rep.Rows), overloadChart(rep.Rows)} {
		s := c.RenderSnippet()
		snippets = append(snippets, snippet{template.HTML(s.Element), template.HTML(s.Script)}) // go-echarts' own markup
	}
	type line struct {
		row
		Procs string
	}
	var rows []line
	for _, r := range rep.Rows {
		name := r.Name
		if r.Baseline {
			name += " (baseline)"
		}
		r.Name = name
		rows = append(rows, line{r, procSummary(r.Processes)})
	}
	var b strings.Builder
	_ = page.Execute(&b, struct {
		Rep     *report
		ECharts template.JS
		Charts  []snippet
		Ratios  []ratio
		Rows    []line
	}{rep, template.JS(echartsJS()), snippets, ratioRows(rep), rows}) // the embedded ECharts build
	return b.String()
}

// perSecond reads a rate label ("400/s").
func perSecond(label string) int {
	n, _ := strconv.Atoi(strings.TrimSuffix(label, "/s"))
	return n
}
