//! coturn's `turnserver.conf` grammar, turned into command-line tokens.
//!
//! The file is not interpreted here: each option line becomes one `--key=value` (or `--key`)
//! token that the command-line parser ([`super::cli::command`]) reads, so a file key and a flag
//! can never disagree. Grammar, line by line:
//! - blank lines are skipped; `#` starts a comment only as the first non-blank character, so a
//!   `#` inside a value is part of the value;
//! - `key=value`, `key value` (the first run of blanks separates; `key = value` works too) or a
//!   bare `key`; a leading `--` on the key is tolerated;
//! - surrounding blanks are trimmed and a value wrapped in double quotes loses the quotes.

use std::path::{Path, PathBuf};

/// The file name searched for when no `-c` is given.
pub const DEFAULT_NAME: &str = "turnserver.conf";

/// Directories searched, in order, for [`DEFAULT_NAME`] and for a relative `-c` path: coturn's
/// list, plus the `coturn/` subdirectories that packages use.
pub const SEARCH_DIRS: &[&str] = &[
    "./",
    "./etc/",
    "../etc/",
    "/etc/",
    "/etc/coturn/",
    "/usr/local/etc/",
    "/usr/local/etc/coturn/",
];

/// One option line of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    /// 1-based line number, for messages.
    pub number: usize,
    /// The key without a leading `--`.
    pub key: &'a str,
    /// The value, unquoted; `None` for a bare key (an empty value counts as bare).
    pub value: Option<&'a str>,
}

impl Line<'_> {
    /// The command-line token this line stands for.
    pub fn token(&self) -> String {
        match self.value {
            Some(v) => format!("--{}={}", self.key, v),
            None => format!("--{}", self.key),
        }
    }
}

/// The option lines of `text`, in order.
pub fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    text.lines().enumerate().filter_map(|(i, raw)| {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let line = line.strip_prefix("--").unwrap_or(line);
        let key_end = line
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(line.len());
        let (key, rest) = line.split_at(key_end);
        let rest = rest.trim_start();
        let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
        let value = unquote(rest);
        Some(Line {
            number: i + 1,
            key,
            value: (!value.is_empty()).then_some(value),
        })
    })
}

fn unquote(v: &str) -> &str {
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

/// Where to read the config from: `path` as given if it exists or is absolute, else the first
/// [`SEARCH_DIRS`] entry holding it. A relative path found nowhere is returned as given, so that
/// reading it fails with a message naming it.
pub fn resolve_explicit(path: &Path) -> PathBuf {
    if path.is_absolute() || path.exists() {
        return path.to_path_buf();
    }
    search(path).unwrap_or_else(|| path.to_path_buf())
}

/// The first [`SEARCH_DIRS`] entry holding `name`, if any.
pub fn search(name: &Path) -> Option<PathBuf> {
    SEARCH_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> (String, Option<String>) {
        let l = lines(text).next().expect("a line");
        (l.key.to_owned(), l.value.map(str::to_owned))
    }

    #[test]
    fn grammar() {
        assert_eq!(
            one("min-port=5000"),
            ("min-port".into(), Some("5000".into()))
        );
        assert_eq!(
            one("min-port 5000"),
            ("min-port".into(), Some("5000".into()))
        );
        assert_eq!(
            one("min-port \t 5000  "),
            ("min-port".into(), Some("5000".into()))
        );
        assert_eq!(
            one("min-port = 5000"),
            ("min-port".into(), Some("5000".into()))
        );
        assert_eq!(
            one("  --min-port=5000"),
            ("min-port".into(), Some("5000".into()))
        );
        assert_eq!(one("fingerprint"), ("fingerprint".into(), None));
        assert_eq!(one("fingerprint="), ("fingerprint".into(), None));
        assert_eq!(
            one(r#"cipher-list="DEFAULT""#),
            ("cipher-list".into(), Some("DEFAULT".into()))
        );
        assert_eq!(
            one(r#"new-log-timestamp-format "%FT%T%z""#),
            ("new-log-timestamp-format".into(), Some("%FT%T%z".into()))
        );
        assert_eq!(
            one("static-auth-secret=a#b c"),
            ("static-auth-secret".into(), Some("a#b c".into()))
        );
        assert_eq!(
            one(r#"psql-userdb="host=h dbname=d""#),
            ("psql-userdb".into(), Some("host=h dbname=d".into()))
        );
    }

    #[test]
    fn comments_and_numbers() {
        let text = "# comment\n\n   # indented comment\nverbose\n\t\nrealm=x # not a comment\n";
        let got: Vec<_> = lines(text).collect();
        assert_eq!(
            got,
            vec![
                Line {
                    number: 4,
                    key: "verbose",
                    value: None
                },
                Line {
                    number: 6,
                    key: "realm",
                    value: Some("x # not a comment")
                },
            ]
        );
        assert_eq!(got[1].token(), "--realm=x # not a comment");
        assert_eq!(got[0].token(), "--verbose");
    }
}
