//! `pgherd ctl edit-config`: change the cluster's dynamic configuration (the DCS `config`
//! key) as `patronictl edit-config` does: `--set KEY=VALUE`, `--pg NAME=VALUE` and
//! `--apply FILE` merge with Patroni's rules (`null` removes), without them `$EDITOR`
//! edits the whole config; the result is validated, shown as a diff and written by
//! compare-and-set after a confirmation (unless `--force`).

use crate::config;
use crate::prompt::confirm;
use anyhow::{bail, Context, Result};
use pgherd_dcs::Dcs;
use serde_json::{Map, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What to change.
#[derive(Debug, Clone, Default)]
pub struct Edits {
    /// `KEY=VALUE`: a dotted path into the config and a YAML value.
    pub set: Vec<String>,
    /// `NAME=VALUE`: `postgresql.parameters.NAME`.
    pub pg: Vec<String>,
    /// A YAML file (`-`: standard input) merged into the config.
    pub apply: Option<PathBuf>,
}

impl Edits {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.pg.is_empty() && self.apply.is_none()
    }
}

/// Above this many line pairs the diff shows the whole old and new config instead of an
/// alignment (bounds the work on a config someone made huge).
const MAX_DIFF_CELLS: usize = 4_000_000;

/// Edit the config key; returns the closing message.
pub async fn run(dcs: &impl Dcs, edits: &Edits, force: bool) -> Result<String> {
    let cluster = dcs.get_cluster().await.context("cannot read the cluster")?;
    let (before, version) = match &cluster.config {
        Some(c) => (c.value.clone(), c.version),
        None => (Value::Object(Map::new()), 0),
    };
    let after = if edits.is_empty() {
        edit_in_editor(&before)?
    } else {
        let mut after = before.clone();
        for patch in patches(edits)? {
            pgherd_ha::dynamic::patch(&mut after, &patch);
        }
        after
    };
    if after == before {
        return Ok("Not changed\n".into());
    }
    // The agent reads whatever is there, but a config pgherd would reject at start
    // (unsafe timings, a wrong type) is not written.
    config::parse_dynamic(&after).map_err(|e| anyhow::anyhow!("not applied: {e}"))?;
    print!("{}", diff_lines(&yaml(&before)?, &yaml(&after)?));
    if !force && !confirm("Apply these changes?")? {
        bail!("not applied");
    }
    if !dcs
        .set_config(&after, Some(version))
        .await
        .context("cannot write the cluster's config")?
    {
        bail!("the config was changed by someone else meanwhile; nothing was written, try again");
    }
    Ok("Configuration changed\n".into())
}

/// The patches `--apply`, `--set` and `--pg` ask for, in that order.
pub fn patches(edits: &Edits) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    if let Some(file) = &edits.apply {
        let patch = read_yaml(file)?;
        if !patch.is_object() {
            bail!("--apply {}: not a YAML mapping", file.display());
        }
        out.push(patch);
    }
    for spec in &edits.set {
        let (key, value) = key_value(spec, "--set")?;
        let path: Vec<&str> = key.split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            bail!("--set {spec}: '{key}' is not a dotted key path");
        }
        out.push(nested(&path, value));
    }
    for spec in &edits.pg {
        let (name, value) = key_value(spec, "--pg")?;
        out.push(nested(&["postgresql", "parameters", name], value));
    }
    Ok(out)
}

/// `KEY=VALUE` with VALUE read as YAML (`null` or nothing: remove the key).
fn key_value<'a>(spec: &'a str, flag: &str) -> Result<(&'a str, Value)> {
    let Some((key, text)) = spec.split_once('=') else {
        bail!("{flag} {spec}: expected KEY=VALUE");
    };
    let key = key.trim();
    if key.is_empty() {
        bail!("{flag} {spec}: the key is empty");
    }
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        yaml_serde::from_str::<Value>(text)
            .with_context(|| format!("{flag} {spec}: the value is not YAML"))?
    };
    Ok((key, value))
}

fn nested(path: &[&str], value: Value) -> Value {
    path.iter().rev().fold(value, |inner, key| {
        let mut m = Map::new();
        m.insert((*key).to_string(), inner);
        Value::Object(m)
    })
}

fn read_yaml(file: &Path) -> Result<Value> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    yaml_serde::from_str(&text).with_context(|| format!("{}: not valid YAML", file.display()))
}

fn yaml(v: &Value) -> Result<String> {
    yaml_serde::to_string(v).context("cannot render the config as YAML")
}

/// Let `$VISUAL`, `$EDITOR` (or `editor`, then `vi`) edit the config as YAML.
fn edit_in_editor(before: &Value) -> Result<Value> {
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|e| !e.trim().is_empty()))
        .or_else(|| {
            ["editor", "vi"]
                .iter()
                .find(|e| which(e))
                .map(|e| e.to_string())
        })
        .context("no editor: set EDITOR, or use --set, --pg or --apply")?;
    let mut file = tempfile::Builder::new()
        .prefix("pgherd-config-")
        .suffix(".yaml")
        .tempfile()
        .context("cannot create a temporary file")?;
    file.write_all(yaml(before)?.as_bytes())
        .context("cannot write the temporary file")?;
    // The editor may be a command with arguments, as shells run it.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(file.path())
        .status()
        .with_context(|| format!("cannot run the editor '{editor}'"))?;
    if !status.success() {
        bail!("the editor '{editor}' failed ({status}); nothing changed");
    }
    let edited = read_yaml(file.path())?;
    match edited {
        Value::Object(_) => Ok(edited),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => bail!("the edited config is not a YAML mapping; nothing changed"),
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Every line of `old` and `new`, in order, marked `-` (only in old), `+` (only in new)
/// or ` ` (in both), after `--- before` / `+++ after`.
pub fn diff_lines(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut out = String::from("--- before\n+++ after\n");
    let mut line = |mark: char, text: &str| {
        out.push(mark);
        out.push_str(text);
        out.push('\n');
    };
    if a.len().saturating_mul(b.len()) > MAX_DIFF_CELLS {
        a.iter().for_each(|l| line('-', l));
        b.iter().for_each(|l| line('+', l));
        return out;
    }
    // common[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut common = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i][j] = if a[i] == b[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            line(' ', a[i]);
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || common[i + 1][j] >= common[i][j + 1]) {
            line('-', a[i]);
            i += 1;
        } else {
            line('+', b[j]);
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_and_pg_become_nested_patches_with_yaml_values() {
        let edits = Edits {
            set: vec![
                "loop_wait=5".into(),
                "postgresql.use_slots=false".into(),
                "pause=".into(),
            ],
            pg: vec!["work_mem='8MB'".into(), "max_connections=null".into()],
            apply: None,
        };
        let p = patches(&edits).unwrap();
        assert_eq!(
            p,
            vec![
                json!({"loop_wait": 5}),
                json!({"postgresql": {"use_slots": false}}),
                json!({"pause": null}),
                json!({"postgresql": {"parameters": {"work_mem": "8MB"}}}),
                json!({"postgresql": {"parameters": {"max_connections": null}}}),
            ]
        );
    }

    #[test]
    fn malformed_edits_are_refused_with_the_flag_and_the_reason() {
        let err = |set: &str| {
            patches(&Edits {
                set: vec![set.into()],
                ..Default::default()
            })
            .unwrap_err()
            .to_string()
        };
        assert!(err("loop_wait").contains("expected KEY=VALUE"));
        assert!(err("=5").contains("the key is empty"));
        assert!(err("a..b=1").contains("not a dotted key path"));
        assert!(err("ttl=[1, ").contains("not YAML"));
    }

    #[test]
    fn diff_marks_removed_added_and_kept_lines() {
        let d = diff_lines("a\nb\nc\n", "a\nc\nd\n");
        assert_eq!(d, "--- before\n+++ after\n a\n-b\n c\n+d\n");
        assert_eq!(diff_lines("", "x\n"), "--- before\n+++ after\n+x\n");
    }
}
