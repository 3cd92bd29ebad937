//! `teal list`: the BlueGreens of a namespace (or all namespaces).

use std::process::ExitCode;

use anyhow::Context as _;
use kube::api::{Api, ListParams};
use serde_json::json;
use teal_api::BlueGreen;

use super::{Conn, Output, print_structured, printable, table, view};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub conn: Conn,
    /// List BlueGreens of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let k = args.conn.connect().await?;
    let api: Api<BlueGreen> = if args.all_namespaces {
        Api::all(k.client.clone())
    } else {
        k.bluegreens()
    };
    let list = api.list(&ListParams::default()).await.with_context(|| {
        if args.all_namespaces {
            "cannot list BlueGreens".to_string()
        } else {
            format!("cannot list BlueGreens in namespace {}", k.ns)
        }
    })?;
    let mut items: Vec<BlueGreen> = list.items.into_iter().map(printable).collect();
    items.sort_by_key(|b| (b.metadata.namespace.clone(), b.metadata.name.clone()));
    if args.output != Output::Table {
        let value = json!({"apiVersion": "v1", "kind": "List", "items": items});
        print_structured(args.output, &value)?;
        return Ok(ExitCode::SUCCESS);
    }
    if items.is_empty() {
        if args.all_namespaces {
            eprintln!("No BlueGreens found.");
        } else {
            eprintln!("No BlueGreens found in namespace {}.", k.ns);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut header = view::ROW_HEADER.to_vec();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|b| {
            let mut r = view::row(b);
            if args.all_namespaces {
                r.insert(0, b.metadata.namespace.clone().unwrap_or_default());
            }
            r
        })
        .collect();
    if args.all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    print!("{}", table(&header, &rows));
    Ok(ExitCode::SUCCESS)
}
