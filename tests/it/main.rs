//! One integration-test binary: every test starts the real `doorman` on
//! loopback and talks to it as a client would.

mod check;
mod cli;
mod examples;
mod fastpath;
mod lifecycle;
mod nowait;
mod units;
mod unix;
mod util;
mod wait;
mod xinetd;
