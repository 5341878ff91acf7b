//! One module per row of the table. Rows that measure the gateway in this process add a method
//! to [`Bench`](crate::client::Bench) and run it through [`Bench::once`](crate::client::Bench::once),
//! against a fresh gateway each run; rows 2, 5, 7, 8 and 9 bring their own server or process, and row 10 a child agent.

pub(crate) mod bare;
pub(crate) mod fan_in;
pub(crate) mod idle;
pub(crate) mod live;
pub(crate) mod python_peer;
pub(crate) mod replay;
pub(crate) mod soak;
pub(crate) mod stdio_hop;
pub(crate) mod storm;
