//! The lab's configuration for a repro run, typed: read from `GET /admin/config` into the
//! [`RunConfig`] every scenario's plan and prediction take (each scenario declares its own
//! `Repro` in its module: `crate::scenarios::Repro`).

pub use crate::scenarios::RunConfig;

/// The run's configuration from the admin API's typed view.
pub fn run_config(view: &crate::admin::ConfigView) -> anyhow::Result<RunConfig> {
    let knobs = view
        .current()
        .map_err(|e| anyhow::anyhow!("the lab's /admin/config has unexpected knobs: {e}"))?;
    let memory_leak_limit_mb = view
        .startup_only
        .get("memory_leak_limit_mb")
        .and_then(|s| s.value.as_f64())
        .unwrap_or(f64::NAN);
    Ok(RunConfig {
        knobs,
        memory_leak_limit_mb,
    })
}
