//! Fuzz targets for every parser a client's bytes reach, run with `bolero`.
//!
//! Each target is a `#[test]`: under `cargo test` bolero replays the target's committed seeds
//! and then generates random inputs for a bounded time (one second unless
//! `BOLERO_RANDOM_TEST_TIME_MS` or `BOLERO_RANDOM_ITERATIONS` say otherwise; `.ci/run` runs
//! each for longer in a step of its own). `BOLERO_RANDOM_SEED=<seed>` replays the input of a
//! reported failure. For long coverage-guided runs cargo-bolero runs the same targets under
//! libfuzzer, starting from the same seeds (`cargo bolero list` names the targets).
//!
//! Every target asserts more than "no panic": the invariant its parser promises, checked
//! against an independent model where one is cheap (a decimal grammar for amounts, a
//! backtracking matcher for globs, the §7.5 grammar for agent references), or a round trip.
//!
//! - [`json_envelope`]: the §5 JSON envelope decoder ([`crate::transport::json::decode`]).
//! - [`client_frame`]: protobuf bytes to a `ClientFrame` to the domain
//!   (`transport::grpc::convert::inbound`).
//! - [`lease`]: lease requests ([`crate::lease::EffectiveLease::from_request`]) and
//!   `expires_at`.
//! - [`glob`]: capability patterns ([`crate::lease::Pattern`]).
//! - [`agent_ref`]: `name@version` ([`crate::ids::AgentRef`], [`crate::agent::AgentRegistry`]).
//! - [`amount`]: `cost.budget` amounts and entries ([`crate::lease::Amount`]).
//!
//! ## Seeds
//!
//! Each target's seeds live in `src/fuzz/__fuzz__/<target>/`, where bolero and cargo-bolero
//! look for them. Targets that read raw bytes keep one seed per file in `corpus/`, which
//! bolero replays itself and libfuzzer starts from. Targets driven by a structured generator
//! keep readable seeds, one per line, in `seeds.txt`, replayed by [`seeds`]; the generator
//! explores from there. A missing or empty seed file fails the target rather than letting it
//! pass on nothing.

mod agent_ref;
mod amount;
mod client_frame;
mod glob;
mod json_envelope;
mod lease;

use std::path::PathBuf;

/// Where target `target` keeps its seeds.
fn seed_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/fuzz/__fuzz__")
        .join(target)
}

/// The seed files of a raw-bytes target, by name; at least one, or the target fails.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = seed_dir(target).join("corpus");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "the corpus of {target} at {} is missing: {e}",
            dir.display()
        )
    });
    let mut seeds: Vec<(String, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.expect("a readable corpus entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a UTF-8 seed file name")
                .to_owned();
            let bytes = std::fs::read(&path).expect("a readable seed file");
            (name, bytes)
        })
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "the corpus of {target} is empty");
    seeds
}

/// The lines of a structured target's `seeds.txt`; at least one, or the target fails. Lines
/// are taken as written: no trimming, so a seed may start or end with a space. `#` starts a
/// comment line.
fn seeds(target: &str) -> Vec<String> {
    let path = seed_dir(target).join("seeds.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the seeds of {target} at {} are missing: {e}",
            path.display()
        )
    });
    let seeds: Vec<String> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert!(!seeds.is_empty(), "{} holds no seed", path.display());
    seeds
}

/// A small alphabet a generator draws a parser's characters from, so random strings reach
/// past a parser's first check instead of failing on its first byte.
trait Alphabet: Copy {
    /// The text of one symbol.
    fn text(self) -> &'static str;
}

/// The string spelled by `symbols`.
fn spell<A: Alphabet>(symbols: &[A]) -> String {
    symbols.iter().map(|s| s.text()).collect()
}
