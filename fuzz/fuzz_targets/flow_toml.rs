//! The call-flow file: parse, then validate against the shipped prompt ids.
#![no_main]

use hotline::ivr::{validate, Flow, PromptCatalog};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use std::sync::OnceLock;

/// The shipped prompt catalogue's ids, so the default flow validates.
fn prompt_ids() -> &'static BTreeSet<String> {
    static IDS: OnceLock<BTreeSet<String>> = OnceLock::new();
    IDS.get_or_init(|| {
        let text = include_str!("../../prompts/ru/prompts.toml");
        PromptCatalog::from_toml_str(text, "prompts.toml")
            .expect("the shipped catalogue parses")
            .ids()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(flow) = Flow::from_toml_str(text, "fuzz.toml") {
        let _ = validate(&flow, prompt_ids());
    }
});
