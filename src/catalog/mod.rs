//! What the catalog writes: the parts of the repository's pages that list the scenarios or the
//! knobs, generated from [`crate::scenarios::ALL`] and [`crate::knobs::SPECS`] so that no list
//! is kept by hand beside them.
//!
//! The monitoring files are written whole ([`monitoring`]). In a markdown page a generated part sits between `<!-- generated: NAME ... -->` and
//! `<!-- end: NAME -->`; in the report schema it is the `scenario` property's `enum`.
//! `chokepoint catalog` exits 1 naming the stale parts, `chokepoint catalog --write` rewrites
//! them, and a test runs the check (`bash scripts/test` fails on a stale page).

use std::path::Path;

pub mod monitoring;

use crate::scenarios::ALL;

/// One generated part of a file.
pub struct Generated {
    /// The file, from the repository's root.
    pub path: &'static str,
    /// What the part is (the markers' name).
    pub name: &'static str,
    /// The file's text with the part as the catalog writes it now, or why the file has no place
    /// for it.
    pub update: fn(&str) -> Result<String, String>,
}

/// Every generated part.
pub const GENERATED: &[Generated] = &[
    Generated {
        path: "README.md",
        name: "scenarios",
        update: |text| region(text, "scenarios", &readme_table()),
    },
    Generated {
        path: "load-tests/README.md",
        name: "scripts",
        update: |text| region(text, "scripts", &k6_table()),
    },
    Generated {
        path: "docs/scenarios/README.md",
        name: "catalog",
        update: |text| region(text, "catalog", &catalog_table()),
    },
    Generated {
        path: "docs/knobs.md",
        name: "knobs",
        update: |text| region(text, "knobs", &crate::knobs::markdown_table()),
    },
    Generated {
        path: "k8s/monitoring/grafana-dashboard.json",
        name: "dashboard",
        update: |_| Ok(monitoring::dashboard()),
    },
    Generated {
        path: "k8s/monitoring/alerts.rules.yml",
        name: "alert rules",
        update: |_| Ok(monitoring::alert_rules()),
    },
    Generated {
        path: "k8s/monitoring/prometheusrule.yaml",
        name: "PrometheusRule",
        update: |_| Ok(monitoring::prometheus_rule()),
    },
    Generated {
        path: "docs/repro-report.schema.json",
        name: "scenario enum",
        update: schema_enum,
    },
];

/// The parts that differ from what the catalog writes, as `path (name)`, under `root`; with
/// `write`, each stale file is rewritten.
pub fn check(root: &Path, write: bool) -> Result<Vec<String>, String> {
    let mut stale = Vec::new();
    for g in GENERATED {
        let file = root.join(g.path);
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", g.path))?;
        let now = (g.update)(&text).map_err(|e| format!("{}: {e}", g.path))?;
        if now != text {
            stale.push(format!("{} ({})", g.path, g.name));
            if write {
                std::fs::write(&file, now).map_err(|e| format!("{}: {e}", g.path))?;
            }
        }
    }
    Ok(stale)
}

/// `text` with the part between the markers named `name` replaced by `content`.
fn region(text: &str, name: &str, content: &str) -> Result<String, String> {
    let open = format!("<!-- generated: {name} ");
    let close = format!("<!-- end: {name} -->");
    let start = text.find(&open).ok_or_else(|| format!("no `{open}... -->` marker"))?;
    let body = start
        + text[start..]
            .find("-->\n")
            .ok_or_else(|| format!("the `{open}` marker is not closed on its line"))?
        + 4;
    let end = text[body..]
        .find(&close)
        .map(|i| body + i)
        .ok_or_else(|| format!("no `{close}` marker after `{open}`"))?;
    Ok(format!("{}{content}{}", &text[..body], &text[end..]))
}

/// The README's table: one line per scenario.
pub fn readme_table() -> String {
    let mut out = String::from("| scenario | what collapses (or cures) | k6 script |\n|---|---|---|\n");
    for s in ALL {
        out.push_str(&format!(
            "| [`{}`]({}) | {} | [`{}`]({}) |\n",
            s.id,
            s.doc,
            escape(s.title),
            s.k6.path.trim_start_matches("load-tests/"),
            s.k6.path
        ));
    }
    out
}

/// `load-tests/README.md`'s table: every scenario's k6 script, its page and what runs it in CI.
pub fn k6_table() -> String {
    let mut out = String::from("| script | scenario | what it shows | run in CI by |\n|---|---|---|---|\n");
    for s in ALL {
        out.push_str(&format!(
            "| [`{file}`]({file}) | [`{id}`](../{doc}) | {title} | `{runner}`{both} |\n",
            file = s.k6.path.trim_start_matches("load-tests/"),
            id = s.id,
            doc = s.doc,
            title = escape(s.title),
            runner = s.k6.run_by,
            both = if s.k6.in_smoke() {
                " (`SMOKE=1`, both profiles)"
            } else {
                ""
            },
        ));
    }
    out
}

/// `docs/scenarios/README.md`'s table: each scenario's routes, the metrics its panel card reads,
/// its script and its test.
pub fn catalog_table() -> String {
    let mut out = String::from(
        "| scenario | routes | the panel reads | k6 script | test | `chokepoint repro` |\n|---|---|---|---|---|---|\n",
    );
    for s in ALL {
        let routes: Vec<String> = (s.operations)()
            .iter()
            .map(|op| format!("`{} {}`", op.method.to_uppercase(), op.path))
            .collect();
        let mut metrics: Vec<String> = s.gauges.iter().map(|g| format!("`{}`", g.metric)).collect();
        metrics.dedup();
        out.push_str(&format!(
            "| [`{id}`]({id}.md): {title} | {routes} | {metrics} | [`{k6}`](../../{k6path}) | [`{test}`](../../{test}) | {repro} |\n",
            id = s.id,
            title = escape(s.title),
            routes = if routes.is_empty() { "another scenario's".to_string() } else { routes.join(", ") },
            metrics = if metrics.is_empty() { "–".to_string() } else { metrics.join(", ") },
            k6 = s.k6.path.trim_start_matches("load-tests/"),
            k6path = s.k6.path,
            test = s.test(),
            repro = if s.repro.is_ok() { "yes" } else { "no (its page says why)" },
        ));
    }
    out
}

/// The ids `chokepoint repro` takes, as the report schema's `scenario` enum lists them (the
/// array rewritten in place, the rest of the file untouched).
fn schema_enum(text: &str) -> Result<String, String> {
    serde_json::from_str::<serde_json::Value>(text).map_err(|e| format!("not JSON: {e}"))?;
    let property = text.find("\"scenario\": {").ok_or("no `\"scenario\": {` property")?;
    let open = property
        + text[property..]
            .find("\"enum\": [")
            .ok_or("no `\"enum\": [` in the scenario property")?
        + "\"enum\": [".len();
    let close = open + text[open..].find(']').ok_or("the enum is not closed")?;
    // The items' indentation: the `"enum"` line's, two spaces deeper.
    let line_start = text[..open].rfind('\n').map_or(0, |i| i + 1);
    let indent = text[line_start..].len() - text[line_start..].trim_start().len();
    let items: Vec<String> = crate::scenarios::repro_ids()
        .iter()
        .map(|id| format!("{}\"{id}\"", " ".repeat(indent + 2)))
        .collect();
    Ok(format!(
        "{}\n{}\n{}{}",
        &text[..open],
        items.join(",\n"),
        " ".repeat(indent),
        &text[close..]
    ))
}

/// A table cell's text (a `|` would end the cell).
fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every generated part is as the catalog writes it now: a scenario or knob added, removed
    /// or retitled fails here until `chokepoint catalog --write` is run.
    #[test]
    fn every_generated_part_is_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let stale = check(root, false).unwrap();
        assert!(
            stale.is_empty(),
            "stale: {}; run `cargo run --release -- catalog --write`",
            stale.join(", ")
        );
    }

    #[test]
    fn a_region_is_replaced_between_its_markers_and_nowhere_else() {
        let page = "intro\n<!-- generated: t by x -->\nold\n<!-- end: t -->\noutro\n";
        assert_eq!(
            region(page, "t", "new\n").unwrap(),
            "intro\n<!-- generated: t by x -->\nnew\n<!-- end: t -->\noutro\n"
        );
        assert!(region("no markers", "t", "x")
            .unwrap_err()
            .contains("no `<!-- generated: t"));
        assert!(region("<!-- generated: t -->\nx", "t", "y")
            .unwrap_err()
            .contains("no `<!-- end: t -->`"));
    }

    /// The tables list every scenario, each once.
    #[test]
    fn the_tables_have_one_line_per_scenario() {
        for table in [readme_table(), k6_table(), catalog_table()] {
            assert_eq!(table.lines().count(), ALL.len() + 2, "{table}");
            for s in ALL {
                assert_eq!(table.matches(&format!("`{}`", s.id)).count(), 1, "{}", s.id);
            }
        }
    }
}
