//! Agent references (§7.5): `name` or `name@version`, parsed and resolved against a registry,
//! checked against the grammar `name ::= [a-z0-9][a-z0-9._-]*`,
//! `version ::= [a-zA-Z0-9.+_-]+`.

use std::sync::Arc;

use bolero::{check, generator::TypeGenerator};

use crate::{
    agent::{builtin::Echo, Agent, AgentRegistry},
    error::ErrorCode,
    ids::AgentRef,
};

use super::{seeds, spell, Alphabet};

const TARGET: &str = "agent_ref";

#[derive(Clone, Copy, Debug, TypeGenerator)]
enum Sym {
    E,
    C,
    H,
    O,
    Zero,
    One,
    Dot,
    Dash,
    Underscore,
    Plus,
    UpperA,
    At,
    Space,
    Slash,
    Accent,
    Kelvin,
}

impl Alphabet for Sym {
    fn text(self) -> &'static str {
        match self {
            Sym::E => "e",
            Sym::C => "c",
            Sym::H => "h",
            Sym::O => "o",
            Sym::Zero => "0",
            Sym::One => "1",
            Sym::Dot => ".",
            Sym::Dash => "-",
            Sym::Underscore => "_",
            Sym::Plus => "+",
            Sym::UpperA => "A",
            Sym::At => "@",
            Sym::Space => " ",
            Sym::Slash => "/",
            Sym::Accent => "\u{e9}",
            // Lowercases to ASCII `k`: a name check that folds case would let it through.
            Sym::Kelvin => "\u{212a}",
        }
    }
}

#[derive(Clone, Debug, TypeGenerator)]
enum Reference {
    /// `name` or `name@version` from the alphabet.
    Shaped {
        name: Vec<Sym>,
        version: Option<Vec<Sym>>,
    },
    /// One of the registered agents, optionally pinned to one of its versions or another.
    Known {
        which: u8,
        version: u8,
    },
    Free(String),
}

const NAMES: [&str; 3] = ["echo", "a.b-c_d", "0"];
const VERSIONS: [&str; 4] = ["1.0.0", "2.0.0-rc.1+b5", "1", "9.9.9"];

impl Reference {
    fn text(&self) -> String {
        match self {
            Reference::Shaped { name, version } => match version {
                Some(v) => format!("{}@{}", spell(name), spell(v)),
                None => spell(name),
            },
            Reference::Known { which, version } => {
                let name = NAMES[usize::from(*which) % NAMES.len()];
                match VERSIONS.get(usize::from(*version) % (VERSIONS.len() + 1)) {
                    Some(v) => format!("{name}@{v}"),
                    None => name.to_owned(),
                }
            }
            Reference::Free(text) => text.clone(),
        }
    }
}

fn name_model(s: &str) -> bool {
    let lower_or_digit = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && lower_or_digit(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| lower_or_digit(b) || matches!(b, b'.' | b'_' | b'-'))
}

fn version_model(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'_' | b'-'))
}

/// `(name, version)` as the grammar splits `text`, or `None` if it is not a reference.
fn model(text: &str) -> Option<(&str, Option<&str>)> {
    let (name, version) = match text.find('@') {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    (name_model(name) && version.is_none_or(version_model)).then_some((name, version))
}

/// `echo` at 1.0.0 (the default) and 2.0.0-rc.1+b5, `a.b-c_d` at 1, `0` at 1.
fn registry() -> AgentRegistry {
    let agent: Arc<dyn Agent> = Arc::new(Echo);
    let mut registry = AgentRegistry::new();
    for (name, version) in [
        ("echo", "2.0.0-rc.1+b5"),
        ("echo", "1.0.0"),
        ("a.b-c_d", "1"),
        ("0", "1"),
    ] {
        registry
            .register(name, version, agent.clone())
            .expect("a valid reference");
    }
    registry
}

fn default_of(name: &str) -> Option<&'static str> {
    match name {
        "echo" => Some("1.0.0"),
        "a.b-c_d" | "0" => Some("1"),
        _ => None,
    }
}

fn registered(name: &str, version: &str) -> bool {
    matches!(
        (name, version),
        ("echo", "1.0.0") | ("echo", "2.0.0-rc.1+b5") | ("a.b-c_d", "1") | ("0", "1")
    )
}

fn check_reference(registry: &AgentRegistry, text: &str) {
    let expected = model(text);
    match (expected, AgentRef::parse(text)) {
        (Some((name, version)), Ok(r)) => {
            assert_eq!((r.name(), r.version()), (name, version), "{text:?}");
        }
        (None, Err(e)) => assert_eq!(e.code(), ErrorCode::InvalidRequest, "{text:?}"),
        (expected, got) => panic!("{text:?}: the grammar says {expected:?}, the parser {got:?}"),
    }
    let resolved = registry.resolve(text);
    let want = match expected {
        None => Err(ErrorCode::InvalidRequest),
        Some((name, version)) => match (default_of(name), version) {
            (None, _) => Err(ErrorCode::AgentNotAvailable),
            (Some(_), Some(v)) if !registered(name, v) => Err(ErrorCode::AgentVersionNotAvailable),
            (Some(default), v) => Ok(format!("{name}@{}", v.unwrap_or(default))),
        },
    };
    match (&want, &resolved) {
        (Ok(reference), Ok(agent)) => assert_eq!(&agent.reference(), reference, "{text:?}"),
        (Err(code), Err(e)) => assert_eq!(e.code(), *code, "{text:?}: {e}"),
        _ => panic!(
            "{text:?}: expected {want:?}, resolved to {:?}",
            resolved.as_ref().map(|a| a.reference())
        ),
    }
    // Registering the parts of a reference succeeds exactly when both fit the grammar, and
    // then resolves to itself.
    if let Some((name, version)) = text.split_once('@') {
        let mut extended = registry.clone();
        let fits = name_model(name) && version_model(version);
        let agent: Arc<dyn Agent> = Arc::new(Echo);
        assert_eq!(
            extended.register(name, version, agent).is_ok(),
            fits,
            "{text:?}"
        );
        if fits {
            let agent = extended.resolve(text).expect("a registered reference");
            assert_eq!(agent.reference(), text);
        }
    }
}

#[test]
fn agent_ref() {
    // The registry holds `dyn Agent`s, which bolero's unwind boundary cannot vouch for; the
    // checks only read it.
    let registry = std::panic::AssertUnwindSafe(registry());
    for seed in seeds(TARGET) {
        check_reference(&registry, &seed);
    }
    check!(name = TARGET)
        .with_type::<Reference>()
        .for_each(|reference: &Reference| check_reference(&registry, &reference.text()));
}
