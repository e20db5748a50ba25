//! The `options` start-up parameter (libpq's PGOPTIONS): words separated
//! by white space, backslash escaping the next character, and `-c
//! name=value` settings among them. Read here once for the two places that
//! need it: the login settings of a server connection
//! (`server::settings`) and the reported parameters a client asked for
//! (`server::params`).

/// One word of an `options` string, or a `-c name=value` setting in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Setting(String, String),
    Word(String),
}

/// The words of an `options` string; backslash escapes the next character,
/// as in libpq's PGOPTIONS.
fn words(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// `-c name=value`, `-cname=value` and `--name=value` are settings; any
/// other word (a command-line switch) is kept as it is.
pub fn items(options: &str) -> Vec<Item> {
    let mut out = Vec::new();
    let mut it = words(options).into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            match it.next() {
                Some(next) => Some(next),
                None => {
                    out.push(Item::Word(w));
                    continue;
                }
            }
        } else if let Some(rest) = w.strip_prefix("-c") {
            Some(rest.to_string())
        } else {
            w.strip_prefix("--").map(str::to_string)
        };
        match setting.as_deref().and_then(|s| s.split_once('=')) {
            Some((k, v)) => out.push(Item::Setting(k.replace('-', "_"), v.to_string())),
            None => out.push(Item::Word(w)),
        }
    }
    out
}

/// A word as an `options` string needs it: backslash before a backslash
/// or white space.
pub fn escape(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if c == '\\' || c.is_whitespace() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Only the `name=value` settings, in order.
pub fn settings(options: &str) -> Vec<(String, String)> {
    items(options)
        .into_iter()
        .filter_map(|item| match item {
            Item::Setting(k, v) => Some((k, v)),
            Item::Word(_) => None,
        })
        .collect()
}
