//! [`Writer`]: JSON text written member by member into one buffer.
//!
//! Every frame a WebSocket client gets is written here. serde_json, which wrote them before,
//! scanned every key and every string a byte at a time for characters to escape, and most of
//! a frame is strings that have none: the keys are written as the constants they are, strings
//! are scanned eight bytes at a time, and free-form values (an agent's `args`, a lease) still
//! go through serde_json into the same buffer. Strings are escaped exactly as serde_json
//! escapes them, so a frame's text does not depend on which part wrote it.

use serde::Serialize;

/// A JSON text being written: members of the object (or elements of the array) that was
/// opened last.
pub(super) struct Writer {
    out: Vec<u8>,
    /// Whether nothing was written yet into the object or array opened last.
    fresh: bool,
    /// What serde_json refused to write, if it refused something.
    failed: Option<serde_json::Error>,
}

impl Writer {
    /// A writer whose text is expected to take about `capacity` bytes.
    pub(super) fn with_capacity(capacity: usize) -> Writer {
        Writer {
            out: Vec::with_capacity(capacity),
            fresh: true,
            failed: None,
        }
    }

    /// The text of one object, whose members `members` writes.
    pub(super) fn text(
        mut self,
        members: impl FnOnce(&mut Writer),
    ) -> Result<String, serde_json::Error> {
        self.open(b'{', members, b'}');
        if let Some(e) = self.failed {
            return Err(e);
        }
        // SAFETY: only UTF-8 is written: the keys are `&str` constants, strings are copied
        // from `&str` in runs split only before and after the ASCII characters that are
        // escaped (always character boundaries), escapes are ASCII, and serde_json writes UTF-8.
        Ok(unsafe { String::from_utf8_unchecked(self.out) })
    }

    /// A string member.
    pub(super) fn str(&mut self, key: &'static str, value: &str) {
        self.key(key);
        escaped(&mut self.out, value);
    }

    /// A string member, where there is a value; nothing otherwise.
    pub(super) fn opt_str(&mut self, key: &'static str, value: Option<&str>) {
        if let Some(value) = value {
            self.str(key, value);
        }
    }

    /// A member written by serde_json: a number, a free-form value, a list of strings.
    pub(super) fn value<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) {
        self.key(key);
        if let Err(e) = serde_json::to_writer(&mut self.out, value) {
            self.failed.get_or_insert(e);
        }
    }

    /// A member written by serde_json, where there is a value; nothing otherwise.
    pub(super) fn opt_value<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: Option<&T>,
    ) {
        if let Some(value) = value {
            self.value(key, value);
        }
    }

    /// An object member, whose members `members` writes.
    pub(super) fn object(&mut self, key: &'static str, members: impl FnOnce(&mut Writer)) {
        self.key(key);
        self.open(b'{', members, b'}');
    }

    /// An array member of objects, one for each of `items`, whose members `members` writes.
    pub(super) fn objects<I: IntoIterator>(
        &mut self,
        key: &'static str,
        items: I,
        mut members: impl FnMut(&mut Writer, I::Item),
    ) {
        self.key(key);
        self.open(
            b'[',
            |w| {
                for item in items {
                    w.separate();
                    w.open(b'{', |w| members(w, item), b'}');
                }
            },
            b']',
        );
    }

    fn open(&mut self, open: u8, content: impl FnOnce(&mut Writer), close: u8) {
        self.out.push(open);
        self.fresh = true;
        content(self);
        self.out.push(close);
        self.fresh = false;
    }

    fn separate(&mut self) {
        if !self.fresh {
            self.out.push(b',');
        }
        self.fresh = false;
    }

    fn key(&mut self, key: &'static str) {
        debug_assert!(
            !key.bytes().any(|b| escape(b).is_some()),
            "{key:?} needs escaping"
        );
        self.separate();
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }
}

/// `value` as a JSON string, quoted and escaped, appended to `out`.
fn escaped(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // The run of bytes since the last escape, copied when the next escape or the end comes.
    let mut run = 0;
    let mut at = 0;
    while let Some(word) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes([
            word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
        ]);
        if needs_escape(word) {
            for i in at..at + 8 {
                run = escape_at(out, bytes, run, i);
            }
        }
        at += 8;
    }
    for i in at..bytes.len() {
        run = escape_at(out, bytes, run, i);
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Escapes `bytes[i]` if it needs it, copying the run before it first; the new run's start.
fn escape_at(out: &mut Vec<u8>, bytes: &[u8], run: usize, i: usize) -> usize {
    let Some(escape) = escape(bytes[i]) else {
        return run;
    };
    out.extend_from_slice(&bytes[run..i]);
    match escape {
        Escape::Short(c) => out.extend_from_slice(&[b'\\', c]),
        Escape::Unicode => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let b = bytes[i];
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        }
    }
    i + 1
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any of the eight bytes of `word` is a control character, `"` or `\`.
fn needs_escape(word: u64) -> bool {
    // The classic bit tricks: a byte below 0x20 borrows through its high bit when 0x20 is
    // taken from it; a byte equal to `c` is a zero byte of `word ^ c`. Exact for the word as a
    // whole (not for which byte), which is all that is asked here.
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    below_space
        | zero_byte(word ^ (ONES * u64::from(b'"')))
        | zero_byte(word ^ (ONES * u64::from(b'\\')))
        != 0
}

enum Escape {
    /// `\` and this character.
    Short(u8),
    /// `\u00XX`.
    Unicode,
}

/// How serde_json escapes `byte`, if it does.
fn escape(byte: u8) -> Option<Escape> {
    Some(match byte {
        b'"' => Escape::Short(b'"'),
        b'\\' => Escape::Short(b'\\'),
        0x08 => Escape::Short(b'b'),
        0x0c => Escape::Short(b'f'),
        b'\n' => Escape::Short(b'n'),
        b'\r' => Escape::Short(b'r'),
        b'\t' => Escape::Short(b't'),
        0x00..=0x1f => Escape::Unicode,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_json(value: &str) -> String {
        Writer::with_capacity(0)
            .text(|w| w.str("s", value))
            .expect("a string is written")
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut strings: Vec<String> = (0..=0x7fu8).map(|b| char::from(b).to_string()).collect();
        // Every ASCII character at every offset of a word and past its end, among plain
        // characters and multi-byte ones, and a word wholly of escapes.
        for b in 0..=0x7fu8 {
            for at in 0..17 {
                let mut s: String = "abcdéfghijklmnopq€".chars().take(at).collect();
                s.push(char::from(b));
                s.push_str("rstuvwxyz0123456789");
                strings.push(s);
            }
        }
        strings.push("\"\\\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}".repeat(3));
        strings.push(String::new());
        strings.push("ünïcödé ✓ 🦀 ".repeat(9));
        for s in strings {
            let expected = serde_json::to_string(&serde_json::json!({ "s": s })).expect("json");
            assert_eq!(as_json(&s), expected, "{s:?}");
        }
    }

    #[test]
    fn nested_objects_arrays_and_absent_members_are_punctuated() {
        let text = Writer::with_capacity(0)
            .text(|w| {
                w.str("a", "x");
                w.opt_str("gone", None);
                w.object("o", |w| {
                    w.value("n", &1.5);
                    w.opt_value::<u64>("gone", None);
                    w.value("list", &["p", "q"]);
                });
                w.objects("items", [1u64, 2], |w, n| {
                    w.value("n", &n);
                    w.str("k", "v");
                });
                w.objects("none", Vec::<u64>::new(), |_, _| {});
                w.object("empty", |_| {});
            })
            .expect("written");
        assert_eq!(
            text,
            r#"{"a":"x","o":{"n":1.5,"list":["p","q"]},"items":[{"n":1,"k":"v"},{"n":2,"k":"v"}],"none":[],"empty":{}}"#
        );
    }

    #[test]
    fn what_serde_json_refuses_is_an_error_not_a_frame() {
        let map = std::collections::BTreeMap::from([((1, 2), "non-string key")]);
        assert!(Writer::with_capacity(0)
            .text(|w| w.value("m", &map))
            .is_err());
    }
}
