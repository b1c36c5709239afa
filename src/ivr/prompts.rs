//! The prompt catalogue (`prompts/<lang>/prompts.toml`): prompt id -> the
//! exact words a voice reads, plus tones generated rather than spoken.
//!
//! It owns the catalogue format and the rules on ids and texts that the
//! regeneration script relies on. It must not read or check audio files:
//! which WAVs exist is the host's business.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::error::{FlowError, Problem};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptCatalog {
    #[serde(default)]
    pub prompts: BTreeMap<String, String>,
    #[serde(default)]
    pub tones: BTreeMap<String, Tone>,
    /// Music played while callers wait, by id -> a description; generated as soft
    /// chords until a real recording replaces the WAV.
    #[serde(default)]
    pub music: BTreeMap<String, String>,
}

/// A sine tone such as the recording beep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tone {
    pub hz: u32,
    pub ms: u32,
}

impl PromptCatalog {
    pub fn from_toml_str(text: &str, file_name: &str) -> Result<Self, Vec<FlowError>> {
        let catalog: PromptCatalog = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .and_then(|s| text.get(..s.start))
                .map_or(1, |head| head.matches('\n').count() + 1);
            let message = e.message().trim().replace('\n', " ");
            vec![FlowError::new(
                file_name,
                None,
                Problem::Syntax { line, message },
            )]
        })?;
        let errors = catalog.problems(file_name);
        if errors.is_empty() {
            Ok(catalog)
        } else {
            Err(errors)
        }
    }

    pub fn ids(&self) -> BTreeSet<String> {
        self.prompts
            .keys()
            .chain(self.tones.keys())
            .chain(self.music.keys())
            .cloned()
            .collect()
    }

    pub fn text(&self, id: &str) -> Option<&str> {
        self.prompts.get(id).map(String::as_str)
    }

    /// Ids become file names and texts go through a shell script, so both
    /// are kept plain.
    fn problems(&self, file: &str) -> Vec<FlowError> {
        let invalid = |msg: String| FlowError::new(file, None, Problem::Invalid(msg));
        let mut errors = Vec::new();
        for id in self
            .prompts
            .keys()
            .chain(self.tones.keys())
            .chain(self.music.keys())
        {
            let plain = !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !plain {
                errors.push(invalid(format!(
                    "prompt id \"{id}\" must use only a-z, 0-9 and _"
                )));
            }
        }
        for id in self
            .prompts
            .keys()
            .filter(|id| self.tones.contains_key(*id))
        {
            errors.push(invalid(format!(
                "prompt id \"{id}\" is both a spoken prompt and a tone"
            )));
        }
        for (id, text) in &self.prompts {
            if text.trim().is_empty() {
                errors.push(invalid(format!("prompt \"{id}\" has no text")));
            } else if text.contains(['"', '\\', '\n']) {
                errors.push(invalid(format!(
                    "prompt \"{id}\" must be one line without quotes or backslashes"
                )));
            }
        }
        for (id, tone) in &self.tones {
            if !(200..=3400).contains(&tone.hz) || !(50..=2000).contains(&tone.ms) {
                errors.push(invalid(format!(
                    "tone \"{id}\" must be 200-3400 Hz and 50-2000 ms long"
                )));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RU: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/prompts/ru/prompts.toml"
    ));

    fn ru() -> PromptCatalog {
        PromptCatalog::from_toml_str(RU, "prompts.toml").expect("Russian catalogue parses")
    }

    #[test]
    fn russian_catalogue_has_the_required_prompts() {
        let ids = ru().ids();
        let mut required: Vec<String> = (0..=9).map(|d| format!("digit_{d}")).collect();
        required.extend((1..=10).map(|n| format!("queue_position_{n}")));
        required.extend(
            [
                "queue_position_more",
                "all_operators_busy",
                "message_saved",
                "message_not_saved",
                "invalid_key",
                "no_input",
                "beep",
            ]
            .map(String::from),
        );
        let missing: Vec<_> = required.iter().filter(|id| !ids.contains(*id)).collect();
        assert!(missing.is_empty(), "missing prompts: {missing:?}");
        assert_eq!(ru().text("digit_0"), Some("Ноль."));
    }

    /// Every prompt needs a WAV. The generated placeholders (listed in
    /// `generated.sha256`) must already be telephone format, 8 kHz mono
    /// 16-bit PCM; studio recordings that replace them may be any WAV.
    #[test]
    fn every_prompt_has_a_wav() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/prompts/ru");
        let manifest =
            std::fs::read_to_string(format!("{dir}/generated.sha256")).unwrap_or_default();
        let mut total = 0;
        for id in ru().ids() {
            let path = format!("{dir}/{id}.wav");
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            total += bytes.len();
            let format = wav_format(&bytes).unwrap_or_else(|| panic!("{path}: not a WAV"));
            if manifest.lines().any(|l| l.ends_with(&format!(" {id}.wav"))) {
                assert_eq!(
                    format,
                    (1, 1, 8000, 16),
                    "{path}: format, channels, rate, bits"
                );
                let seconds = bytes.len().saturating_sub(44) as f64 / 16_000.0;
                assert!((0.2..30.0).contains(&seconds), "{path}: {seconds} s");
            }
        }
        assert!(total < 5_000_000, "prompts take {total} bytes");
    }

    /// (format tag, channels, sample rate, bits) of the `fmt ` chunk.
    fn wav_format(bytes: &[u8]) -> Option<(u16, u16, u32, u16)> {
        if bytes.get(0..4)? != b"RIFF" || bytes.get(8..12)? != b"WAVE" {
            return None;
        }
        let mut at = 12;
        while let Some(chunk) = bytes.get(at..at + 8) {
            let size = u32::from_le_bytes(chunk[4..8].try_into().ok()?) as usize;
            if &chunk[0..4] == b"fmt " {
                let f = bytes.get(at + 8..at + 24)?;
                let u16_at = |i: usize| u16::from_le_bytes([f[i], f[i + 1]]);
                let rate = u32::from_le_bytes(f[4..8].try_into().ok()?);
                return Some((u16_at(0), u16_at(2), rate, u16_at(14)));
            }
            at += 8 + size + size % 2;
        }
        None
    }

    #[test]
    fn rejects_ids_that_are_not_plain_file_names() {
        let errors =
            PromptCatalog::from_toml_str("[prompts]\n\"../x\" = \"Да.\"\n", "prompts.toml")
                .unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "prompts.toml: prompt id \"../x\" must use only a-z, 0-9 and _"
        );
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let errors =
            PromptCatalog::from_toml_str("[prompts]\nhello = 5\n", "prompts.toml").unwrap_err();
        let text = errors[0].to_string();
        assert!(text.starts_with("prompts.toml: line 2: "), "{text}");
    }
}
