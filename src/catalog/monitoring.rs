//! The monitoring the catalog writes: the Grafana dashboard (an overview row, then a row per
//! scenario from its [`Scenario::dashboard`]), the Prometheus alert rules (the edge's, then each
//! scenario's [`Scenario::alerts`], labelled with its id) and the same rules as a
//! kube-prometheus-stack `PrometheusRule`.

use serde_json::{json, Value};

use crate::scenarios::{Alert, Panel, Scenario, ALL};

/// The overview row: traffic, errors and latency by route, for every scenario.
const OVERVIEW_TITLE: &str = "Overview: traffic, errors, latency by route";
const OVERVIEW: &[Panel] = &[
    Panel {
        title: "Requests/s by route",
        unit: "reqps",
        targets: &[("sum by (route) (rate(http_requests_total[1m]))", "{{route}}")],
        description: "Every route, by its template (never the raw path).",
    },
    Panel {
        title: "5xx ratio by route",
        unit: "percentunit",
        targets: &[("sum by (route) (rate(http_requests_total{status=~\"5..\"}[1m])) / sum by (route) (rate(http_requests_total[1m]))", "{{route}}")],
        description: "Share of answers that are 5xx.",
    },
    Panel {
        title: "Latency p50 / p95 / p99 by route",
        unit: "s",
        targets: &[("histogram_quantile(0.5, sum by (route, le) (rate(http_request_duration_seconds_bucket[1m])))", "p50 {{route}}"), ("histogram_quantile(0.95, sum by (route, le) (rate(http_request_duration_seconds_bucket[1m])))", "p95 {{route}}"), ("histogram_quantile(0.99, sum by (route, le) (rate(http_request_duration_seconds_bucket[1m])))", "p99 {{route}}")],
        description: "From the request-duration histogram (buckets to 120 s).",
    },
    Panel {
        title: "In flight",
        unit: "short",
        targets: &[("sum by (instance) (http_requests_in_flight)", "{{instance}}")],
        description: "Requests being served right now: a pile-up shows here first.",
    },
    Panel {
        title: "Clients that gave up (499)/s by route",
        unit: "reqps",
        targets: &[("sum by (route) (rate(http_requests_total{status=\"499\"}[1m]))", "{{route}}")],
        description: "Requests whose client closed the connection before the answer: a collapse clients time out on.",
    },
];

/// The alerts that belong to no one scenario: the edge's (labelled `scenario: all`).
const EDGE_ALERTS: &[Alert] = &[
    Alert {
        name: "ConnectionsAtCap",
        expr: "sum by (instance) (rate(http_connections_closed_total{reason=~\"evicted|refused\"}[1m])) > 0",
        for_: "1m",
        severity: "warning",
        summary: "Client connections at the cap on {{ $labels.instance }}",
        description: "{{ $value | humanize }}/s connections closed or refused at http_max_connections: idle or silent sockets are crowding the server (docs/reliability.md).",
    },
    Alert {
        name: "HighServerErrorRate",
        expr: "sum by (instance) (rate(http_requests_total{status=~\"5..\"}[1m]))\n  / sum by (instance) (rate(http_requests_total[1m])) > 0.05\n",
        for_: "1m",
        severity: "critical",
        summary: "More than 5% of requests fail with 5xx on {{ $labels.instance }}",
        description: "{{ $value | humanizePercentage }} of requests answer 5xx.",
    },
];

/// `datasource` of every panel and target: the dashboard's Prometheus variable.
fn datasource() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

/// k8s/monitoring/grafana-dashboard.json.
pub fn dashboard() -> String {
    let mut panels = Vec::new();
    let mut id = 1;
    let mut y = 0;
    let mut rows: Vec<(String, &[Panel])> = vec![(OVERVIEW_TITLE.to_string(), OVERVIEW)];
    for s in ALL.iter().filter(|s| !s.dashboard.is_empty()) {
        let mut ids = vec![s.id];
        ids.extend(ALL.iter().filter(|o| o.dashboard_row_with == Some(s.id)).map(|o| o.id));
        rows.push((format!("{} — {}", ids.join(" & "), s.title), s.dashboard));
    }
    for (title, row) in rows {
        panels.push(json!({"type": "row", "title": title, "id": id, "collapsed": false,
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}));
        id += 1;
        y += 1;
        let width = 24 / row.len().max(1);
        for (i, p) in row.iter().enumerate() {
            let targets: Vec<Value> = p
                .targets
                .iter()
                .zip('A'..)
                .map(|((expr, legend), ref_id)| {
                    json!({"expr": expr, "legendFormat": legend, "datasource": datasource(), "refId": ref_id.to_string()})
                })
                .collect();
            panels.push(json!({
                "type": "timeseries", "title": p.title, "id": id, "description": p.description,
                "datasource": datasource(),
                "gridPos": {"h": 8, "w": width, "x": i * width, "y": y},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
                "targets": targets,
            }));
            id += 1;
        }
        y += 8;
    }
    panels.push(
        json!({"type": "row", "title": "knobs — current values", "id": id, "collapsed": false,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}),
    );
    panels.push(json!({
        "type": "table", "title": "Knob values", "id": id + 1, "datasource": datasource(),
        "description": "Every runtime knob (booleans 0/1; choices by position). Changes are annotated on every panel.",
        "gridPos": {"h": 10, "w": 24, "x": 0, "y": y + 1},
        "targets": [{"expr": "max by (knob) (knob_value)", "legendFormat": "{{knob}}", "datasource": datasource(),
                     "refId": "A", "instant": true, "format": "table"}],
        "options": {"showHeader": true},
        "fieldConfig": {"defaults": {}, "overrides": []},
    }));
    let dashboard = json!({
        "uid": "chokepoint",
        "title": "chokepoint — collapses and cures",
        "tags": ["chokepoint"],
        "timezone": "",
        "schemaVersion": 39,
        "version": 1,
        "editable": true,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0}]},
        "annotations": {"list": [
            {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": true,
             "hide": true, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
            {"name": "Knob changes", "enable": true, "iconColor": "orange", "datasource": datasource(),
             "expr": "changes(config_changes_total[1m]) > 0", "step": "15s",
             "titleFormat": "knobs changed", "textFormat": "{{instance}}: configuration changed through /admin"},
        ]},
        "panels": panels,
    });
    serde_json::to_string_pretty(&dashboard).expect("a JSON value serialises") + "\n"
}

/// Every alert with the scenario it belongs to (`all` for the edge's), in catalog order.
fn alerts() -> Vec<(&'static str, &'static Alert)> {
    EDGE_ALERTS
        .iter()
        .map(|a| ("all", a))
        .chain(
            ALL.iter()
                .flat_map(|s: &'static Scenario| s.alerts.iter().map(move |a| (s.id, a))),
        )
        .collect()
}

/// A YAML double-quoted scalar (a JSON string is one).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

/// The rule group, each line indented by `indent` spaces.
fn rule_group(indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = format!("{pad}groups:\n{pad}  - name: chokepoint.collapses\n{pad}    rules:\n");
    for (scenario, a) in alerts() {
        out.push_str(&format!(
            "{pad}      - alert: {}\n{pad}        expr: {}\n{pad}        for: {}\n{pad}        labels:\n\
             {pad}          severity: {}\n{pad}          scenario: {}\n{pad}        annotations:\n\
             {pad}          summary: {}\n{pad}          description: {}\n",
            a.name,
            quoted(a.expr),
            a.for_,
            a.severity,
            scenario,
            quoted(a.summary),
            quoted(a.description),
        ));
    }
    out
}

/// k8s/monitoring/alerts.rules.yml: plain Prometheus rules (`promtool check rules`).
pub fn alert_rules() -> String {
    format!(
        "# GENERATED by `chokepoint catalog --write` from each scenario's alerts (src/scenarios/) and the\n\
         # edge's (src/catalog/monitoring.rs): edit them there. Plain Prometheus rules (promtool check\n\
         # rules); prometheusrule.yaml holds the same for kube-prometheus-stack. Every metric named here\n\
         # must exist in the app's /metrics (checked in CI).\n{}",
        rule_group(0)
    )
}

/// k8s/monitoring/prometheusrule.yaml: the same rules as a kube-prometheus-stack PrometheusRule.
pub fn prometheus_rule() -> String {
    format!(
        "# GENERATED by `chokepoint catalog --write`, the rules of alerts.rules.yml for\n\
         # kube-prometheus-stack.\napiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n\
         \x20 name: chokepoint\n  labels:\n    release: kube-prometheus-stack\nspec:\n{}",
        rule_group(2)
    )
}
