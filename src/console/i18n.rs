//! The console's words: one catalogue per language (`i18n/en.toml`, `i18n/uk.toml`,
//! embedded in the binary), chosen per user. Pages call [`tr`] / [`trf`] with a key;
//! the script gets the `js.*` keys in a JSON data block. A test checks that both
//! catalogues hold the same keys and placeholders, and that every key the pages and
//! the script use exists. Pure code.

use std::collections::BTreeMap;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    Uk,
    En,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::Uk, Lang::En];

    pub fn code(self) -> &'static str {
        match self {
            Lang::Uk => "uk",
            Lang::En => "en",
        }
    }

    pub fn parse(s: &str) -> Option<Lang> {
        Lang::ALL.into_iter().find(|l| l.code() == s)
    }

    /// The first of our languages an `Accept-Language` header names (weights ignored:
    /// browsers list languages in order of preference).
    pub fn from_accept_language(header: &str) -> Option<Lang> {
        header.split(',').find_map(|part| {
            let tag = part.split(';').next()?.trim().to_ascii_lowercase();
            let primary = tag.split('-').next()?;
            Lang::parse(primary)
        })
    }

    /// The language's own name, for the language switch.
    pub fn own_name(self) -> &'static str {
        match self {
            Lang::Uk => "Українська",
            Lang::En => "English",
        }
    }
}

const SOURCES: [(Lang, &str); 2] = [
    (Lang::Uk, include_str!("i18n/uk.toml")),
    (Lang::En, include_str!("i18n/en.toml")),
];

type Catalogue = BTreeMap<String, String>;

fn flatten(prefix: &str, table: &toml::Table, out: &mut Catalogue) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            toml::Value::String(s) => {
                out.insert(key, s.clone());
            }
            other => {
                out.insert(key, other.to_string());
            }
        }
    }
}

fn parse(text: &str) -> Catalogue {
    let table: toml::Table = text.parse().unwrap_or_default();
    let mut out = Catalogue::new();
    flatten("", &table, &mut out);
    out
}

fn catalogues() -> &'static [(Lang, Catalogue); 2] {
    static CATALOGUES: OnceLock<[(Lang, Catalogue); 2]> = OnceLock::new();
    CATALOGUES.get_or_init(|| SOURCES.map(|(l, text)| (l, parse(text))))
}

fn catalogue(lang: Lang) -> &'static Catalogue {
    let all = catalogues();
    &all.iter().find(|(l, _)| *l == lang).unwrap_or(&all[0]).1
}

/// The text of `key` in `lang`, if the catalogue has it (for keys built at run time).
pub fn lookup(lang: Lang, key: &str) -> Option<&'static str> {
    catalogue(lang).get(key).map(String::as_str)
}

/// The text of `key` in `lang` (the key itself if missing, which a test forbids).
pub fn tr(lang: Lang, key: &str) -> &'static str {
    match catalogue(lang).get(key) {
        Some(s) => s.as_str(),
        None => {
            tracing::error!(key, "missing console text");
            // The key leaks once per distinct missing key; there are none in a build
            // that passes its tests.
            Box::leak(key.to_string().into_boxed_str())
        }
    }
}

/// [`tr`] with `{name}` placeholders filled in.
pub fn trf(lang: Lang, key: &str, args: &[(&str, &str)]) -> String {
    let mut s = tr(lang, key).to_string();
    for (name, value) in args {
        s = s.replace(&format!("{{{name}}}"), value);
    }
    s
}

/// The `js.*` texts as a JSON object (keys without the prefix), safe to put inside
/// a `<script type="application/json">` element.
pub fn script_texts(lang: Lang) -> String {
    let texts: BTreeMap<&str, &str> = catalogue(lang)
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("js.")?, v.as_str())))
        .collect();
    serde_json::to_string(&texts)
        .unwrap_or_else(|_| "{}".into())
        .replace('<', "\\u003c")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn placeholders(s: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut rest = s;
        while let Some(i) = rest.find('{') {
            rest = &rest[i + 1..];
            if let Some(j) = rest.find('}') {
                out.insert(rest[..j].to_string());
                rest = &rest[j + 1..];
            }
        }
        out
    }

    #[test]
    fn catalogues_hold_the_same_keys_and_placeholders() {
        let uk = catalogue(Lang::Uk);
        let en = catalogue(Lang::En);
        assert!(en.len() > 50, "{} keys", en.len());
        let uk_keys: BTreeSet<&String> = uk.keys().collect();
        let en_keys: BTreeSet<&String> = en.keys().collect();
        assert_eq!(
            uk_keys.symmetric_difference(&en_keys).collect::<Vec<_>>(),
            Vec::<&&String>::new()
        );
        let mut same = 0;
        for (k, v) in en {
            let u = &uk[k];
            assert!(!v.trim().is_empty() && !u.trim().is_empty(), "{k} is empty");
            assert_eq!(placeholders(v), placeholders(u), "{k}");
            if v == u {
                same += 1;
            }
        }
        assert!(same * 10 < en.len(), "{same} texts are not translated");
    }

    /// Every `tr(`/`trf(` key in the console's Rust code and every `str('...')` in the
    /// script exists.
    #[test]
    fn every_key_used_exists() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/console");
        let mut used = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.split("#[cfg(test)]").next().unwrap_or("");
            if ext == "rs" {
                for call in ["tr(", "trf("] {
                    for (i, _) in text.match_indices(call) {
                        // `tr(` itself, not `push_str(` or `from_str(`.
                        let before = text[..i].chars().next_back().unwrap_or(' ');
                        if before.is_alphanumeric() || before == '_' || before == '.' {
                            continue;
                        }
                        let rest = &text[i + call.len()..];
                        // The key is the first string literal after the language.
                        let Some(q) = rest.find('"') else { continue };
                        if rest[..q].contains(')') || rest[..q].contains(';') {
                            continue;
                        }
                        let key = &rest[q + 1..];
                        let key = &key[..key.find('"').unwrap()];
                        if !key.is_empty() && !key.contains('{') {
                            used.insert(key.to_string());
                        }
                    }
                }
            }
        }
        let script = std::fs::read_to_string(dir.join("static/app.js")).unwrap();
        let mut script_keys = 0;
        for (i, _) in script.match_indices("str('") {
            let rest = &script[i + 5..];
            used.insert(format!("js.{}", &rest[..rest.find('\'').unwrap()]));
            script_keys += 1;
        }
        assert!(script_keys > 5, "the script's texts are found");
        assert!(
            used.len() > 50,
            "the pages' texts are found: {}",
            used.len()
        );
        for lang in Lang::ALL {
            let missing: Vec<&String> = used
                .iter()
                .filter(|k| !catalogue(lang).contains_key(*k))
                .collect();
            assert!(missing.is_empty(), "{lang:?} lacks {missing:?}");
        }
    }

    #[test]
    fn languages_from_headers() {
        assert_eq!(
            Lang::from_accept_language("uk-UA,uk;q=0.9,en;q=0.8"),
            Some(Lang::Uk)
        );
        assert_eq!(
            Lang::from_accept_language("de-DE, en-GB;q=0.7"),
            Some(Lang::En)
        );
        assert_eq!(Lang::from_accept_language("de"), None);
        assert_eq!(Lang::from_accept_language(""), None);
        let json = script_texts(Lang::En);
        assert!(!json.contains('<'));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v.as_object().unwrap().len() > 5);
        assert_eq!(
            trf(Lang::En, "login.locked", &[("minutes", "15")]),
            "Too many failed logins. Try again in 15 minutes."
        );
    }
}
