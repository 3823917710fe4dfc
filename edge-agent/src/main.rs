//! tether-agent (issue 3): under construction.
fn main() {}
