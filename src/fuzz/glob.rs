//! Capability patterns: parsing, matching against a backtracking model of the dialect, and
//! the soundness of `covers`, on patterns and resources drawn from the characters that
//! matter (`*`, `?`, `/` and a few literals).

use std::collections::HashMap;

use bolero::{check, generator::TypeGenerator};

use crate::{
    error::ErrorCode,
    lease::{glob::MAX_PATTERN_LEN, Pattern},
};

use super::{seeds, spell, Alphabet};

const TARGET: &str = "glob";

#[derive(Clone, Copy, Debug, TypeGenerator)]
enum Sym {
    A,
    B,
    Slash,
    Star,
    Question,
    Dot,
    Accent,
}

impl Alphabet for Sym {
    fn text(self) -> &'static str {
        match self {
            Sym::A => "a",
            Sym::B => "b",
            Sym::Slash => "/",
            Sym::Star => "*",
            Sym::Question => "?",
            Sym::Dot => ".",
            Sym::Accent => "\u{e9}",
        }
    }
}

/// The dialect as the module documents it, matched by backtracking: `**` (any run of two or
/// more stars) is any text, `*` any text without `/`, `?` one character other than `/`.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Tok {
    Lit(char),
    One,
    Segment,
    Path,
}

fn tokens(pattern: &str) -> Vec<Tok> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '*' {
            let run = chars[i..].iter().take_while(|c| **c == '*').count();
            out.push(if run == 1 { Tok::Segment } else { Tok::Path });
            i += run;
        } else {
            out.push(if chars[i] == '?' {
                Tok::One
            } else {
                Tok::Lit(chars[i])
            });
            i += 1;
        }
    }
    out
}

fn model_matches(pattern: &str, resource: &str) -> bool {
    fn go(
        p: &[Tok],
        r: &[char],
        i: usize,
        j: usize,
        memo: &mut HashMap<(usize, usize), bool>,
    ) -> bool {
        if let Some(&known) = memo.get(&(i, j)) {
            return known;
        }
        let result = match p.get(i) {
            None => j == r.len(),
            Some(Tok::Lit(c)) => r.get(j) == Some(c) && go(p, r, i + 1, j + 1, memo),
            Some(Tok::One) => r.get(j).is_some_and(|c| *c != '/') && go(p, r, i + 1, j + 1, memo),
            Some(Tok::Segment) => {
                go(p, r, i + 1, j, memo)
                    || (r.get(j).is_some_and(|c| *c != '/') && go(p, r, i, j + 1, memo))
            }
            Some(Tok::Path) => {
                go(p, r, i + 1, j, memo) || (j < r.len() && go(p, r, i, j + 1, memo))
            }
        };
        memo.insert((i, j), result);
        result
    }
    let p = tokens(pattern);
    let r: Vec<char> = resource.chars().collect();
    go(&p, &r, 0, 0, &mut HashMap::new())
}

/// A string `pattern` matches: each wildcard replaced by text it stands for, chosen by the
/// bits of `choice` (so both empty and non-empty fillings occur).
fn instance(pattern: &str, choice: u32) -> String {
    let mut bits = choice;
    let mut next_bit = || {
        let bit = bits & 1 == 1;
        bits = bits.rotate_right(1);
        bit
    };
    tokens(pattern)
        .into_iter()
        .map(|t| match t {
            Tok::Lit(c) => c.to_string(),
            Tok::One => "q".to_owned(),
            Tok::Segment => if next_bit() { "xy" } else { "" }.to_owned(),
            Tok::Path => if next_bit() { "x/y" } else { "" }.to_owned(),
        })
        .collect()
}

fn is_literal(pattern: &str) -> bool {
    !pattern.contains(['*', '?'])
}

fn check_parse(source: &str) -> Option<Pattern> {
    let valid = !source.is_empty() && source.len() <= MAX_PATTERN_LEN;
    match Pattern::parse(source) {
        Ok(p) => {
            assert!(valid, "{source:?} parsed");
            assert_eq!(p.as_str(), source);
            assert_eq!(p.to_string(), source);
            Some(p)
        }
        Err(e) => {
            assert!(!valid, "{source:?} refused: {e}");
            assert_eq!(e.code(), ErrorCode::InvalidRequest);
            None
        }
    }
}

fn check_match(p: &Pattern, resource: &str) {
    assert_eq!(
        p.matches(resource),
        model_matches(p.as_str(), resource),
        "{:?} against {resource:?}",
        p.as_str()
    );
}

fn check_pair(wide: &Pattern, narrow: &Pattern, samples: &[String]) {
    if wide.covers(narrow) {
        for s in samples {
            assert!(
                !narrow.matches(s) || wide.matches(s),
                "{:?} covers {:?} but only the narrower matches {s:?}",
                wide.as_str(),
                narrow.as_str()
            );
        }
    }
    // For a literal, inclusion is matching: covers decides it exactly.
    if is_literal(narrow.as_str()) {
        assert_eq!(
            wide.covers(narrow),
            wide.matches(narrow.as_str()),
            "{:?} and literal {:?}",
            wide.as_str(),
            narrow.as_str()
        );
    }
}

fn check_all(pattern: &str, narrower: &str, resource: &str, choice: u32) {
    let (Some(p), q) = (check_parse(pattern), check_parse(narrower)) else {
        return;
    };
    assert!(p.covers(&p), "{pattern:?} does not cover itself");
    let samples = vec![
        resource.to_owned(),
        instance(pattern, choice),
        instance(pattern, !choice),
        instance(narrower, choice),
        instance(narrower, !choice),
        narrower.to_owned(),
    ];
    for s in &samples {
        check_match(&p, s);
    }
    assert!(p.matches(&instance(pattern, choice)), "{pattern:?}");
    if let Some(q) = q {
        for s in &samples {
            check_match(&q, s);
        }
        check_pair(&p, &q, &samples);
        check_pair(&q, &p, &samples);
    }
}

#[derive(Clone, Debug, TypeGenerator)]
struct Input {
    #[generator(bolero::produce::<Vec<Sym>>().with().len(0..24usize))]
    pattern: Vec<Sym>,
    #[generator(bolero::produce::<Vec<Sym>>().with().len(0..24usize))]
    narrower: Vec<Sym>,
    #[generator(bolero::produce::<Vec<Sym>>().with().len(0..32usize))]
    resource: Vec<Sym>,
    choice: u32,
}

#[test]
fn glob() {
    // A seed line is `pattern<TAB>narrower<TAB>resource`; missing parts are empty.
    for (i, seed) in seeds(TARGET).iter().enumerate() {
        let mut parts = seed.split('\t');
        let mut part = || parts.next().unwrap_or("");
        let (pattern, narrower, resource) = (part(), part(), part());
        for choice in [0, u32::MAX, i as u32] {
            check_all(pattern, narrower, resource, choice);
        }
    }
    // Patterns at and past the length bound.
    check_parse(&"a".repeat(MAX_PATTERN_LEN));
    check_parse(&"a".repeat(MAX_PATTERN_LEN + 1));
    check_parse(&"\u{e9}".repeat(MAX_PATTERN_LEN / 2 + 1));
    check!(name = TARGET)
        .with_type::<Input>()
        .for_each(|input: &Input| {
            check_all(
                &spell(&input.pattern),
                &spell(&input.narrower),
                &spell(&input.resource),
                input.choice,
            )
        });
}
