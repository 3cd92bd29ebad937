//! Prints the BlueGreen CRD: `cargo run -p teal-api --bin crdgen > deploy/crd.yaml`.
#![forbid(unsafe_code)]

fn main() {
    print!("{}", teal_api::crd_yaml());
}
