//! Prompt audio as an administrator handles it: what each prompt says and how
//! long and loud it is (`hotline prompts list`, the level part of `hotline check`),
//! and bringing studio recordings in (`hotline prompts import`).
//!
//! The words live in `prompts/<lang>/prompts.toml` (see `crate::ivr::PromptCatalog`);
//! this module only reads them. Loudness rules are in [`level`].

pub mod import;
pub mod level;

use std::path::Path;
use std::time::Duration;

use crate::ivr::PromptCatalog;
use crate::media::prompt::{load_prompt, PromptSet, FRAME_SAMPLES, SAMPLE_RATE};
use level::{Kind, Levels};

/// Reads `<dir>/prompts.toml`.
pub fn load_catalog(dir: &Path) -> Result<PromptCatalog, Vec<String>> {
    let path = dir.join("prompts.toml");
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(&path).map_err(|e| vec![format!("{file}: cannot read: {e}")])?;
    PromptCatalog::from_toml_str(&text, &file)
        .map_err(|errs| errs.iter().map(ToString::to_string).collect())
}

/// Spoken prompt, tone or music; `None` for an id the catalogue does not have.
pub fn kind_of(catalog: &PromptCatalog, id: &str) -> Option<Kind> {
    if catalog.prompts.contains_key(id) {
        Some(Kind::Speech)
    } else if catalog.tones.contains_key(id) {
        Some(Kind::Tone)
    } else if catalog.music.contains_key(id) {
        Some(Kind::Music)
    } else {
        None
    }
}

/// One prompt as `hotline prompts list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PromptInfo {
    pub id: String,
    pub kind: Kind,
    /// The words (spoken prompts), the tone or the music's description.
    pub text: String,
    pub levels: Option<Levels>,
    /// Level problems, or why the file cannot be played.
    pub problems: Vec<String>,
    /// Still the synthetic placeholder that `scripts/make-prompts.sh` made.
    pub placeholder: bool,
}

/// Every prompt of the catalogue with its audio's measurements.
pub fn survey(dir: &Path, catalog: &PromptCatalog) -> Vec<PromptInfo> {
    let placeholders = placeholders(dir);
    catalog
        .ids()
        .into_iter()
        .map(|id| {
            let kind = kind_of(catalog, &id).unwrap_or(Kind::Speech);
            let text = match kind {
                Kind::Speech => catalog.text(&id).unwrap_or_default().to_owned(),
                Kind::Tone => catalog
                    .tones
                    .get(&id)
                    .map(|t| format!("{} Hz tone, {} ms", t.hz, t.ms))
                    .unwrap_or_default(),
                Kind::Music => catalog.music.get(&id).cloned().unwrap_or_default(),
            };
            let (levels, problems) = match load_prompt(dir.join(format!("{id}.wav"))) {
                Ok(audio) => {
                    let levels = level::measure(&level::to_unit(&audio.pcm), SAMPLE_RATE);
                    let problems = level::problems(&levels, kind)
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    (Some(levels), problems)
                }
                Err(e) => (None, vec![e.to_string()]),
            };
            PromptInfo {
                placeholder: placeholders.contains(&id),
                id,
                kind,
                text,
                levels,
                problems,
            }
        })
        .collect()
}

/// One line per level problem, naming the file: what `hotline check` prints.
pub fn level_problems(dir: &Path, catalog: &PromptCatalog) -> Vec<String> {
    survey(dir, catalog)
        .into_iter()
        .filter(|p| p.levels.is_some())
        .flat_map(|p| {
            let file = dir.join(format!("{}.wav", p.id)).display().to_string();
            p.problems
                .into_iter()
                .map(move |problem| format!("{file}: {problem}"))
        })
        .collect()
}

/// Ids whose WAV is still the generated placeholder listed in
/// `generated.sha256` with the file's current hash.
pub fn placeholders(dir: &Path) -> Vec<String> {
    use sha2::{Digest, Sha256};
    let manifest = std::fs::read_to_string(dir.join("generated.sha256")).unwrap_or_default();
    manifest
        .lines()
        .filter_map(|line| {
            let (hash, name) = line.split_once("  ")?;
            let id = name.trim().strip_suffix(".wav")?;
            let bytes = std::fs::read(dir.join(name.trim())).ok()?;
            (hex::encode(Sha256::digest(&bytes)) == hash.trim()).then(|| id.to_owned())
        })
        .collect()
}

/// How long each loaded prompt plays: whole 20 ms frames, as the media engine
/// sends them.
pub fn played_lengths(prompts: &PromptSet) -> std::collections::BTreeMap<String, Duration> {
    prompts
        .ids()
        .filter_map(|id| {
            let frames = prompts.get(id)?.frame_count() as u64;
            let ms = frames * FRAME_SAMPLES as u64 * 1000 / u64::from(SAMPLE_RATE);
            Some((id.to_owned(), Duration::from_millis(ms)))
        })
        .collect()
}

/// `hotline prompts list`: id, kind, seconds, loudness, problems, words.
pub fn list_text(prompts: &[PromptInfo]) -> String {
    let mut rows = vec![["id", "kind", "seconds", "LUFS", "problems", "text"].map(String::from)];
    for p in prompts {
        let (seconds, lufs) = match &p.levels {
            Some(l) => (
                format!("{:.2}", l.seconds),
                l.lufs.map_or("-".into(), |v| format!("{v:.1}")),
            ),
            None => ("-".into(), "-".into()),
        };
        let kind = match (p.kind, p.placeholder) {
            (Kind::Speech, true) => "speech (placeholder)",
            (Kind::Speech, false) => "speech",
            (Kind::Tone, _) => "tone",
            (Kind::Music, _) => "music",
        };
        let problems = if p.problems.is_empty() {
            "-".to_owned()
        } else {
            p.problems.join("; ")
        };
        rows.push([
            p.id.clone(),
            kind.into(),
            seconds,
            lufs,
            problems,
            p.text.clone(),
        ]);
    }
    format_table(&rows)
}

/// The table of `docs/prompts.md`: id, seconds, words.
pub fn list_markdown(prompts: &[PromptInfo]) -> String {
    let mut out = String::from("| id | seconds | text |\n| --- | ---: | --- |\n");
    for p in prompts {
        let seconds = p
            .levels
            .as_ref()
            .map_or("-".into(), |l| format!("{:.2}", l.seconds));
        out.push_str(&format!("| `{}` | {seconds} | {} |\n", p.id, p.text));
    }
    out
}

/// Left-aligned columns two spaces apart; widths in characters, for Cyrillic.
pub fn format_table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(c);
            line.extend(std::iter::repeat_n(' ', w - c.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
