//! Start-up loading: the call flow and every prompt it can play, read from disk and
//! checked, so that the hosts get them ready-made (and `check` and a reload refuse
//! exactly what start-up would).

use crate::config::Config;
use crate::ivr::{self, Flow};
use crate::media::prompt::{PromptLimits, PromptSet};
use std::sync::Arc;

/// Loads and checks the call flow and every prompt it can play. Each error is one
/// line naming the file (and node or prompt).
pub fn call_flow(cfg: &Config) -> Result<(Arc<Flow>, Arc<PromptSet>), Vec<String>> {
    let flow_file = cfg.ivr.flow.display().to_string();
    let text = std::fs::read_to_string(&cfg.ivr.flow)
        .map_err(|e| vec![format!("{flow_file}: cannot read: {e}")])?;
    let flow = Flow::from_toml_str(&text, &flow_file).map_err(|e| vec![e.to_string()])?;
    let catalog_path = cfg.prompts.dir.join("prompts.toml");
    let catalog_file = catalog_path.display().to_string();
    let catalog_text = std::fs::read_to_string(&catalog_path)
        .map_err(|e| vec![format!("{catalog_file}: cannot read: {e}")])?;
    let catalog = ivr::PromptCatalog::from_toml_str(&catalog_text, &catalog_file)
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let ids = catalog.ids();
    ivr::validate(&flow, &ids)
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    // The queue plays these by id; a typo would leave callers or operators in silence.
    let config_file = if cfg.source.is_empty() {
        "configuration"
    } else {
        cfg.source.as_str()
    };
    let mut missing = Vec::new();
    for (key, id) in [
        ("queue.comfort_prompt", &cfg.queue.comfort_prompt),
        ("queue.whisper_prompt", &cfg.queue.whisper_prompt),
    ] {
        if !id.is_empty() && !ids.contains(id.as_str()) {
            missing.push(format!(
                "{config_file}: {key}: prompt \"{id}\" is not in {catalog_file}"
            ));
        }
    }
    let mut queue_prompts: Vec<String> = (1..=10).map(|n| format!("queue_position_{n}")).collect();
    queue_prompts.push("queue_position_more".into());
    if !cfg.queue.voicemail_key.is_empty() {
        queue_prompts.push("queue_leave_message".into());
    }
    for id in queue_prompts {
        if !ids.contains(id.as_str()) {
            missing.push(format!(
                "{catalog_file}: prompt \"{id}\" is missing (the queue announces positions with it)"
            ));
        }
    }
    // A priority rule on an answer the flow never stores would silently never match.
    let stored: std::collections::BTreeSet<&str> = flow
        .nodes
        .values()
        .filter_map(|node| match node {
            ivr::Node::Menu(m) => m.store_as.as_deref(),
            ivr::Node::Collect(c) => c.store_as.as_deref(),
            _ => None,
        })
        .collect();
    for (i, rule) in cfg.queue.priority_answers.iter().enumerate() {
        let key = rule.split_once('=').map_or(rule.as_str(), |(k, _)| k);
        if !stored.contains(key) {
            missing.push(format!(
                "{config_file}: queue.priority_answers[{i}]: no node of {flow_file} stores an answer as \"{key}\""
            ));
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let prompts = PromptSet::load_dir_with(&cfg.prompts.dir, &id_refs, &PromptLimits::default())
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    Ok((Arc::new(flow), Arc::new(prompts)))
}

/// The limits of `[flow]` (`max_seconds_to_queue`, `max_seconds_to_voicemail`) that
/// the flow with these prompts exceeds, as `hotline check` reports them.
pub fn path_limit_problems(flow: &Arc<Flow>, prompts: &PromptSet) -> Vec<String> {
    use crate::ivr::paths::{check_limits, timed_paths, PathInputs};
    let inputs = PathInputs {
        prompt_lengths: crate::prompts::played_lengths(prompts),
        no_speech: std::time::Duration::from_millis(u64::from(
            crate::media::voicemail::VoicemailStopConfig::default().no_speech_timeout_ms,
        )),
        reference_digits: crate::reference::CODE_DIGITS,
    };
    let report = timed_paths(flow, &inputs, std::time::Instant::now());
    check_limits(flow, &report)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Whether `serve` could create (or use) the data directory: it exists as a directory,
/// or its nearest existing ancestor is a directory this user may write to.
pub fn data_dir_problem(cfg: &Config) -> Option<String> {
    let dir = &cfg.storage.data_dir;
    let key = format!("{}: storage.data_dir", source_name(cfg));
    let mut at = dir.as_path();
    loop {
        match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => {
                return can_create_in(at)
                    .err()
                    .map(|e| format!("{key}: cannot create in {}: {e}", at.display()));
            }
            Ok(_) => {
                return Some(format!(
                    "{key}: {} exists and is not a directory",
                    at.display()
                ))
            }
            Err(e) => match at.parent() {
                Some(p) if !p.as_os_str().is_empty() => at = p,
                // A relative path with no existing part: it goes in the current directory.
                _ if at != std::path::Path::new(".") => at = std::path::Path::new("."),
                _ => return Some(format!("{key}: {}: {e}", at.display())),
            },
        }
    }
}

fn source_name(cfg: &Config) -> &str {
    if cfg.source.is_empty() {
        "configuration"
    } else {
        cfg.source.as_str()
    }
}

/// Creates and removes a directory in `dir`: the only test that answers for every
/// user, root on a read-only or virtual file system included.
fn can_create_in(dir: &std::path::Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".hotline-check-{}", std::process::id()));
    std::fs::create_dir(&probe)?;
    std::fs::remove_dir(&probe)
}
