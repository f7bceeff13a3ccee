//! The lab under load, reached over HTTP: admin calls and `/metrics` scrapes.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde_json::Value;

/// The lab under load: its base URL, the admin token, and the client that reaches it.
pub struct LabClient {
    pub client: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

impl LabClient {
    /// An admin call; the JSON answer, or an error naming the path and the lab's `detail`.
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| format!("{}{path}", self.base))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path} answered {status}: {}", body["detail"].as_str().unwrap_or(""));
        }
        Ok(body)
    }

    /// Every series of `/metrics` as name{labels} → value; a metric with labels also appears
    /// under its bare name as the sum of its series (so a watch can name
    /// `worker_pool_deadline_exceeded_total` whatever its `stage`).
    pub async fn metrics(&self) -> BTreeMap<String, f64> {
        let Ok(resp) = self.client.get(format!("{}/metrics", self.base)).send().await else {
            return BTreeMap::new();
        };
        parse_metrics(&resp.text().await.unwrap_or_default())
    }

    /// The lab's gRPC address as a URL (`http://host:port`): the port its `GET /` names under
    /// `grpc`, on the host of the base URL.
    pub async fn grpc_url(&self) -> anyhow::Result<String> {
        let root: Value = self.client.get(&self.base).send().await?.json().await?;
        let Some(addr) = root["grpc"].as_str() else {
            bail!("the lab at {} serves no gRPC (GRPC_PORT=off)", self.base);
        };
        let port = addr.rsplit_once(':').map_or(addr, |(_, p)| p);
        let rest = self.base.split_once("://").map_or(self.base.as_str(), |(_, r)| r);
        let host = match rest.rsplit_once(':') {
            // host:port, or [v6]:port
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => rest,
        };
        Ok(format!("http://{host}:{port}"))
    }
}

fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else { continue };
        if let Some((name, _)) = series.split_once('{') {
            *sums.entry(name.to_string()).or_default() += v;
        }
        out.insert(series.to_string(), v);
    }
    for (name, v) in sums {
        out.entry(name).or_insert(v);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn labelled_series_are_also_summed_under_the_bare_name() {
        let m = super::parse_metrics("# HELP x y\nx_total{stage=\"a\"} 2\nx_total{stage=\"b\"} 3\nplain 7\nbad line\n");
        assert_eq!(m["x_total{stage=\"a\"}"], 2.0);
        assert_eq!(m["x_total"], 5.0);
        assert_eq!(m["plain"], 7.0);
        assert_eq!(m.len(), 4);
    }
}
