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
    if !missing.is_empty() {
        return Err(missing);
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let prompts = PromptSet::load_dir_with(&cfg.prompts.dir, &id_refs, &PromptLimits::default())
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    Ok((Arc::new(flow), Arc::new(prompts)))
}
