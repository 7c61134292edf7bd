//! One integration-test binary: every test starts the real `doorman` on
//! loopback and talks to it as a client would.

mod audit;
mod backend;
mod check;
mod cli;
mod examples;
mod fastpath;
mod hostile;
mod inside;
mod lifecycle;
mod lockout;
mod nowait;
mod package;
mod protect;
mod security;
mod shipped;
mod units;
mod unix;
mod util;
mod wait;
mod xinetd;
