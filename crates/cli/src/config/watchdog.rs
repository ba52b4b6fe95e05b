//! The `watchdog` section (Patroni's keys): `mode`, `device`, `safety_margin`. pgherd
//! adds a fencer process beside the agent whenever the mode is not `off`.

use super::{show, Ctx, Section};
use pgherd_ha::watchdog::WatchdogMode;
use std::path::PathBuf;
use yaml_serde::Value;

/// The `watchdog` section as written, resolved to Patroni's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchdogConfig {
    pub mode: WatchdogMode,
    pub device: PathBuf,
    pub safety_margin: i64,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        let spec = pgherd_ha::watchdog::WatchdogSpec::default();
        WatchdogConfig {
            mode: spec.mode,
            device: spec.device,
            safety_margin: spec.safety_margin,
        }
    }
}

pub(super) fn watchdog(ctx: &mut Ctx, root: &mut Section<'_>) -> WatchdogConfig {
    let path = root.path("watchdog");
    let v = root.take("watchdog");
    let mut s = Section::of(ctx, &path, v);
    let mut out = WatchdogConfig::default();
    let mode_path = s.path("mode");
    if let Some(v) = s.take("mode") {
        // YAML reads `mode: off` as the boolean false.
        let text = match v {
            Value::Bool(b) => Some(b.to_string()),
            Value::String(t) => Some(t.clone()),
            other => {
                ctx.error(
                    &mode_path,
                    format!("expected off, automatic or required, got {}", show(other)),
                );
                None
            }
        };
        if let Some(text) = text {
            match WatchdogMode::parse(&text) {
                Some(mode) => out.mode = mode,
                None => ctx.error(
                    &mode_path,
                    format!("expected off, automatic or required, got {text:?}"),
                ),
            }
        }
    }
    if let Some(device) = s.string(ctx, "device") {
        out.device = PathBuf::from(device);
    }
    let margin_path = s.path("safety_margin");
    if let Some(v) = s.take("safety_margin") {
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(t) => t.trim().parse().ok(),
            _ => None,
        };
        match n {
            Some(n) if n >= -1 => out.safety_margin = n,
            _ => ctx.error(
                &margin_path,
                format!("expected whole seconds (-1: half the ttl), got {}", show(v)),
            ),
        }
    }
    s.finish(ctx);
    out
}
