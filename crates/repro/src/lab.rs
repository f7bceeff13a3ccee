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

    /// Every series of `/metrics` as name{labels} → value.
    pub async fn metrics(&self) -> BTreeMap<String, f64> {
        let Ok(resp) = self.client.get(format!("{}/metrics", self.base)).send().await else {
            return BTreeMap::new();
        };
        let text = resp.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect()
    }
}
