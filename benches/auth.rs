//! Placeholder: the SSO validation benchmark lands in the next commit.

fn main() {}
