//! Prints the BlueGreen CRD: `cargo run -p teal-api --bin crdgen > deploy/crd.yaml`;
//! with `--reference`, its field reference: `… -- --reference > docs/crd-reference.md`.
#![forbid(unsafe_code)]

fn main() {
    match std::env::args().nth(1).as_deref() {
        None => print!("{}", teal_api::crd_yaml()),
        Some("--reference") => print!("{}", teal_api::crd_reference_markdown()),
        Some(other) => {
            eprintln!("crdgen: unknown argument {other:?}; allowed: --reference");
            std::process::exit(2);
        }
    }
}
