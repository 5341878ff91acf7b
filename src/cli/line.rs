//! A line on stdout that a closed pipe (`| head`) does not turn into a panic, as `println!`
//! would: the reader that left wants no more lines, and the command goes on to its exit code.

use std::io::Write;

/// Writes `text` and a newline to stdout, ignoring a reader that is gone.
pub fn print_line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}
