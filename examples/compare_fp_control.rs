//! The `compare` example built with `fp-control`, under its own name, so that
//! building it does not overwrite the `compare` binary that runs it as a
//! child (`--child-fp-control`). Run `compare`, not this.

#[path = "compare/main.rs"]
mod compare;

fn main() {
    compare::main();
}
