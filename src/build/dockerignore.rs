//! `.dockerignore`: which files of a build context are sent to the daemon.
//!
//! Docker's rules, so that `diskc build` and `docker build` send the same context:
//! one pattern per line, `#` starts a comment line, `!` re-includes what an earlier pattern
//! excluded, and the last pattern that matches a path decides. Patterns are cleaned like
//! paths (`./a//b/` is `a/b`, a leading `/` is dropped) and match with `filepath.Match`
//! syntax (`*`, `?`, `[class]`, `\` escapes) plus `**`, which spans any number of
//! directories. A pattern that matches a directory also matches everything below it.
//!
//! Parsing and matching are pure; the context walker asks [`Ignore::is_excluded`] per path.

/// The parsed patterns of one `.dockerignore` file.
#[derive(Clone, Debug, Default)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

#[derive(Clone, Debug)]
struct Pattern {
    /// `!pattern`: a match re-includes the path.
    exception: bool,
    tokens: Vec<Token>,
    /// The cleaned text, kept for `could_match_below`.
    segments: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Byte(u8),
    /// `*`: any run of bytes but `/`.
    Star,
    /// `?`: one byte but `/`.
    AnyByte,
    /// `[...]`: one byte (never `/`) in, or with `^` not in, the ranges.
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
    /// `**` inside a pattern (its trailing `/` eaten): nothing, or anything ending in `/`.
    DirsPrefix,
    /// `**` at the end: anything at all.
    Rest,
}

impl Ignore {
    /// Parses the text of a `.dockerignore` file.
    pub fn parse(text: &str) -> Ignore {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, raw) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean(raw);
            if cleaned.is_empty() {
                continue;
            }
            patterns.push(Pattern {
                exception,
                tokens: tokenize(cleaned.as_bytes()),
                segments: cleaned.split('/').map(str::to_owned).collect(),
            });
        }
        Ignore { patterns }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `path` (relative to the context root, `/`-separated, no leading `/`) is left
    /// out of the context.
    pub fn is_excluded(&self, path: &str) -> bool {
        let mut excluded = false;
        for pattern in &self.patterns {
            // Only a pattern that would flip the current answer needs to be tried.
            if pattern.exception != excluded {
                continue;
            }
            if matches_self_or_parent(&pattern.tokens, path) {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// Whether an exception (`!pattern`) might re-include something strictly below the
    /// excluded directory `dir`; when none can, the walker skips the whole directory.
    pub fn may_include_below(&self, dir: &str) -> bool {
        let dir_segments: Vec<&str> = dir.split('/').collect();
        self.patterns.iter().filter(|p| p.exception).any(|p| {
            if p.segments.iter().any(|s| s.contains("**")) {
                return true;
            }
            p.segments.len() > dir_segments.len()
                && dir_segments
                    .iter()
                    .zip(&p.segments)
                    .all(|(d, s)| match_tokens(&tokenize(s.as_bytes()), d.as_bytes()))
        })
    }
}

/// Docker cleans each pattern like a path (Go's `filepath.Clean`) and drops a leading `/`.
fn clean(raw: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !raw.starts_with('/') {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

fn tokenize(pattern: &[u8]) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'*' if pattern.get(i + 1) == Some(&b'*') => {
                i += 2;
                if pattern.get(i) == Some(&b'/') {
                    i += 1;
                }
                tokens.push(if i >= pattern.len() { Token::Rest } else { Token::DirsPrefix });
                continue;
            }
            b'*' => tokens.push(Token::Star),
            b'?' => tokens.push(Token::AnyByte),
            b'\\' if i + 1 < pattern.len() => {
                i += 1;
                tokens.push(Token::Byte(pattern[i]));
            }
            b'[' => {
                if let Some((token, next)) = parse_class(pattern, i + 1) {
                    tokens.push(token);
                    i = next;
                    continue;
                }
                tokens.push(Token::Byte(b'['));
            }
            byte => tokens.push(Token::Byte(byte)),
        }
        i += 1;
    }
    tokens
}

/// Parses a class after its `[`; returns the token and the index after `]`, or `None` when
/// the class is not closed (then `[` is a plain byte).
fn parse_class(pattern: &[u8], mut i: usize) -> Option<(Token, usize)> {
    let negated = pattern.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let mut lo = *pattern.get(i)?;
        if lo == b']' && !first {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        first = false;
        if lo == b'\\' {
            i += 1;
            lo = *pattern.get(i)?;
        }
        i += 1;
        let mut hi = lo;
        if pattern.get(i) == Some(&b'-') && pattern.get(i + 1).is_some_and(|b| *b != b']') {
            i += 1;
            hi = pattern[i];
            if hi == b'\\' {
                i += 1;
                hi = *pattern.get(i)?;
            }
            i += 1;
        }
        ranges.push((lo, hi));
    }
}

fn matches_self_or_parent(tokens: &[Token], path: &str) -> bool {
    if match_tokens(tokens, path.as_bytes()) {
        return true;
    }
    path.match_indices('/').any(|(at, _)| match_tokens(tokens, &path.as_bytes()[..at]))
}

/// Backtracking match of the whole of `text`; patterns are short, so this stays cheap.
fn match_tokens(tokens: &[Token], text: &[u8]) -> bool {
    let Some((token, rest)) = tokens.split_first() else {
        return text.is_empty();
    };
    match token {
        Token::Byte(b) => text.first() == Some(b) && match_tokens(rest, &text[1..]),
        Token::AnyByte => text.first().is_some_and(|c| *c != b'/') && match_tokens(rest, &text[1..]),
        Token::Class { negated, ranges } => {
            text.first().is_some_and(|c| {
                *c != b'/' && ranges.iter().any(|(lo, hi)| (lo..=hi).contains(&c)) != *negated
            }) && match_tokens(rest, &text[1..])
        }
        Token::Star => {
            let run = text.iter().position(|c| *c == b'/').unwrap_or(text.len());
            (0..=run).any(|n| match_tokens(rest, &text[n..]))
        }
        Token::Rest => true,
        Token::DirsPrefix => {
            match_tokens(rest, text)
                || text.iter().enumerate().any(|(at, c)| *c == b'/' && match_tokens(rest, &text[at + 1..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excluded(patterns: &str, path: &str) -> bool {
        Ignore::parse(patterns).is_excluded(path)
    }

    #[test]
    fn plain_names_match_themselves_and_everything_below() {
        assert!(excluded("secret", "secret"));
        assert!(excluded("secret", "secret/key"));
        assert!(!excluded("secret", "a/secret"));
        assert!(!excluded("secret", "secrets"));
    }

    #[test]
    fn patterns_are_cleaned_like_paths() {
        assert!(excluded("/a//b/", "a/b/c"));
        assert!(excluded("./a/./b", "a/b"));
        assert!(excluded("a/x/../b", "a/b"));
        assert!(excluded("  spaced  ", "spaced"));
    }

    #[test]
    fn star_and_question_mark_stay_within_one_directory() {
        assert!(excluded("*.log", "x.log"));
        assert!(!excluded("*.log", "dir/x.log"));
        assert!(excluded("*/x.log", "dir/x.log"));
        assert!(excluded("file?", "file1"));
        assert!(!excluded("a?b", "a/b"));
    }

    #[test]
    fn double_star_spans_directories() {
        assert!(excluded("**/*.log", "x.log"));
        assert!(excluded("**/*.log", "a/b/x.log"));
        assert!(excluded("a/**/z", "a/z"));
        assert!(excluded("a/**/z", "a/b/c/z"));
        assert!(!excluded("a/**/z", "b/z"));
        assert!(excluded("a/**", "a/b/c"));
    }

    #[test]
    fn classes_and_escapes() {
        assert!(excluded("[a-c]x", "bx"));
        assert!(!excluded("[a-c]x", "dx"));
        assert!(excluded("[^a-c]x", "dx"));
        assert!(!excluded("[^a-c]x", "ax"));
        assert!(excluded("\\*star", "*star"));
        assert!(!excluded("\\*star", "xstar"));
    }

    #[test]
    fn the_last_matching_pattern_decides() {
        let rules = "*.md\n!README.md\n# a comment\n\nREADME*.md\n!READMEkeep.md";
        assert!(excluded(rules, "notes.md"));
        assert!(excluded(rules, "README.md"));
        assert!(!excluded(rules, "READMEkeep.md"));
        assert!(!excluded(rules, "main.rs"));
        assert!(!excluded("*.md\n!README.md", "README.md"));
    }

    #[test]
    fn exceptions_decide_whether_an_excluded_directory_is_walked() {
        let ignore = Ignore::parse("build\n!build/keep/me.txt");
        assert!(ignore.is_excluded("build"));
        assert!(ignore.may_include_below("build"));
        assert!(ignore.may_include_below("build/keep"));
        assert!(!ignore.may_include_below("build/other"));
        assert!(!ignore.is_excluded("build/keep/me.txt"));
        assert!(ignore.is_excluded("build/keep/other.txt"));
        assert!(!Ignore::parse("build").may_include_below("build"));
        assert!(Ignore::parse("build\n!**/x").may_include_below("build"));
    }
}
