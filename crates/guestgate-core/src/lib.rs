//! guestgate's pure logic: what a request path means and what is done to an
//! intercepted body. Functions over strings, bytes and JSON values, without
//! I/O, so they are tested and fuzzed without a server; the `guestgate`
//! crate re-exports every module under the same name.

pub mod edit;
pub mod pointer;
pub mod routing;
pub mod sanitize;
