//! The table the bench prints: Markdown, one line per row, under a line naming the version,
//! the cores and the number of runs behind each median.

use crate::Args;

#[derive(Default)]
pub(crate) struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    pub(crate) fn row(&mut self, n: &str, what: &str, result: String, comparison: String) {
        self.rows.push([n.into(), what.into(), result, comparison]);
    }

    pub(crate) fn print(&self, args: &Args) {
        println!(
            "arcp-bench {} ({} cores), median of {} runs",
            env!("CARGO_PKG_VERSION"),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            args.runs
        );
        println!();
        println!("| row | workload | result | comparison |");
        println!("| --- | --- | --- | --- |");
        for [n, what, result, comparison] in &self.rows {
            println!("| {n} | {what} | {result} | {comparison} |");
        }
    }
}
