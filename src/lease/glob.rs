//! Capability patterns (§9.2): globs over paths, URLs, tool, agent and model names.
//!
//! The dialect is deliberately small so that inclusion between two patterns stays decidable
//! by a simple DP: `**` matches any sequence of characters, `*` any sequence without `/`, `?`
//! one character other than `/`, and every other character is itself. There is no escaping
//! and no character class; a lease that needs a literal `*` cannot express it, which no
//! reserved namespace requires.
//!
//! Both matching and inclusion run in time proportional to the product of the two lengths,
//! never exponential, so a hostile pattern or resource cannot stall enforcement.

use std::fmt;

use crate::error::{excerpt, ArcpError, EXCERPT_CHARS};

/// Longest pattern accepted, in bytes. Matching and inclusion are quadratic, so an unbounded
/// pattern from a request would let one client buy unbounded CPU on every operation.
pub const MAX_PATTERN_LEN: usize = 4096;

/// One unit of a compiled pattern. Runs of two or more `*` collapse into one `AnyPath` since
/// `***` and `**` (and `*` next to `**`) match the same strings.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Token {
    Literal(char),
    /// `?`
    OneChar,
    /// `*`
    AnySegment,
    /// `**`
    AnyPath,
}

/// A parsed capability pattern. Keeps its source text so a lease re-serialises exactly as it
/// was requested.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Pattern {
    source: String,
    tokens: Vec<Token>,
}

impl Pattern {
    /// Parses a pattern. Fails with `INVALID_REQUEST` on an empty pattern, since an empty
    /// grant is more likely a client bug than an intent to authorise the empty resource, or on
    /// one longer than [`MAX_PATTERN_LEN`].
    pub fn parse(source: &str) -> Result<Pattern, ArcpError> {
        match tokenize(source) {
            Ok(tokens) => Ok(Pattern {
                source: source.to_owned(),
                tokens,
            }),
            Err(why) => Err(ArcpError::InvalidRequest(format!(
                "invalid pattern {}: {why}",
                excerpt(source, EXCERPT_CHARS)
            ))),
        }
    }

    /// The pattern exactly as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `resource` is one of the strings this pattern denotes.
    pub fn matches(&self, resource: &str) -> bool {
        let text: Vec<char> = resource.chars().collect();
        // row[t]: the tokens seen so far match exactly the first t characters. One row per
        // token keeps memory linear in the resource.
        let mut row = vec![false; text.len() + 1];
        row[0] = true;
        for token in &self.tokens {
            let mut next = vec![false; text.len() + 1];
            for t in 0..=text.len() {
                next[t] = match token {
                    Token::Literal(c) => t > 0 && row[t - 1] && text[t - 1] == *c,
                    Token::OneChar => t > 0 && row[t - 1] && text[t - 1] != '/',
                    Token::AnySegment => row[t] || (t > 0 && next[t - 1] && text[t - 1] != '/'),
                    Token::AnyPath => row[t] || (t > 0 && next[t - 1]),
                };
            }
            if !next.iter().any(|&m| m) {
                return false;
            }
            row = next;
        }
        row[text.len()]
    }

    /// Whether every string `narrower` matches is also matched by `self`.
    ///
    /// Sound: never true when some string matches `narrower` but not `self`, because each
    /// step only lets a token of `self` absorb tokens of `narrower` whose strings it matches.
    /// Not complete (exact glob inclusion costs more than enforcement should), but decides
    /// the shapes leases use: identical patterns, literals, deeper `**` trees, `*` segments
    /// within `*` or `**`, and prefixes such as `tier-fast/*` under `tier-*/*`.
    pub fn covers(&self, narrower: &Pattern) -> bool {
        let wide = &self.tokens;
        let narrow = &narrower.tokens;
        let (n, w) = (narrow.len(), wide.len());
        // ok[i][j]: narrow[i..] is covered by wide[j..]. Filled from the ends backwards so
        // each cell reads only finished cells.
        let width = w + 1;
        let mut ok = vec![false; (n + 1) * width];
        ok[n * width + w] = true;
        for i in (0..=n).rev() {
            for j in (0..w).rev() {
                let skip_wide = ok[i * width + j + 1];
                let here = narrow.get(i).copied();
                let absorbed = match (wide[j], here) {
                    // A wide star may stay in place after eating a narrow token: the star
                    // still covers what follows.
                    (Token::AnyPath, Some(_)) => ok[(i + 1) * width + j],
                    (Token::AnySegment, Some(t)) if within_segment(t) => ok[(i + 1) * width + j],
                    (Token::OneChar, Some(t)) if one_char_in_segment(t) => {
                        ok[(i + 1) * width + j + 1]
                    }
                    (Token::Literal(a), Some(Token::Literal(b))) if a == b => {
                        ok[(i + 1) * width + j + 1]
                    }
                    _ => false,
                };
                let stars_may_vanish = matches!(wide[j], Token::AnyPath | Token::AnySegment);
                ok[i * width + j] = absorbed || (stars_may_vanish && skip_wide);
            }
        }
        ok[0]
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Whether every string `token` matches lies within one path segment, so a `*` can absorb it.
fn within_segment(token: Token) -> bool {
    match token {
        Token::Literal(c) => c != '/',
        Token::OneChar | Token::AnySegment => true,
        Token::AnyPath => false,
    }
}

/// Whether `token` always matches exactly one non-`/` character, so a `?` can absorb it.
fn one_char_in_segment(token: Token) -> bool {
    match token {
        Token::Literal(c) => c != '/',
        Token::OneChar => true,
        Token::AnySegment | Token::AnyPath => false,
    }
}

fn tokenize(source: &str) -> Result<Vec<Token>, String> {
    if source.is_empty() {
        return Err("pattern is empty".to_owned());
    }
    if source.len() > MAX_PATTERN_LEN {
        return Err(format!("pattern is longer than {MAX_PATTERN_LEN} bytes"));
    }
    let mut tokens = Vec::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        let token = match c {
            // A whole run of stars is one token: the run is consumed here, so two star tokens
            // are never adjacent and the DPs stay small.
            '*' => {
                let mut run = 1;
                while chars.next_if_eq(&'*').is_some() {
                    run += 1;
                }
                if run == 1 {
                    Token::AnySegment
                } else {
                    Token::AnyPath
                }
            }
            '?' => Token::OneChar,
            c => Token::Literal(c),
        };
        tokens.push(token);
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).expect("valid test pattern")
    }

    #[test]
    fn empty_and_oversized_patterns_are_invalid_requests() {
        assert!(matches!(
            Pattern::parse(""),
            Err(ArcpError::InvalidRequest(_))
        ));
        let long = "a".repeat(MAX_PATTERN_LEN + 1);
        assert!(matches!(
            Pattern::parse(&long),
            Err(ArcpError::InvalidRequest(_))
        ));
        assert!(Pattern::parse(&"a".repeat(MAX_PATTERN_LEN)).is_ok());
    }

    #[test]
    fn source_text_is_kept_verbatim() {
        assert_eq!(p("/a/***/b").as_str(), "/a/***/b");
        assert_eq!(p("tier-fast/*").to_string(), "tier-fast/*");
    }

    #[test]
    fn double_star_matches_across_slashes() {
        let pat = p("/workspace/myapp/**");
        assert!(pat.matches("/workspace/myapp/"));
        assert!(pat.matches("/workspace/myapp/src/main.rs"));
        assert!(pat.matches("/workspace/myapp/a/b/c/d"));
        assert!(!pat.matches("/workspace/myapp"));
        assert!(!pat.matches("/workspace/other/x"));
        assert!(!pat.matches("/workspace/myapp2/x"));
        assert!(p("**").matches(""));
        assert!(p("**").matches("a/b/c"));
    }

    #[test]
    fn single_star_stays_within_a_segment() {
        let pat = p("tier-fast/*");
        assert!(pat.matches("tier-fast/gpt-4o"));
        assert!(pat.matches("tier-fast/"));
        assert!(!pat.matches("tier-fast/a/b"));
        assert!(!pat.matches("tier-slow/gpt-4o"));

        let url = p("https://api.example.com/*");
        assert!(url.matches("https://api.example.com/v1"));
        assert!(!url.matches("https://api.example.com/v1/users"));
        assert!(!url.matches("https://api.example.com.evil.net/v1"));

        assert!(p("/a/*.rs").matches("/a/main.rs"));
        assert!(!p("/a/*.rs").matches("/a/b/main.rs"));
        assert!(p("anthropic/claude-3-haiku-*").matches("anthropic/claude-3-haiku-20240307"));
    }

    #[test]
    fn question_mark_is_one_non_slash_character() {
        let pat = p("file?.txt");
        assert!(pat.matches("file1.txt"));
        assert!(pat.matches("fileé.txt"));
        assert!(!pat.matches("file.txt"));
        assert!(!pat.matches("file12.txt"));
        assert!(!p("a?b").matches("a/b"));
    }

    #[test]
    fn literals_match_only_themselves() {
        let pat = p("read_file");
        assert!(pat.matches("read_file"));
        assert!(!pat.matches("read_files"));
        assert!(!pat.matches("read_fil"));
        assert!(!pat.matches(""));
        // Regex metacharacters have no special meaning.
        assert!(p("a.b").matches("a.b"));
        assert!(!p("a.b").matches("axb"));
    }

    #[test]
    fn star_runs_collapse() {
        assert!(p("a/***").matches("a/b/c"));
        assert!(p("a/*/**").matches("a/b/c"));
        assert!(p("a/*/**").matches("a/b/"));
        assert!(!p("a/*/**").matches("a/b"));
        assert!(p("a***b").matches("a/x/b"));
        assert_eq!(p("a***b").tokens, p("a**b").tokens);
        assert_eq!(p("a*/**b").tokens.len(), 5);
    }

    #[test]
    fn matching_is_not_exponential() {
        let pat = p(&format!("{}b", "*a".repeat(40)));
        let text = "a".repeat(4000);
        assert!(!pat.matches(&text));
        let pat = p(&format!("{}b", "**a".repeat(40)));
        assert!(!pat.matches(&text));
        assert!(pat.matches(&format!("{text}b")));
    }

    #[test]
    fn identical_patterns_cover_each_other() {
        for s in ["/a/**", "tier-*/*", "x?y", "literal", "**", "*"] {
            assert!(p(s).covers(&p(s)), "{s}");
        }
    }

    #[test]
    fn globs_cover_literals_they_match() {
        assert!(p("/a/**").covers(&p("/a/b/c.txt")));
        assert!(p("/a/*").covers(&p("/a/b")));
        assert!(!p("/a/*").covers(&p("/a/b/c")));
        assert!(p("x?z").covers(&p("xyz")));
        assert!(!p("x?z").covers(&p("x/z")));
        assert!(!p("literal").covers(&p("literal2")));
        assert!(!p("literal2").covers(&p("literal")));
    }

    #[test]
    fn deeper_trees_and_segments_are_covered() {
        assert!(p("/a/**").covers(&p("/a/b/**")));
        assert!(!p("/a/b/**").covers(&p("/a/**")));
        assert!(p("/a/**").covers(&p("/a/*.rs")));
        assert!(p("/a/*").covers(&p("/a/*.rs")));
        assert!(!p("/a/*.rs").covers(&p("/a/*")));
        assert!(p("tier-*/*").covers(&p("tier-fast/*")));
        assert!(!p("tier-fast/*").covers(&p("tier-*/*")));
        assert!(p("**").covers(&p("/any/**/thing")));
        assert!(p("*").covers(&p("a?c")));
    }

    #[test]
    fn wider_wildcards_are_not_covered_by_narrower_ones() {
        assert!(!p("?").covers(&p("*")));
        assert!(!p("*").covers(&p("**")));
        assert!(!p("/a/*").covers(&p("/a/**")));
        assert!(!p("a?").covers(&p("a")));
        assert!(!p("?").covers(&p("/")));
        assert!(!p("*").covers(&p("a/b")));
    }

    #[test]
    fn covers_agrees_with_matches_on_samples() {
        // Soundness spot check: whenever covers says yes, every sample the narrower pattern
        // matches must also be matched by the wider one.
        let pats = [
            "**",
            "*",
            "?",
            "/a/**",
            "/a/*",
            "/a/*.rs",
            "/a/b/**",
            "tier-*/*",
            "tier-fast/*",
            "a?c",
            "abc",
            "a*c",
            "a**c",
            "*/*",
        ];
        let samples = [
            "",
            "a",
            "/",
            "abc",
            "a/c",
            "a/b/c",
            "/a/",
            "/a/b",
            "/a/b/c",
            "/a/x.rs",
            "/a/b/x.rs",
            "tier-fast/x",
            "tier-slow/x",
            "tier-fast/x/y",
            "ac",
            "abbc",
            "a/b",
        ];
        for wide in pats {
            for narrow in pats {
                if p(wide).covers(&p(narrow)) {
                    for s in samples {
                        assert!(
                            !p(narrow).matches(s) || p(wide).matches(s),
                            "{wide} covers {narrow} but not {s:?}"
                        );
                    }
                }
            }
        }
    }
}
